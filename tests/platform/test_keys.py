"""API keys through KeyStore on SQLite and PostgreSQL: lifecycle, hashing, expiry, scoping."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa

from flintlm.platform.db import Database
from flintlm.platform.keys import (
    ANONYMOUS_KEY_ID,
    SECRET_PREFIX,
    STATIC_KEY_ID,
    KeyLimits,
    KeyStore,
    QuotaPeriod,
    builtin_key,
)
from flintlm.platform.tables import ApiKeyRow, db_time

if TYPE_CHECKING:
    from tests.platform.conftest import FakeClock


def test_key_lifecycle_create_verify_list_revoke(db: Database, clock: FakeClock) -> None:
    keys = KeyStore(db, clock)
    issued = keys.create("ci bot")
    assert issued.secret.startswith(SECRET_PREFIX)
    assert issued.secret not in repr(issued)
    record = keys.verify(issued.secret)
    assert record is not None and record.id == issued.record.id
    assert record.tenant_id == record.id  # the prefix-cache salt defaults to the key itself
    assert issued.secret.startswith(record.prefix) and len(record.prefix) < 20
    assert [key.id for key in keys.list()] == [record.id]

    assert keys.revoke(record.id) is True
    assert keys.revoke(record.id) is False
    assert keys.verify(issued.secret) is None
    revoked = keys.get(record.id)
    assert revoked is not None and revoked.revoked_at == db_time(clock.now)
    assert keys.list(include_revoked=False) == []


def test_expired_key_no_longer_verifies(db: Database, clock: FakeClock) -> None:
    keys = KeyStore(db, clock)
    issued = keys.create("trial", expires_at=db_time(clock.now) + timedelta(minutes=1))
    assert keys.verify(issued.secret) is not None
    clock.advance(60)
    assert keys.verify(issued.secret) is None


def test_secrets_are_never_stored(db: Database, clock: FakeClock) -> None:
    keys = KeyStore(db, clock)
    secrets = [keys.create(f"key {i}").secret for i in range(3)]
    with db.session() as session:
        stored = " ".join(
            str(value) for row in session.execute(sa.select(ApiKeyRow.__table__)) for value in row
        )
    for secret in secrets:
        assert secret not in stored
        assert secret[len(SECRET_PREFIX):][10:] not in stored  # nor its random body


@pytest.mark.parametrize("secret", ["", "sk-nope", SECRET_PREFIX, SECRET_PREFIX + "x" * 43])
def test_unknown_or_malformed_secrets_do_not_verify(db: Database, secret: str) -> None:
    keys = KeyStore(db)
    keys.create("real")
    assert keys.verify(secret) is None


def test_tenant_limits_and_model_scope_round_trip(db: Database) -> None:
    keys = KeyStore(db)
    limits = KeyLimits(rpm=60, tpm=10_000, token_quota=1_000_000, budget_usd=Decimal("12.50"),
                       quota_period=QuotaPeriod.DAY)
    issued = keys.create("team a", tenant_id="team-a", limits=limits,
                         allowed_models=["smollm2-*", "default"])
    record = keys.get(issued.record.id)
    assert record is not None
    assert record.tenant_id == "team-a" and record.limits == limits
    assert record.is_model_allowed("default") and record.is_model_allowed("smollm2-135m")
    assert not record.is_model_allowed("llama-3-8b")

    updated = keys.update_limits(record.id, KeyLimits(rpm=5))
    assert updated is not None and updated.limits == KeyLimits(rpm=5)
    assert keys.update_limits("key_missing", KeyLimits()) is None


def test_unscoped_key_allows_every_model_and_empty_scope_none(db: Database) -> None:
    keys = KeyStore(db)
    assert keys.create("any").record.is_model_allowed("whatever")
    assert not keys.create("none", allowed_models=[]).record.is_model_allowed("default")


@pytest.mark.parametrize("limits", [{"rpm": 0}, {"tpm": -1}, {"budget_usd": Decimal(0)}])
def test_nonsense_limits_are_refused(limits: dict) -> None:
    with pytest.raises(ValueError, match="positive"):
        KeyLimits(**limits)


def test_find_tells_revoked_and_expired_keys_and_has_keys_counts_them(
    db: Database, clock: FakeClock
) -> None:
    keys = KeyStore(db, clock)
    assert not keys.has_keys()
    issued = keys.create("short", expires_at=db_time(clock.now) + timedelta(seconds=5))
    keys.revoke(keys.create("gone").record.id)
    assert keys.has_keys()
    clock.advance(10)
    assert keys.verify(issued.secret) is None
    found = keys.find(issued.secret)
    assert found is not None and found.id == issued.record.id and not found.is_active(keys.now())
    assert keys.find(SECRET_PREFIX + "x" * 43) is None


def test_cache_salts_separate_tenants_and_client_salts_narrow_only(db: Database) -> None:
    keys = KeyStore(db)
    first = keys.create("a").record
    colleague = keys.create("b", tenant_id=first.tenant_id).record
    stranger = keys.create("c").record
    assert first.cache_salt(None) == colleague.cache_salt(None) != stranger.cache_salt(None)
    assert first.cache_salt("x") == colleague.cache_salt("x") != stranger.cache_salt("x")
    salts = {first.cache_salt(s) for s in (None, "", "x", "null")}
    assert len(salts) == 4 and stranger.cache_salt(None) not in salts
    # Nothing a client sends reproduces another tenant's salt, not even its tenant id.
    assert stranger.cache_salt(first.tenant_id) != first.cache_salt(None)


def test_builtin_keys_have_tenants_no_issued_key_can_claim(db: Database) -> None:
    static = builtin_key(STATIC_KEY_ID)
    assert static.id == STATIC_KEY_ID and static.is_model_allowed("any")
    assert builtin_key(ANONYMOUS_KEY_ID).cache_salt(None) != static.cache_salt(None)
    with pytest.raises(ValueError, match="reserved"):
        KeyStore(db).create("impostor", tenant_id=static.tenant_id)
