"""Property-based requests from schemathesis (`st run`) against a real server: flintlm's own
/openapi.json, and OpenAI's published spec for the operations flintlm implements. Whatever the
generated input, the server must never answer 5xx (the `not_a_server_error` check).

The seed is fixed so a failure reproduces. Every selected operation runs in every phase; the
coverage phase (schemathesis' systematic boundary and wrong-type cases, ~2,900 here) is whole, and
the random fuzzing phase takes 10 cases per operation. What costs is generation on the CPU, so the
server bounds each generated request to a couple of tokens (every sampling path still runs).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HANG_TIMEOUT_S, LiveServer

# The published spec lies beside the checkout (../shared/specs), or where FLINTLM_OPENAI_SPEC says.
OPENAI_SPEC = Path(os.environ.get("FLINTLM_OPENAI_SPEC") or Path(__file__).resolve().parents[3]
                   / "shared" / "specs" / "openai-openapi.yaml")
# OpenAI's operation ids of what flintlm serves under /v1.
OPENAI_OPERATIONS = ("createChatCompletion", "createCompletion", "listModels", "retrieveModel",
                     "createResponse", "getResponse", "deleteResponse", "listInputItems",
                     "createModeration", "listChatCompletions", "getChatCompletion",
                     "updateChatCompletion", "deleteChatCompletion", "getChatCompletionMessages")
SEED = "20261203"


@pytest.fixture(scope="module")
def fuzzed_server(short_json_server: LiveServer) -> LiveServer:
    """The server's own bounds keep every generated case short (see `short_json_server`)."""
    return short_json_server


def schemathesis(location: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("st")), "run", location,
               "--checks", "not_a_server_error", "--workers", "1", "--seed", SEED,
               "--request-timeout", str(HANG_TIMEOUT_S),
               "--suppress-health-check", "all", "--warnings", "off", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=HANG_TIMEOUT_S,
                          check=False)


def assert_no_server_error(result: subprocess.CompletedProcess[str]) -> None:
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    counts = re.search(r"(\d+) generated, (\d+) passed", report)
    assert counts is not None and int(counts[1]) > 0, report
    assert counts[1] == counts[2], report


def test_own_spec_never_answers_5xx(fuzzed_server: LiveServer) -> None:
    result = schemathesis(f"{fuzzed_server.url}/openapi.json",
                          "--header", f"Authorization: Bearer {fuzzed_server.api_key}",
                          "--max-examples", "10", "--phases", "examples,coverage,fuzzing",
                          "--exclude-path-regex", "^/admin")
    assert_no_server_error(result)


@pytest.mark.skipif(not OPENAI_SPEC.exists(), reason=f"OpenAI's spec is not at {OPENAI_SPEC}")
def test_openai_spec_never_answers_5xx(fuzzed_server: LiveServer) -> None:
    selected = [arg for op in OPENAI_OPERATIONS for arg in ("--include-operation-id", op)]
    result = schemathesis(str(OPENAI_SPEC), "--url", f"{fuzzed_server.url}/v1",
                          "--header", f"Authorization: Bearer {fuzzed_server.api_key}",
                          "--max-examples", "10", "--phases", "examples,fuzzing", *selected)
    assert_no_server_error(result)
