"""What the inference role's background runners share (the Batch API's and the Evals API's): claim one piece of
work under a lease, take it to its end, leave it to the next runner on shutdown; and, while it runs, drain what
the engine's threads report and record results in groups."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)
# Record finished work in groups: fewer commits, little to redo after a restart.
FLUSH_COUNT, FLUSH_SECONDS = 64, 0.5

Claimed = TypeVar("Claimed")
ClaimedCo = TypeVar("ClaimedCo", covariant=True)
Event = TypeVar("Event")


class Stopping(Exception):
    """This process is shutting down: leave the work (its lease released) for the next runner."""


class LeasedStore(Protocol[ClaimedCo]):
    """The part of a runner's store the loop uses: claim the next piece of work, or give one back."""

    def claim(self) -> ClaimedCo | None: ...

    def release(self, work_id: str) -> None: ...


class LeasedRunner(Generic[Claimed]):
    """Claims one piece of work at a time and runs it (`_run`, the subclass's); `run_forever` is the background
    loop. `lost`: the exception a write raises once the work is no longer this runner's (cancelled, deleted,
    taken over): the runner lets it go."""

    what = "work"  # what the log lines call a piece of work

    def __init__(
        self, store: LeasedStore[Claimed], poll_seconds: float, lost: type[Exception], work_id: str = "id"
    ) -> None:
        self.store = store
        self.poll_seconds = poll_seconds
        self.lost = lost
        self.work_id = work_id
        self.stopping = threading.Event()
        self.idle = threading.Event()
        self.idle.set()

    async def run_forever(self) -> None:
        while not self.stopping.is_set():
            try:
                worked = await asyncio.to_thread(self.run_once)
            except Exception:
                log.exception("%s runner pass failed", self.what)
                worked = False
            if not worked:
                await asyncio.sleep(self.poll_seconds)

    def stop(self, timeout: float = 30.0) -> None:
        """Leave the running work (what is recorded kept, the lease released) before the engine stops."""
        self.stopping.set()
        self.idle.wait(timeout)

    def run_once(self) -> bool:
        """Claim one piece of work and take it to its end; False when there was nothing to claim."""
        if self.stopping.is_set():
            return False
        claimed = self.store.claim()
        if claimed is None:
            return False
        self.idle.clear()
        ident = str(getattr(claimed, self.work_id))
        try:
            self._run(claimed)
        except self.lost:
            log.info("%s %s was cancelled, deleted or taken over by another runner", self.what, ident)
        except Stopping:
            self.store.release(ident)
        finally:
            self.idle.set()
        return True

    def _run(self, claimed: Claimed) -> None:
        raise NotImplementedError


def drain(events: queue.Queue[Event], wait_s: float) -> list[Event]:
    """What the engine's (or graders') threads reported: the first within `wait_s`, then all that is there."""
    try:
        got = [events.get(timeout=wait_s)]
    except queue.Empty:
        return []
    while not events.empty():
        got.append(events.get_nowait())
    return got


def flush_due(waiting: int, flushed: float, renew_s: float) -> bool:
    """Whether to record now: enough results, results waiting too long, or the lease needs renewing."""
    waited = time.monotonic() - flushed
    return waiting >= FLUSH_COUNT or (waiting > 0 and waited > FLUSH_SECONDS) or waited > renew_s
