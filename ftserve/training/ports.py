"""What training needs of the control plane, declared by training: the claimed job (`JobSpec`), the signal that it
is no longer ours (`JobStopped`), and the store every write of a job goes through (`JobStore`, fenced by the
claim). The control plane implements the store (control/services/training_store.TrainingStore); the worker,
training's composition root, hands one in. Torch-free: the api imports this module, and nothing else of training."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from pydantic import TypeAdapter

from ftserve.core import methods
from ftserve.core.job_status import JobStatus
from ftserve.core.schemas.jobs import FtserveExtensions, Hyperparameters


@dataclass(frozen=True)
class AdapterKey:
    """Which stored adapter: a job's final one (step None) or its checkpoint at a step."""

    job_id: str
    step: int | None


@dataclass(frozen=True)
class JobSpec:
    """What training needs of the job row, read once when the job is claimed."""

    id: str
    org: str
    model: str
    base: str
    start_adapter: AdapterKey | None
    training_file: str
    validation_file: str | None
    suffix: str | None
    seed: int
    hyperparameters: Hyperparameters  # the method's own model (DpoHyperparameters for a DPO job)
    extensions: FtserveExtensions
    attempt: int = 1  # this claim's number: the fencing token every write of it carries
    method: str = methods.DEFAULT
    # The method's own configuration as sent (reinforcement: {"grader": {...}}); {} for the others.
    method_config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The spec as JSON, for the processes of a torchrun gang that train it without reading the DB (the
        hyperparameters dumped by their own model, so a method's own ones are kept)."""
        data = json.loads(_SPEC.dump_json(self))
        data["hyperparameters"] = self.hyperparameters.model_dump(mode="json")
        return json.dumps(data)

    @staticmethod
    def from_json(text: str) -> JobSpec:
        """A spec back from to_json, its hyperparameters read by its method's own model (the registry's), so a
        method's own hyperparameters (DPO's beta) come back too."""
        data = json.loads(text)
        own = methods.get(data.get("method", methods.DEFAULT)).hyperparameters
        hyperparameters = own.model_validate_json(json.dumps(data.get("hyperparameters", {})))
        spec = _SPEC.validate_json(json.dumps({**data, "hyperparameters": {}}))
        return replace(spec, hyperparameters=hyperparameters)


_SPEC: TypeAdapter[JobSpec] = TypeAdapter(JobSpec)


class JobStopped(Exception):
    """The job is no longer ours to train: cancelled, paused, deleted, or its lease went to another worker."""

    def __init__(self, status: JobStatus | None, reason: str | None = None, *, pause: bool = False) -> None:
        super().__init__(reason or (status.value if status else "deleted"))
        self.status = status
        self.pause = pause

    @property
    def paused(self) -> bool:
        """Paused (perhaps resumed already) while this worker still holds the lease: save a resume point."""
        return self.pause



class JobStore(Protocol):
    """Every write of a claimed job, each fenced by the claim: one that finds the job no longer ours raises
    JobStopped and lands nothing."""

    def check(self) -> None:
        """Raise JobStopped if the job was cancelled, paused, deleted or its lease lost."""
        ...

    def event(self, message: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None: ...

    def resolved_hyperparameters(
        self, hyperparameters: dict[str, Any], message: str, data: dict[str, Any]
    ) -> None: ...

    def step(self, message: str, data: dict[str, Any], *, estimated_finish: int, trained_tokens: int) -> None: ...

    def pause_point_saved(self, step: int, place: Callable[[], None]) -> bool:
        """Publish a resume point (place) for a paused job; False when the job runs on after all."""
        ...

    def checkpoint(
        self,
        org: str,
        base: str,
        final_name: str,
        step: int,
        metrics: dict[str, Any],
        place: Callable[[], None],
        *,
        found: bool = False,
    ) -> str | None:
        """Publish a checkpoint (place) and register it as a model; its name, or None if it was registered."""
        ...

    def finish(
        self, org: str, base: str, name: str, trained_tokens: int, result_csv: bytes, place: Callable[[], None]
    ) -> None:
        """Publish the final adapter (place), the result file and the model; the job succeeds."""
        ...

    def fail(self, code: str, message: str, param: str | None) -> bool:
        """Fail the job with a stable code; False if it was no longer ours to fail."""
        ...

    def judge_authorization(self) -> str | None:
        """The Authorization header a model grader's judge calls carry for the job's org: a key made for this job
        (revoked by `revoke_judge_authorization`), or None where the server takes no keys."""
        ...

    def revoke_judge_authorization(self) -> None:
        """Revoke the keys judge_authorization made for this job."""
        ...


class ClaimingStore(JobStore, Protocol):
    """A store that also claims its job and keeps the claim's lease alive while training runs."""

    owner: str

    def claim(self) -> JobSpec | None:
        """The job's spec once claimed (queued → running), or None when it is not queued."""
        ...

    def start_heartbeat(self) -> None: ...

    def stop_heartbeat(self) -> None: ...
