"""The vLLM replicas of one base and which one a request goes to: an adapter to the replica that holds it
(else its rendezvous-hash choice, so each adapter settles on one replica), unless that replica carries more
than `slack` rows beyond the least loaded one; the rest follow as failover order."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field


@dataclass
class Replica:
    """One vLLM OpenAI server: its URL, the model name it serves the base under, its load and adapters."""

    url: str
    served_name: str | None = None  # read from its /v1/models on first use
    rows: int = 0  # rows in flight through ftserve
    adapters: set[str] = field(default_factory=set)  # adapter keys loaded there (by ftserve)
    down_until: float = 0.0  # skipped until then after a failure

    def up(self, now: float) -> bool:
        return now >= self.down_until


def rendezvous_score(url: str, key: str) -> int:
    """Highest random weight: stable per (replica, adapter), so adding a replica moves only 1/N adapters."""
    return int.from_bytes(hashlib.sha256(f"{url}\n{key}".encode()).digest()[:8], "big")


def order(replicas: list[Replica], adapter: str | None, slack: int, now: float | None = None) -> list[Replica]:
    """The replicas to try, best first; only those not marked down (empty: none left)."""
    t = time.monotonic() if now is None else now
    up = [r for r in replicas if r.up(t)]
    if not up:
        return []
    least = min(up, key=lambda r: r.rows)
    if adapter is None:
        return sorted(up, key=lambda r: r.rows)
    ranked = sorted(up, key=lambda r: rendezvous_score(r.url, adapter), reverse=True)
    holders = [r for r in ranked if adapter in r.adapters]
    first = min(holders, key=lambda r: r.rows) if holders else ranked[0]
    if first.rows > least.rows + slack:
        first = least
    return [first, *(r for r in ranked if r is not first)]
