"""Serving's ModelCatalog port on the DB: the caller's org (auth) and the org's model names (catalog), each in
a session of its own that closes before generation starts; an unreachable DB is the domain's Unavailable."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.orm import Session

from ftserve.control.db.session import in_session
from ftserve.control.services import catalog
from ftserve.control.services.auth import org_for
from ftserve.core.config import Settings
from ftserve.core.resolved import ResolvedModel
from ftserve.serving.ports import AdapterId

T = TypeVar("T")


class SqlModelCatalog:
    """Implements serving.ports.ModelCatalog."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def org_for(self, authorization: str | None) -> str:
        return self._read(lambda s: org_for(s, authorization, self.settings.default_org))

    def resolve(self, org: str, model: str) -> ResolvedModel:
        return self._read(lambda s: catalog.resolve(s, self.settings, org, model))

    def servable_adapters(self, adapters: set[AdapterId]) -> set[AdapterId]:
        return self._read(lambda s: catalog.servable_adapters(s, adapters))

    def _read(self, read: Callable[[Session], T]) -> T:
        return in_session(self.settings, read)
