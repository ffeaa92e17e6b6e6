"""JobSpec's JSON (what a torchrun gang's ranks read instead of the DB) round-trips every method's hyperparameters."""

from __future__ import annotations

from ftserve.core.schemas.jobs import DpoHyperparameters, FtserveExtensions, Hyperparameters
from ftserve.training.ports import AdapterKey, JobSpec


def _spec(method: str, hyperparameters: Hyperparameters) -> JobSpec:
    return JobSpec(
        id="ftjob-x",
        org="org-1",
        model="ft:b:x",
        base="b",
        start_adapter=AdapterKey("ftjob-prev", 40),
        training_file="file-1",
        validation_file=None,
        suffix="s",
        seed=7,
        hyperparameters=hyperparameters,
        extensions=FtserveExtensions(),
        attempt=3,
        method=method,
    )


def test_a_supervised_spec_round_trips() -> None:
    spec = _spec("supervised", Hyperparameters(n_epochs=2, batch_size="auto"))
    assert JobSpec.from_json(spec.to_json()) == spec


def test_a_dpo_spec_keeps_its_own_hyperparameters() -> None:
    spec = _spec("dpo", DpoHyperparameters(beta=0.25, learning_rate_multiplier=0.5))
    back = JobSpec.from_json(spec.to_json())
    assert back == spec
    assert isinstance(back.hyperparameters, DpoHyperparameters) and back.hyperparameters.beta == 0.25
