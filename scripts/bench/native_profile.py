"""Where native's time goes: each stage of its path timed alone on the same files."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .common import MB, REPO_ROOT
from .contenders import hash_command
from .measurement import timed
from .model import Model
from .runner import Bench
from .services import Registry


@dataclass(frozen=True)
class ProfileRow:
    what: str
    seconds: float
    size_bytes: int
    note: str = ""

    @property
    def mb_s(self) -> float:
        return self.size_bytes / MB / self.seconds if self.seconds else 0.0


def run_profile(bench: Bench, model: Model) -> list[ProfileRow]:
    """Each stage of native's path alone, single-threaded, on the same bytes (warm page
    cache): where the end-to-end time goes."""
    sys.path.insert(0, str(REPO_ROOT))
    from modelcar_builder.oci.layer import TarLayer
    from modelcar_builder.plan import make_plan
    from modelcar_builder.selection import Selection
    from modelcar_builder.source.local import local_snapshot

    size = model.total_bytes
    paths = list(map(str, model.paths()))
    plan = make_plan(local_snapshot(str(model.root), Selection((), (), False)))
    tars = [TarLayer.from_files(layer.files, model.root) for layer in plan.layers]
    quiet = {"stdout": subprocess.DEVNULL, "check": True}
    rows = [
        ProfileRow(
            "read: cat > /dev/null", timed(lambda: subprocess.run(["cat", *paths], **quiet)), size
        ),
        ProfileRow(
            "read + sha256: sha256sum",
            timed(lambda: subprocess.run(["sha256sum", *paths], **quiet)),
            size,
        ),
        ProfileRow(
            "read + sha256: " + " ".join(hash_command()[:2]),
            timed(lambda: subprocess.run([*hash_command(), *paths], **quiet)),
            size,
            "the raw limit's hash step",
        ),
        ProfileRow(
            "tar stream only (TarLayer.chunks)",
            timed(lambda: [sum(map(len, t.chunks())) for t in tars]),
            size,
        ),
    ]
    digests: list[str] = []
    rows.append(
        ProfileRow(
            "tar + sha256 (TarLayer.digest)",
            timed(lambda: digests.extend(t.digest() for t in tars)),
            size,
            "native's first pass",
        )
    )
    startup = timed(
        lambda: subprocess.run(
            [sys.executable, "-m", "modelcar_builder", "--version"],
            env=bench.base_env(Path(tempfile.gettempdir())),
            **quiet,
        )
    )
    rows.append(
        ProfileRow("python -m modelcar_builder --version", startup, 0, "interpreter + imports")
    )
    for jobs in (1, 2):
        rows.append(profile_upload(bench, tars, digests, size, jobs))
    return rows


def profile_upload(
    bench: Bench, tars: list, digests: list[str], size: int, jobs: int
) -> ProfileRow:
    """modelcar's own upload path (RegistryClient.upload_blob of the tar stream) alone,
    into a fresh registry, ``jobs`` layers at a time; the registry's CPU tells its share."""
    from modelcar_builder.registry import RegistryClient

    reg = Registry.start(bench.new_dir("registry"))
    try:
        cpu0, self_cpu0 = reg.cpu_seconds(), time.process_time()
        with RegistryClient(reg.host, None, tls_verify=False) as client:

            def one(item: tuple) -> None:
                tar, digest = item
                client.upload_blob("bench/profile", digest, tar.size, tar.chunks)

            def upload() -> None:
                with ThreadPoolExecutor(max_workers=jobs) as pool:
                    list(pool.map(one, zip(tars, digests, strict=True)))

            seconds = timed(upload)
        reg_cpu, own_cpu = reg.cpu_seconds() - cpu0, time.process_time() - self_cpu0
    finally:
        reg.stop()
        shutil.rmtree(reg.workdir, ignore_errors=True)
    return ProfileRow(
        f"upload tar stream (RegistryClient.upload_blob), {jobs} at a time",
        seconds,
        size,
        f"client CPU {own_cpu:.1f} s, registry CPU {reg_cpu:.1f} s "
        f"({size / MB / max(reg_cpu, 1e-3):.0f} MB per registry CPU-s)",
    )
