"""`Admission.admit` on a real SQLite store: the order of its refusals, each with its ledger
row, the server-wide concurrent-request cap per key, and max_tokens fitted to the context."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flintlm.api.admission import Admission
from flintlm.api.errors import InvalidParam, RateLimited, ServiceUnavailable
from flintlm.config import LimitsConfig, PlatformConfig
from flintlm.engine.request import SamplingParams, Usage
from flintlm.platform.keys import STATIC_KEY_ID, builtin_key

MAX_MODEL_LEN = 64


@pytest.fixture
def admission(tmp_path: Path) -> Iterator[Admission]:
    from flintlm.platform.service import Platform

    platform = Platform.from_config(PlatformConfig(data_dir=str(tmp_path)))
    yield Admission(platform, model_name="m", max_model_len=MAX_MODEL_LEN,
                    limits=LimitsConfig(max_concurrent_per_key=2, default_max_tokens=16))
    platform.close()


def _statuses(admission: Admission, request_ids: list[str]) -> list[str | None]:
    admission.platform.ledger.flush()
    rows = [admission.platform.ledger.get(request_id) for request_id in request_ids]
    return [None if row is None else row.status.value for row in rows]


async def test_the_server_default_caps_a_keys_requests_in_flight(admission: Admission) -> None:
    key = builtin_key(STATIC_KEY_ID)
    params = SamplingParams(max_tokens=4)
    first = await admission.admit(key, "r1", [[1, 2]], params)
    await admission.admit(key, "r2", [[1, 2]], params)
    with pytest.raises(RateLimited) as refused:
        await admission.admit(key, "r3", [[1, 2]], params)
    assert refused.value.code == "too_many_concurrent_requests"
    assert refused.value.headers == {"Retry-After": "1"}
    await first.settle(Usage(2, 4))
    await admission.admit(key, "r4", [[1, 2]], params)  # a slot is free again
    assert _statuses(admission, ["r1", "r3"]) == ["finished", "rejected"]


async def test_max_tokens_is_fitted_and_an_engine_without_room_is_a_503(
    admission: Admission
) -> None:
    key = builtin_key(STATIC_KEY_ID)
    unset = SamplingParams(max_tokens=None, n=2)
    ticket = await admission.admit(key, "fit", [[1] * 10], unset)
    assert ticket.admitted_params.max_tokens == 16  # the server default
    near_the_end = await admission.admit(key, "end", [[1] * 60], unset)
    assert near_the_end.admitted_params.max_tokens == MAX_MODEL_LEN - 60
    asked: list[int] = []

    def has_room(num_requests: int) -> bool:
        asked.append(num_requests)
        return False

    await ticket.settle(Usage(0, 0))
    await near_the_end.settle(Usage(0, 0))
    with pytest.raises(ServiceUnavailable) as full:
        await admission.admit(key, "full", [[1], [2]], SamplingParams(n=3), has_room=has_room)
    assert full.value.code == "engine_overloaded" and asked == [6]  # n x prompts
    with pytest.raises(InvalidParam) as too_long:
        await admission.admit(key, "long", [[1] * 64], SamplingParams(), prompt_param="messages")
    assert (too_long.value.param, too_long.value.code) == ("messages",
                                                            "context_length_exceeded")
    assert _statuses(admission, ["full", "long"]) == ["rejected", "rejected"]
