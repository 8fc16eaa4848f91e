"""One model built by N pods: `build --part K/N` in separate processes, each with its
own workspace, then `assemble --parts N`, against a real docker-registry and the Hub
imitation. The assembled image is the one a one-pod build makes: same digest, as the
registry itself answers (Docker-Content-Digest)."""

from __future__ import annotations

import json

import jsonschema
import pytest
import requests

from modelcar_builder import errors
from modelcar_builder.oci.partrecord import record_tag
from modelcar_builder.plan import make_plan
from modelcar_builder.shares import Part, parse_part, shares
from modelcar_builder.snapshot import FileEntry, Snapshot
from tests.support.clitools import assert_refused, run
from tests.support.models import MIB, REPO, build_args, model_files
from tests.support.pods import MANIFEST_TYPES, ROOT, finish, registry_digest, run_pod, start_pod
from tests.support.waiting import wait_until

REPORT_SCHEMA = ROOT / "docs" / "schemas" / "build-report.v1.schema.json"


def build_parts(hub, image: str, n: int, tmp_path, base: str, *extra: str) -> list[str]:
    """Parts 1..n of ``image`` as n processes at once; their stderr, in part order."""
    pods = [
        start_pod(
            *build_args(image, tmp_path / f"ws-{k}", base, "--part", f"{k}/{n}", *extra),
            hub_endpoint=hub.endpoint,
        )
        for k in range(1, n + 1)
    ]
    errs = []
    for k, pod in enumerate(pods, start=1):
        code, _out, err = finish(pod)
        assert code == 0, f"part {k}/{n}: {err}"
        errs.append(err)
    return errs


def assemble(image: str, n: int, *extra: str) -> tuple[int, str, str]:
    return run_pod("assemble", "--image", image, "--parts", str(n), "--no-tls-verify", *extra)


def one_pod(capsys, image: str, tmp_path, base: str, *extra: str) -> str:
    res = run(capsys, *build_args(image, tmp_path / "ws-one", base, *extra))
    assert res.code == 0, res.err
    return res.last_line


def test_three_parts_on_disk_give_the_one_pod_digest(hub, registry, base_image, capsys, tmp_path):
    hub.add_repo(REPO, model_files(n_shards=4, shard_size=2 * MIB))
    image = f"{registry.host}/models/parts:v1"
    errs = build_parts(hub, image, 3, tmp_path, base_image.ref)
    assert "part 1/3: " in errs[0] and "recorded as" in errs[0]
    # every part pushed only its share: the model layers went up once in all
    code, out, err = assemble(image, 3, "--results-dir", str(tmp_path))
    assert code == 0, err
    assembled = registry_digest(registry.host, "models/parts", "v1")
    assert out.strip() == f"oci://{registry.host}/models/parts@{assembled}"
    assert (tmp_path / "IMAGE_DIGEST").read_text() == assembled
    assert (tmp_path / "IMAGE_URL").read_text() == image
    assert "3 of 3 parts recorded" not in err  # nothing to wait for: no waiting line

    url = one_pod(capsys, f"{registry.host}/models/one:v1", tmp_path, base_image.ref)
    single = registry_digest(registry.host, "models/one", "v1")
    assert url.endswith(single) and single == assembled

    for deep in ((), ("--deep",)):
        res = run(capsys, "verify", image, "--no-tls-verify", *deep)
        assert res.code == 0, res.err
        assert res.last_line.endswith(assembled)


def test_two_streamed_parts_give_the_one_pod_digest(hub, registry, capsys, tmp_path):
    hub.add_repo(REPO, model_files(n_shards=3, shard_size=2 * MIB))
    image = f"{registry.host}/models/streamed:v1"
    mark = registry.mark()
    build_parts(hub, image, 2, tmp_path, "scratch", "--stream")
    pushed = {b.digest for b in registry.committed_blobs(since=mark)}
    code, out, err = assemble(image, 2)
    assert code == 0, err
    assembled = registry_digest(registry.host, "models/streamed", "v1")
    assert out.strip().endswith(assembled)
    manifest = json.loads(run_manifest(registry, "models/streamed", assembled))
    assert {layer["digest"] for layer in manifest["layers"]} <= pushed  # the parts pushed all

    one_pod(capsys, f"{registry.host}/models/one:v1", tmp_path, "scratch", "--stream")
    assert registry_digest(registry.host, "models/one", "v1") == assembled
    assert run(capsys, "verify", image, "--no-tls-verify", "--deep").code == 0


def run_manifest(registry, repo: str, digest: str) -> str:
    resp = requests.get(f"http://{registry.host}/v2/{repo}/manifests/{digest}",
                        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
                        timeout=30)  # fmt: skip
    resp.raise_for_status()
    return resp.text


def test_a_missing_part_is_named(hub_repo, registry, capsys, tmp_path):
    image = f"{registry.host}/models/missing:v1"
    for k in (1, 3):
        res = run(capsys, *build_args(image, tmp_path / f"ws-{k}", "scratch", "--part", f"{k}/3"))
        assert res.code == 0, res.err
    res = run(capsys, "assemble", "--image", image, "--parts", "3", "--wait", "1",
              "--no-tls-verify")  # fmt: skip
    assert_refused(res, errors.PartsMissing.exit_code)
    assert "no finished record of part 2/3 after 1 s (2 of 3 recorded)" in res.err
    assert "waiting for part 2/3" in res.err


def test_a_rerun_part_is_idempotent_and_another_plan_is_refused(hub_repo, registry, capsys,
                                                                 tmp_path):  # fmt: skip
    image = f"{registry.host}/models/rerun:v1"
    args = lambda k, ws: build_args(image, tmp_path / ws, "scratch", "--part", f"{k}/2")  # noqa: E731
    for k in (1, 2):
        assert run(capsys, *args(k, f"ws-{k}")).code == 0
    first = registry_digest(registry.host, "models/rerun", record_tag("v1", 1, 2))

    # a retried pod: a fresh workspace, the record and its layers already in the registry
    mark = registry.mark()
    res = run(capsys, *args(1, "ws-retry"))
    assert res.code == 0, res.err
    assert "already recorded by an earlier run of this part" in res.err
    assert "fetching" not in res.err  # nothing downloaded again
    sizes = [b.size for b in registry.committed_blobs(since=mark)]
    assert all(size < 64 * 1024 for size in sizes), sizes  # no model layer sent again
    assert registry_digest(registry.host, "models/rerun", record_tag("v1", 1, 2)) == first

    # part 2 again after the repo moved on: another plan than part 1's
    new = hub_repo.commit(REPO, {"config.json": b'{"model_type": "llm2"}'})
    assert run(capsys, *args(2, "ws-2")).code == 0
    res = run(capsys, "assemble", "--image", image, "--parts", "2", "--wait", "0",
              "--no-tls-verify")  # fmt: skip
    assert_refused(res, errors.PartsDisagree.exit_code)
    assert f"part 2/2: it planned hf://{REPO}@{new}" in res.err


def test_part_index_takes_k_from_the_indexed_job(hub_repo, registry, capsys, tmp_path,
                                                monkeypatch):  # fmt: skip
    image = f"{registry.host}/models/indexed:v1"
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    monkeypatch.setenv("MODELCAR_PART", "index/2")  # the option's variable, as a Job sets it
    res = run(capsys, *build_args(image, tmp_path / "ws", "scratch", "--json"))
    assert res.code == 0, res.err
    assert "part 2/2: " in res.err
    record = registry_digest(registry.host, "models/indexed", record_tag("v1", 2, 2))
    report = json.loads(res.out)  # a part's --json is a build report of its share
    jsonschema.Draft202012Validator(json.loads(REPORT_SCHEMA.read_text())).validate(report)
    assert report["image_url"].endswith(record)

    monkeypatch.delenv("JOB_COMPLETION_INDEX")
    res = run(capsys, *build_args(image, tmp_path / "ws", "scratch"))
    assert_refused(res, errors.UsageError.exit_code)
    assert "JOB_COMPLETION_INDEX is not set" in res.err


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (("--part", "0/2"), "part 0 of 2 does not exist"),
        (("--part", "3/2"), "part 3 of 2 does not exist"),
        (("--part", "x/2"), "K must be a whole number"),
        (("--part", "2"), "N must be a whole number"),
        (("--part", "1/0"), "N must be a whole number"),
        (("--part", "1/2", "--load"), "cannot be combined with --load"),
        (("--part", "1/2", "--platform", "linux/amd64,linux/arm64"), "several --platform"),
        (("--part", "1/2", "--sign-key", "k.pem"), "cannot be combined with --sign-key"),
    ],
)
def test_bad_part_values_are_one_line_and_exit_2(capsys, tmp_path, extra, says):
    res = run(capsys, *build_args("127.0.0.1:9/models/x:v1", tmp_path / "ws", "scratch", *extra))
    assert_refused(res, errors.UsageError.exit_code)
    assert says in res.err


def test_parts_refuse_other_engines_and_layouts(capsys, tmp_path):
    res = run(capsys, *build_args(f"oci:{tmp_path}/out:v1", tmp_path / "ws", "scratch",
                                  "--part", "1/2"))  # fmt: skip
    assert_refused(res, errors.UsageError.exit_code)
    assert "an oci: layout --image" in res.err


def _entry(i: int, size: int) -> FileEntry:
    return FileEntry(f"f{i:02d}", size, sha256=f"{i:064x}")


def test_shares_are_balanced_by_bytes_and_deterministic():
    sizes = [90, 80, 70, 60, 50, 40, 30, 30]
    snap = Snapshot(
        "hub", "o/m", "main", "0" * 40, tuple(_entry(i, s) for i, s in enumerate(sizes))
    )
    plan = make_plan(snap, threshold=1)
    got = shares(plan, 3)
    # largest first onto the least-loaded part, ties to the lower part
    assert got == ((0, 5, 6), (1, 4, 7), (2, 3))
    assert sorted(i for s in got for i in s) == list(range(len(sizes)))
    assert shares(plan, 3) == got
    assert shares(plan, 10)[8:] == ((), ())  # more parts than layers: the last build nothing
    assert parse_part(" 2/3 ", {}) == Part(2, 3)
    assert parse_part("index/3", {"JOB_COMPLETION_INDEX": "0"}) == Part(1, 3)


def test_record_tags_stay_valid():
    assert record_tag("v1", 2, 4) == "v1.part-2-of-4"
    long_a, long_b = "a" * 127 + "x", "a" * 127 + "y"
    tag_a, tag_b = record_tag(long_a, 12, 16), record_tag(long_b, 12, 16)
    assert len(tag_a) <= 128 and len(tag_b) <= 128 and tag_a != tag_b


def test_more_parts_than_layers_leave_the_last_empty(hub_repo, registry, capsys, tmp_path):
    image = f"{registry.host}/models/many:v1"
    for k in range(1, 5):  # the model has 3 layers: part 4 builds none
        res = run(capsys, *build_args(image, tmp_path / f"ws-{k}", "scratch", "--part", f"{k}/4"))
        assert res.code == 0, res.err
    assert "part 4/4: 0 of the model's 3 layers" in res.err
    res = run(capsys, "assemble", "--image", image, "--parts", "4", "--no-tls-verify")
    assert res.code == 0, res.err
    one_pod(capsys, f"{registry.host}/models/one:v1", tmp_path, "scratch")
    assert registry_digest(registry.host, "models/many", "v1") == registry_digest(
        registry.host, "models/one", "v1"
    )


def test_parts_and_assemble_take_the_registry_credentials(hub_repo, registry_htpasswd, capsys,
                                                         tmp_path):  # fmt: skip
    reg = registry_htpasswd
    auth = str(reg.write_authfile(tmp_path / "auth.json"))
    image = f"{reg.host}/models/private:v1"
    for k in (1, 2):
        res = run(capsys, *build_args(image, tmp_path / f"ws-{k}", "scratch", "--part", f"{k}/2",
                                      "--authfile", auth))  # fmt: skip
        assert res.code == 0, res.err
    base = ("assemble", "--image", image, "--parts", "2", "--no-tls-verify", "--wait", "0")
    res = run(capsys, *base)  # no credentials
    assert_refused(res, errors.RegistryAuthError.exit_code)
    res = run(capsys, *base, "--authfile", auth, "--results-dir", str(tmp_path))
    assert res.code == 0, res.err
    assert res.last_line == (tmp_path / "IMAGE_REF").read_text()
    assert reg.password not in res.out + res.err


def test_a_part_with_another_created_timestamp_is_refused(hub_repo, registry, capsys, tmp_path,
                                                          monkeypatch):  # fmt: skip
    image = f"{registry.host}/models/created:v1"
    assert run(capsys, *build_args(image, tmp_path / "ws-1", "scratch", "--part", "1/2")).code == 0
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert run(capsys, *build_args(image, tmp_path / "ws-2", "scratch", "--part", "2/2")).code == 0
    res = run(capsys, "assemble", "--image", image, "--parts", "2", "--wait", "0",
              "--no-tls-verify")  # fmt: skip
    assert_refused(res, errors.PartsDisagree.exit_code)
    assert "part 2/2: its image settings (base image, created timestamp" in res.err


def test_a_tag_holding_something_else_is_named(hub_repo, registry, capsys, tmp_path):
    image = f"{registry.host}/models/foreign:v1"
    one_pod(capsys, f"{image}.part-2-of-2", tmp_path, "scratch")  # an image, not a record
    res = run(capsys, *build_args(image, tmp_path / "ws-1", "scratch", "--part", "1/2"))
    assert res.code == 0, res.err
    res = run(capsys, "assemble", "--image", image, "--parts", "2", "--wait", "0",
              "--no-tls-verify")  # fmt: skip
    assert_refused(res, errors.PartsMissing.exit_code)
    assert "no finished record of part 2/2" in res.err
    assert "the tag of part 2/2 holds no part record this version reads" in res.err


def test_assemble_checks_its_results_dir_before_the_wait(capsys):
    res = run(capsys, "assemble", "--image", "127.0.0.1:9/models/x:v1", "--parts", "2",
              "--results-dir", "/proc/modelcar-results")  # fmt: skip
    assert_refused(res, errors.OutputNotWritable.exit_code)  # not 50: no registry asked yet


def test_a_part_killed_mid_way_is_retried_from_its_record(hub, registry, capsys, tmp_path):
    """A pod killed after its first layer (SIGKILL: evicted, OOM) left a record of it; its
    retry, on a fresh volume, streams only the layers that record lacks."""
    files = model_files(n_shards=3, shard_size=2 * MIB)
    hub.add_repo(REPO, files)
    hub.stall(REPO, "model-00001-of-00003.safetensors", seconds=120)  # layer 1 hangs
    image = f"{registry.host}/models/killed:v1"
    args = [*build_args(image, tmp_path / "ws-1", "scratch", "--part", "1/1", "--stream",
                        "--jobs", "1")]  # fmt: skip
    pod = start_pod(*args, hub_endpoint=hub.endpoint)
    try:
        wait_until(lambda: _has_tag(registry, "models/killed", record_tag("v1", 1, 1)),
                   "the part's first record", timeout=120)  # fmt: skip
    finally:
        pod.kill()
        finish(pod)
    res = run(capsys, "assemble", "--image", image, "--parts", "1", "--wait", "0",
              "--no-tls-verify")  # fmt: skip
    assert_refused(res, errors.PartsMissing.exit_code)
    assert "no finished record of part 1/1 (1 layer pushed so far)" in res.err

    hub.clear_faults()
    first = {b.digest for b in registry.committed_blobs()}
    mark = registry.mark()
    args[args.index(str(tmp_path / "ws-1"))] = str(tmp_path / "ws-retry")
    res = run(capsys, *args)
    assert res.code == 0, res.err
    assert "1 already recorded by an earlier run of this part" in res.err
    again = {b.digest for b in registry.committed_blobs(since=mark)}
    model = {b.digest for b in registry.committed_blobs() if b.size >= 2 * MIB}
    assert not (again & first & model)  # the layer the killed pod pushed is not sent again
    res = run(capsys, "assemble", "--image", image, "--parts", "1", "--no-tls-verify")
    assert res.code == 0, res.err


def _has_tag(registry, repo: str, tag: str) -> bool:
    resp = requests.head(f"http://{registry.host}/v2/{repo}/manifests/{tag}",
                         headers={"Accept": MANIFEST_TYPES}, timeout=30)  # fmt: skip
    return resp.status_code == 200
