"""Benchmark model names -> what flintlm and the peers load.

'default' and file paths pass through unchanged; a synthetic name, `<shape>-<type>` such as
'llama-3.2-1b-q4_0', becomes a GGUF generated once into the user cache (FLINTLM_CACHE_DIR,
default ~/.cache/flintlm) and reused after that.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from flintlm import env
from flintlm.bench.synthetic import SHAPES, WEIGHT_TYPES, write_synthetic_gguf


def synthetic_model_names() -> list[str]:
    """Every name `resolve_bench_model` generates a model for."""
    return [f"{shape}-{type_name.lower()}" for shape in SHAPES for type_name in WEIGHT_TYPES]


def cache_dir() -> Path:
    configured = env.lookup("cache_dir")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "flintlm"


def synthetic_model_path(name: str, folder: Path) -> Path:
    return folder / "synthetic" / f"{name.lower()}.gguf"


def resolve_bench_model(model: str, echo: Callable[[str], object] = print) -> str:
    """`model` as flintlm and the peers take it: a synthetic name becomes the path of its GGUF,
    generated first if the cache does not hold it yet (a minute or two for 1B); anything else
    is returned as given."""
    name = model.lower()
    if name not in synthetic_model_names():
        return model
    path = synthetic_model_path(name, cache_dir())
    if path.is_file():
        return str(path)
    shape, _, type_name = name.rpartition("-")
    path.parent.mkdir(parents=True, exist_ok=True)
    echo(f"generating {name} (random weights, seed 0) into {path} ...")
    start = time.perf_counter()
    write_synthetic_gguf(SHAPES[shape], WEIGHT_TYPES[type_name.upper()], path)
    echo(f"  {path.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - start:.0f} s")
    return str(path)
