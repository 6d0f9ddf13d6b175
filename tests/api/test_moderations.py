"""POST /v1/moderations on a real `flintlm serve` with the official `openai` client: OpenAI's
shape, scores from the bundled classifier, list and text-part input, errors in OpenAI's
envelope, key auth and rate limits, one ledger row per request; and the guard backend
(`--moderation-backend guard --guard-model PATH`) with the embedded GGUF as its model."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import uvicorn

from flintlm.api.moderation_protocol import MAX_INPUTS
from flintlm.config import (
    CacheConfig,
    FlintConfig,
    ModelConfig,
    ModerationConfig,
    PlatformConfig,
    ServerConfig,
)
from flintlm.loading.loader import resolve_model_path
from flintlm.platform.ledger import UsageStatus
from flintlm.platform.service import Platform
from flintlm.safety.llama_guard import GuardModerator
from flintlm.safety.moderation import CATEGORIES, ModerationResult, Moderator
from flintlm.server import build_app
from tests.conftest import HANG_TIMEOUT_S, READY_TIMEOUT_S
from tests.platform.served import IssuedKey, PlatformServer, platform_servers
from tests.reference import REFERENCE_PATHS

from .conftest import FAKE_KEY, RecordingAdmission, free_port
from .fakes import FakeEngine

ABUSIVE = "Shut up, you stupid moron, nobody asked for your garbage opinion."
BENIGN = "Could you help me write a polite email asking my landlord to fix the heating?"
CLASSIFIER = "flintlm-moderation-profanity-1"


@pytest.fixture(scope="module")
def served(platform_server: PlatformServer) -> PlatformServer:
    return platform_server


@pytest.fixture(scope="module")
def key(served: PlatformServer) -> IssuedKey:
    return served.create_key("moderation")


def test_shape_and_scores(served: PlatformServer, key: IssuedKey) -> None:
    response = served.openai(key).moderations.create(input=ABUSIVE)
    assert response.id.startswith("modr-") and response.model == CLASSIFIER
    (result,) = response.results
    scores = result.category_scores.model_dump(by_alias=True)
    categories = result.categories.model_dump(by_alias=True)
    applied = result.category_applied_input_types.model_dump(by_alias=True)
    assert set(scores) == set(categories) == set(applied) == set(CATEGORIES)
    assert result.flagged and result.categories.harassment
    assert result.category_scores.harassment > 0.9
    assert applied["harassment"] == ["text"]
    for name in set(CATEGORIES) - {"harassment"}:  # not judged by the classifier: 0, never on
        assert scores[name] == 0.0 and categories[name] is False and applied[name] == []


def test_benign_is_not_flagged(served: PlatformServer, key: IssuedKey) -> None:
    (result,) = served.openai(key).moderations.create(
        input=BENIGN, model="omni-moderation-latest").results
    assert not result.flagged and result.category_scores.harassment < 0.1


def test_list_input_one_result_each_in_order(served: PlatformServer, key: IssuedKey) -> None:
    response = served.openai(key).moderations.create(input=[BENIGN, ABUSIVE, BENIGN])
    assert [r.flagged for r in response.results] == [False, True, False]


def test_text_parts_are_one_input(served: PlatformServer, key: IssuedKey) -> None:
    response = served.openai(key).moderations.create(
        input=[{"type": "text", "text": "Hello there."}, {"type": "text", "text": ABUSIVE}])
    (result,) = response.results
    assert result.flagged


@pytest.mark.parametrize(("body", "param"), [
    ({"input": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]},
     "input[0]"),
    ({"input": [{"type": "text", "text": "hi"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]},
     "input[1]"),
    ({"input": []}, "input"),
    ({"input": ["x"] * (MAX_INPUTS + 1)}, "input"),
    ({"input": 42}, "input"),
    ({}, "input"),
    ({"input": "hi", "threshold": 0.3}, "threshold"),
])
def test_bad_input_is_a_400_naming_it(served: PlatformServer, key: IssuedKey,
                                      body: dict[str, object], param: str) -> None:
    with served.http(key) as http:
        response = http.post("/v1/moderations", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    if param.startswith("input[") and "image_url" in str(body):
        assert "image_url" in error["message"]


def test_unknown_model_is_a_404(served: PlatformServer, key: IssuedKey) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        served.openai(key).moderations.create(input=BENIGN, model="gpt-4o")
    assert caught.value.code == "model_not_found"


def test_key_auth(served: PlatformServer) -> None:
    with pytest.raises(openai.AuthenticationError):
        served.openai("flint-sk-not-a-key").moderations.create(input=BENIGN)


def test_one_ledger_row_per_request(served: PlatformServer) -> None:
    key = served.create_key("moderation-ledger")
    texts = [BENIGN, ABUSIVE]
    served.openai(key).moderations.create(input=texts)
    num_tokens = sum(served.count_tokens(key, prompt=t, add_special_tokens=False)
                     for t in texts)
    (row,) = served.wait_for_ledger(key.id, 1)
    assert row["request_id"].startswith("modr-") and row["status"] == "finished"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (num_tokens, 0)
    with pytest.raises(openai.BadRequestError):
        served.openai(key).moderations.create(input=[])
    # A request refused by validation never reaches admission: still one row.
    assert len(served.wait_for_ledger(key.id, 1)) == 1


def test_rate_limited_like_any_route(served: PlatformServer) -> None:
    key = served.create_key("moderation-rpm", rpm=1)
    client = served.openai(key)
    client.moderations.create(input=BENIGN)
    with pytest.raises(openai.RateLimitError):
        client.moderations.create(input=BENIGN)
    rows = served.wait_for_ledger(key.id, 2)
    assert sorted(row["status"] for row in rows) == ["finished", "rejected"]


@pytest.fixture(scope="module")
def guard_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformServer]:
    log_dir = tmp_path_factory.mktemp("guard")
    guard = resolve_model_path("default")
    with platform_servers(log_dir, f"sqlite:///{log_dir / 'store.db'}",
                          "--moderation-backend", "guard", "--guard-model", guard,
                          "--kv-cache-memory", "64MiB") as (server,):
        yield server


def test_guard_backend_serves_llama_guard_verdicts(guard_served: PlatformServer) -> None:
    # NOTE: the embedded SmolLM2 is no guard model: what is checked is the wiring and that its
    # answer, held to Llama Guard's format by the grammar, becomes an OpenAI-shaped result
    # (tests/safety/test_llama_guard.py forces exact answers and checks the mapping).
    key = guard_served.create_key("guard")
    response = guard_served.openai(key).moderations.create(input=[BENIGN, ABUSIVE])
    assert response.model == Path(resolve_model_path("default")).name.removesuffix(".gguf")
    assert len(response.results) == 2
    for result in response.results:
        applied = result.category_applied_input_types.model_dump(by_alias=True)
        assert applied["harassment"] == [] and applied["hate"] == ["text"]
        scores = result.category_scores.model_dump(by_alias=True)
        assert set(scores.values()) <= {0.0, 1.0}
        categories = result.categories.model_dump(by_alias=True)
        assert any(categories.values()) <= result.flagged
    (row,) = guard_served.wait_for_ledger(key.id, 1)
    assert row["completion_tokens"] == 0 and row["status"] == "finished"


@dataclass
class InProcess:
    url: str
    admission: RecordingAdmission


@contextmanager
def in_process(tmp: Path, moderator: Moderator, config: FlintConfig) -> Iterator[InProcess]:
    """An in-process app (fake generation engine, real platform) around `moderator`."""
    port = free_port()
    platform_config = PlatformConfig(data_dir=str(tmp))
    config = config.replace(server=ServerConfig(port=port, api_key=FAKE_KEY),
                            platform=platform_config)
    engine = FakeEngine()
    admission = RecordingAdmission(Platform.from_config(platform_config),
                                   model_name=engine.model_name,
                                   max_model_len=engine.max_model_len, static_key=FAKE_KEY)
    app = build_app(config, engine, admission, moderator)  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the in-process server did not start"
    try:
        yield InProcess(f"http://127.0.0.1:{port}/v1", admission)
    finally:
        server.should_exit = True
        thread.join(HANG_TIMEOUT_S)


def in_process_client(app: InProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=app.url, api_key=FAKE_KEY, max_retries=0,
                         timeout=HANG_TIMEOUT_S)


@pytest.fixture(scope="module")
def forced_guard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    """The guard on flintlm's engine, its answer forced to "unsafe\\nS1,S10" by the grammar.
    On the reference paths: nothing is left to measure (a kernel calibration would cost more
    than the module; tests/kernels covers it)."""
    config = FlintConfig(model=ModelConfig(dtype="float32", device="cpu", **REFERENCE_PATHS),
                         cache=CacheConfig(kv_cache_memory=64 << 20),
                         moderation=ModerationConfig("guard", resolve_model_path("default")))
    moderator = GuardModerator.from_config(config, output_regex="unsafe\nS1,S10")
    with in_process(tmp_path_factory.mktemp("forced"), moderator, config) as app:
        yield app


class BrokenModerator(Moderator):
    model_name = "broken"
    judged_categories = frozenset({"harassment"})

    def classify_blocking(self, texts: list[str]) -> list[ModerationResult]:
        raise RuntimeError("the classifier's model file is corrupt")


def test_a_failing_backend_is_a_500_with_one_failed_row(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    with in_process(tmp_path_factory.mktemp("broken"), BrokenModerator(), FlintConfig()) as app:
        with pytest.raises(openai.InternalServerError) as caught:
            in_process_client(app).moderations.create(input=[BENIGN, ABUSIVE])
        assert "corrupt" not in str(caught.value)  # no internals leak to the client
        ((request_id, usage, status),) = app.admission.settled
    assert request_id.startswith("modr-") and status is UsageStatus.FAILED
    assert usage.prompt_tokens == len(BENIGN.encode()) + len(ABUSIVE.encode())  # byte tokens
    assert usage.completion_tokens == 0


def test_forced_guard_answer_maps_to_openai_categories(forced_guard: InProcess) -> None:
    response = in_process_client(forced_guard).moderations.create(input=[BENIGN, "anything"])
    assert response.model == "SmolLM2-135M-Instruct.Q4_1"
    for result in response.results:  # S1 Violent Crimes, S10 Hate
        categories = result.categories.model_dump(by_alias=True)
        assert result.flagged
        assert {name for name, on in categories.items() if on} == {
            "violence", "illicit/violent", "hate"}
        assert result.category_scores.hate == 1.0 and result.category_scores.sexual == 0.0
    ((request_id, usage, status),) = forced_guard.admission.settled
    assert request_id == response.id and status is UsageStatus.FINISHED
    assert usage.completion_tokens == 0
