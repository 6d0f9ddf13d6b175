"""`python -m flintlm.bench offline|serve`: the same app `flintlm bench` mounts."""

from flintlm.bench.cli import bench_app

bench_app(prog_name="python -m flintlm.bench")
