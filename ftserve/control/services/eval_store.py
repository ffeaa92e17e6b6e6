"""The eval runner's door to the DB (serving's EvalStore port, on core's eval records): claim a run under a lease,
renew it, record graded items with the run's counts in one transaction (an item's row is keyed by (run, item), so
it is recorded once whatever restarts), finish or fail the run. Every write is fenced by the lease and the run's
status: a run canceled or deleted by the api, or taken over by another runner, raises EvalRunLost."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import or_, select, update

from ftserve.control.db.session import session_scope
from ftserve.control.db.tables import ApiKey, Eval, EvalOutputItem, EvalRun
from ftserve.control.services import auth
from ftserve.core.config import Settings
from ftserve.core.evals.records import ClaimedEvalRun, EvalRunLost, GradedItem, tally
from ftserve.core.ids import new_id, now

ACTIVE = ("queued", "in_progress")


def _judge_key_name(run_id: str) -> str:
    return f"judge for {run_id}"


class SqlEvalStore:
    """Implements serving.ports.EvalStore: the runs one runner claims; every write checks the lease is its own."""

    def __init__(self, settings: Settings, owner: str) -> None:
        self.settings = settings
        self.owner = owner

    def _mine(self, run_id: str) -> Any:
        return (EvalRun.id == run_id) & (EvalRun.lease_owner == self.owner) & (EvalRun.status == "in_progress")

    def _lease(self) -> float:
        return time.time() + self.settings.eval_lease_seconds

    def claim(self) -> ClaimedEvalRun | None:
        """The oldest queued or running run whose lease is free or expired, now leased to this runner (and
        in_progress); None if there is none."""
        t = time.time()
        free = or_(EvalRun.lease_owner.is_(None), EvalRun.lease_expires_at < t)
        with session_scope(self.settings) as s:
            candidates = s.execute(
                select(EvalRun, Eval)
                .join(Eval, Eval.id == EvalRun.eval_id)
                .where(EvalRun.status.in_(ACTIVE), free)
                .order_by(EvalRun.created_at)
                .limit(8)
            ).all()
            for run, ev in candidates:
                won = s.execute(
                    update(EvalRun)
                    .where(EvalRun.id == run.id, EvalRun.status == run.status, free)
                    .values(
                        status="in_progress",
                        started_at=run.started_at or now(),
                        lease_owner=self.owner,
                        lease_expires_at=self._lease(),
                    )
                )
                if won.rowcount == 1:  # type: ignore[attr-defined]
                    return ClaimedEvalRun(
                        id=run.id,
                        eval_id=run.eval_id,
                        org=run.org_id,
                        status=run.status,
                        data_source=run.data_source,
                        item_schema=ev.data_source_config["item_schema"],
                        testing_criteria=ev.testing_criteria,
                    )
        return None

    def start(self, run_id: str, item_count: int) -> None:
        """The run's item count, once its data source is read."""
        self._update(run_id, item_count=item_count, lease_expires_at=self._lease())

    def renew(self, run_id: str) -> None:
        self._update(run_id, lease_expires_at=self._lease())

    def release(self, run_id: str) -> None:
        """Give the lease up (this process is stopping), so the next runner takes over at once."""
        with session_scope(self.settings) as s:
            s.execute(update(EvalRun).where(self._mine(run_id)).values(lease_owner=None, lease_expires_at=None))

    def graded_items(self, run_id: str) -> set[int]:
        with session_scope(self.settings) as s:
            return set(s.scalars(select(EvalOutputItem.datasource_item_id).where(EvalOutputItem.run_id == run_id)))

    def record(self, run_id: str, items: Iterable[GradedItem]) -> None:
        """The graded items, the run's counts and a renewed lease, in one transaction."""
        items = list(items)
        by_status = {k: sum(i.status == k for i in items) for k in ("pass", "fail", "error")}
        with session_scope(self.settings) as s:
            # The fenced update first: it takes the row's write lock, so the counts read next are current.
            done = s.execute(
                update(EvalRun)
                .where(self._mine(run_id))
                .values(
                    passed=EvalRun.passed + by_status["pass"],
                    failed=EvalRun.failed + by_status["fail"],
                    errored=EvalRun.errored + by_status["error"],
                    lease_expires_at=self._lease(),
                )
            )
            if done.rowcount != 1:  # type: ignore[attr-defined]
                raise EvalRunLost(run_id)
            per_criteria, per_model = s.execute(
                select(EvalRun.per_criteria, EvalRun.per_model_usage).where(EvalRun.id == run_id)
            ).one()
            criteria, usage = tally(per_criteria, per_model, items)
            s.execute(update(EvalRun).where(EvalRun.id == run_id).values(per_criteria=criteria, per_model_usage=usage))
            created = now()
            s.add_all(
                EvalOutputItem(
                    run_id=run_id,
                    datasource_item_id=i.index,
                    id=new_id("outputitem_"),
                    status=i.status,
                    record={"datasource_item": i.datasource_item, "results": i.results, "sample": i.sample},
                    created_at=created,
                )
                for i in items
            )

    def finish(self, run_id: str) -> None:
        """in_progress → completed."""
        self._update(run_id, status="completed", finished_at=now(), lease_owner=None, lease_expires_at=None)

    def fail(self, run_id: str, code: str, message: str) -> None:
        """in_progress → failed with the reason (its data source cannot be read)."""
        error = {"code": code, "message": message}
        self._update(run_id, status="failed", error=error, finished_at=now(), lease_owner=None, lease_expires_at=None)

    def judge_authorization(self, run_id: str) -> str | None:
        """A key for the run's org, named for the run, when the server takes keys: its model graders' judge calls
        go through the serving path as the org, so tenancy holds."""
        with session_scope(self.settings) as s:
            if not auth.keys_exist(s):
                return None
            org = s.scalar(select(EvalRun.org_id).where(EvalRun.id == run_id))
            return None if org is None else "Bearer " + auth.create_key(s, org, name=_judge_key_name(run_id))

    def revoke_judge_authorization(self, run_id: str) -> None:
        with session_scope(self.settings) as s:
            s.execute(
                update(ApiKey)
                .where(ApiKey.name == _judge_key_name(run_id), ApiKey.revoked_at.is_(None))
                .values(revoked_at=now())
            )

    def _update(self, run_id: str, **values: Any) -> None:
        with session_scope(self.settings) as s:
            done = s.execute(update(EvalRun).where(self._mine(run_id)).values(**values))
            if done.rowcount != 1:  # type: ignore[attr-defined]
                raise EvalRunLost(run_id)
