"""Side-by-side benchmark: modelcar vs the shell pipelines it replaces.

One command generates an incompressible safetensors-like model, starts its own loopback
registry (Debian ``docker-registry``) and, for the streaming contender, a Hub imitation;
then runs every contender end to end (source -> pushed and verified image), in
alternation, and writes a Markdown report plus PNG charts. Run it from the repository
root (it imports ``tests.support``):

    python3 -m scripts.bench --size-gib 2 --rounds 3 --scaling 0.5,1,2,4 --out BENCHMARKS.md
    python3 -m scripts.bench --quick --out /tmp/b/BENCHMARKS.md      # CI smoke, ~20 s

Contenders (each run gets a fresh registry, so no contender can skip a blob another
one already uploaded):
  native            modelcar build DIR --engine native (local directory source)
  native --stream   modelcar build hf://... --engine native --stream (Hub imitation source)
  modelcar buildah  modelcar build DIR --engine buildah
  stock buildah     Containerfile FROM scratch + COPY model/ /models/, buildah bud + push
  olot + skopeo     umoci new (scratch) + olot layers + skopeo copy oci: -> docker://
  raw curl -T       hash the files (openssl), then POST + PUT each one with curl -T: the ceiling

From the Hub, two more entry points splice their sections into the report:
``--hub-only`` (hub_fetch, hub_build: fetch, snapshot_download, build and --stream under a
per-connection cap, and the overlap) and ``python3 -m scripts.bench.peers --repeat 3``
(peers: the disk path and --stream next to oci-modelcar, installed into a venv of its own,
and snapshot_download + olot + skopeo, 4 x 512 MiB uncapped and 4 x 256 MiB capped).

Measured per run: wall time, peak RSS of the whole process tree (sampled from /proc),
peak extra disk (sampled: workspace, TMPDIR, buildah storage, /var/tmp), CPU seconds
(wait4 rusage), registry CPU and storage (reported apart).
"""

# Modules, one job each: options (command line), model (the generated model), services
# (registry, Hub imitation), measurement (/proc sampling), contenders (each way of
# building), results (runs, summaries, targets), runner (phases, one measured run),
# native_profile (native's stages alone), report (BENCHMARKS.md), charts (PNGs); hub_fetch,
# hub_build, hub_runs ("From the Hub"), peers (its peers side by side).
