"""Who `Admission.authenticate` lets in, on a real SQLite store: dev mode only while nothing is
configured, the shared `--api-key`, store keys with the reason they fail."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flintlm.api.admission import Admission
from flintlm.api.errors import AuthenticationFailed
from flintlm.config import PlatformConfig
from flintlm.platform.keys import ANONYMOUS_KEY_ID, STATIC_KEY_ID
from flintlm.platform.service import Platform


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    platform = Platform.from_config(PlatformConfig(data_dir=str(tmp_path)))
    yield platform
    platform.close()


def _admission(platform: Platform, static_key: str | None = None) -> Admission:
    return Admission(platform, model_name="m", max_model_len=64, static_key=static_key)


async def test_dev_mode_lasts_until_the_first_key_is_issued(platform: Platform) -> None:
    admission = _admission(platform)
    assert (await admission.authenticate(None)).id == ANONYMOUS_KEY_ID
    assert (await admission.authenticate("none")).id == ANONYMOUS_KEY_ID  # what SDKs send
    issued = platform.keys.create("first")
    assert (await admission.authenticate(issued.secret)).id == issued.record.id
    with pytest.raises(AuthenticationFailed, match="Missing API key"):
        await admission.authenticate(None)
    platform.keys.revoke(issued.record.id)  # revoking every key does not reopen the server
    with pytest.raises(AuthenticationFailed, match="Incorrect API key"):
        await admission.authenticate("none")
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await admission.authenticate(issued.secret)


async def test_the_shared_key_and_store_keys_work_side_by_side(platform: Platform) -> None:
    admission = _admission(platform, static_key="shared-secret")
    assert (await admission.authenticate("shared-secret")).id == STATIC_KEY_ID
    issued = platform.keys.create("own")
    assert (await admission.authenticate(issued.secret)).id == issued.record.id
    for wrong in (None, "shared-secreT", "flint-sk-" + "x" * 43):
        with pytest.raises(AuthenticationFailed):
            await admission.authenticate(wrong)


async def test_an_admin_key_alone_turns_dev_mode_off(tmp_path: Path) -> None:
    platform = Platform.from_config(PlatformConfig(data_dir=str(tmp_path), admin_key="adm"))
    try:
        with pytest.raises(AuthenticationFailed):
            await _admission(platform).authenticate(None)
        with pytest.raises(AuthenticationFailed):  # nor is the admin key an API key
            await _admission(platform).authenticate("adm")
    finally:
        platform.close()
