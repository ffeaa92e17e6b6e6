"""The training side of every registered method, by name; the pipeline looks a job's method up here instead of
comparing its name. Each is registered under its description's name (ftserve/core/methods, the same names)."""

from __future__ import annotations

from ftserve.training.methods.base import MethodTraining
from ftserve.training.methods.dpo import DpoTraining
from ftserve.training.methods.reinforcement import ReinforcementTraining
from ftserve.training.methods.supervised import SupervisedTraining

TRAINING: dict[str, MethodTraining] = {
    t.method.name: t for t in (SupervisedTraining(), DpoTraining(), ReinforcementTraining())
}


def training_for(name: str) -> MethodTraining:
    """The training side of the method registered under `name`; KeyError if none is."""
    return TRAINING[name]
