"""Ray stays out of the single-process server: importing the server, the CLI and the API, and
serving without --ray, never import it; --ray refuses to start without the shared store."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flintlm.config import FlintConfig, PlatformConfig, ScaleConfig
from tests.conftest import HANG_TIMEOUT_S, LiveServer


def test_importing_the_server_does_not_import_ray() -> None:
    code = ("import sys, flintlm.server, flintlm.cli, flintlm.api.routes.chat; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_ray_needs_a_shared_store() -> None:
    with pytest.raises(ValueError, match="--database-url"):
        FlintConfig(scale=ScaleConfig(ray=True))
    with pytest.raises(ValueError, match="--redis-url"):
        FlintConfig(scale=ScaleConfig(ray=True),
                    platform=PlatformConfig(database_url="postgresql+psycopg://x/y"))
    result = subprocess.run([sys.executable, "-m", "flintlm", "serve", "--ray"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--database-url" in result.stderr, result.stderr


def test_autoscaling_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="both"):
        ScaleConfig(max_replicas=4)
    with pytest.raises(ValueError, match="min_replicas"):
        ScaleConfig(replicas=2, min_replicas=3, max_replicas=4)
    with pytest.raises(ValueError, match="router"):
        ScaleConfig(router="random")


def test_serving_without_ray_does_not_import_it(server: LiveServer) -> None:
    """A live single-process server answers, and its process has not loaded Ray (whose import
    maps `ray/_raylet.so`)."""
    with server.http() as http:
        response = http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1},
                             timeout=HANG_TIMEOUT_S)
    assert response.status_code == 200, response.text
    with open(f"/proc/{server.process.pid}/maps") as maps:
        assert "/ray/" not in maps.read(), "the server process mapped a Ray library"
