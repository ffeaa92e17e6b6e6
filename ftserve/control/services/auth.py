"""API keys: created once and shown once, stored as a sha256 hash, resolved to an organization."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from ftserve.control.db.tables import ApiKey
from ftserve.core.errors import Unauthenticated
from ftserve.core.ids import new_id, now

KEY_PREFIX = "sk-ftserve-"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, org: str, name: str = "") -> str:
    """Create a key for `org` and return it; only its hash is stored."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(id=new_id("key-"), org_id=org, name=name, key_hash=_hash(key), created_at=now()))
    session.commit()
    return key


def keys_exist(session: Session) -> bool:
    return session.scalar(select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)) is not None


def org_for(session: Session, authorization: str | None, default_org: str) -> str:
    """The org a request acts for: from its Bearer key, or the default org when no keys exist."""
    if not keys_exist(session):
        return default_org
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthenticated("Missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
    presented = _hash(authorization[7:].strip())
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == presented, ApiKey.revoked_at.is_(None)))
    # The lookup is by hash (the key itself never reaches the DB); compare_digest keeps the final check
    # constant-time as well.
    if row is None or not hmac.compare_digest(row.key_hash, presented):
        raise Unauthenticated("Incorrect API key provided", code="invalid_api_key")
    return row.org_id
