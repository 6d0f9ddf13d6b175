"""The `flintlm` command: flags, FLINTLM_* environment, and chat/generate against a server."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from flintlm import cli
from flintlm.config import (
    CacheConfig,
    ModelConfig,
    ModerationConfig,
    PlatformConfig,
    SchedulerConfig,
    ServerConfig,
)
from tests.conftest import HANG_TIMEOUT_S, LiveServer


def test_every_engine_and_server_field_is_a_serve_flag() -> None:
    command = typer.main.get_command(cli.app).commands["serve"]  # type: ignore[attr-defined]
    flags = {p.name for p in command.params}
    for section in (ModelConfig, CacheConfig, SchedulerConfig, ServerConfig, PlatformConfig,
                    ModerationConfig):
        for field in dataclasses.fields(section):
            assert field.name in flags, f"serve has no --{field.name.replace('_', '-')}"
    max_num_seqs = next(p for p in command.params if p.name == "max_num_seqs")
    assert max_num_seqs.help == (
        "Most requests in the running batch at once. [env: FLINTLM_MAX_NUM_SEQS]")


def test_flags_beat_environment_beats_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLINTLM_PORT", "9001")
    monkeypatch.setenv("FLINTLM_KV_CACHE_MEMORY", "256MiB")
    monkeypatch.setenv("FLINTLM_ENABLE_PREFIX_CACHING", "false")
    monkeypatch.setenv("FLINTLM_API_KEY", "from-env")
    config = cli.build_config({"port": 9002, "max_num_seqs": 3})
    assert config.server.port == 9002
    assert config.cache.kv_cache_memory == 256 << 20
    assert config.cache.enable_prefix_caching is False
    assert config.server.api_key == "from-env"
    assert config.scheduler.max_num_seqs == 3
    assert config.model.dtype == "auto"


def test_bad_values_are_usage_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLINTLM_DTYPE", "int3")
    with pytest.raises(typer.BadParameter, match="int3"):
        cli.build_config({})
    result = CliRunner().invoke(cli.app, ["serve", "--kv-cache-memory", "lots"])
    assert result.exit_code == 2


def _run(args: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flintlm", *args], input=stdin,
                          capture_output=True, text=True, timeout=HANG_TIMEOUT_S, check=False)


def test_serve_start_up_failures_exit_non_zero_naming_the_cause(tmp_path) -> None:
    """A bad platform store and a missing model each end `flintlm serve` with a non-zero exit
    and their own error, before any port is bound."""
    bad_store = _run(["serve", "--port", "1", "--database-url",
                      "postgresql+psycopg://127.0.0.1:1/none"])
    assert bad_store.returncode != 0
    assert "Connection refused" in bad_store.stderr
    bad_model = _run(["serve", "--port", "1", "--data-dir", str(tmp_path),
                      "--model", str(tmp_path / "missing.gguf")])
    assert bad_model.returncode != 0
    assert "missing.gguf: no such file" in bad_model.stderr


def test_generate_and_chat_against_a_server(server: LiveServer) -> None:
    remote = ["--base-url", f"{server.url}/v1", "--api-key", server.api_key or ""]
    expected = server.openai().chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Say hello."}], temperature=0,
        max_completion_tokens=8).choices[0].message.content
    generated = _run(["generate", "Say hello.", "--max-tokens", "8", *remote])
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.strip() == expected.strip()

    chat = _run(["chat", "--max-tokens", "8", "--temperature", "0", *remote],
                stdin="Say hello.\n/reset\nSay hello.\n/exit\n")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.count(expected.strip()) == 2
