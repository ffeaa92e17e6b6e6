"""The training methods ftserve knows, by name (torch-free): the api and the worker ask this registry what a
method trains on and allows instead of comparing its name. Adding a method: a module here and a line below,
and its training side in ftserve/training/methods/registry.py."""

from __future__ import annotations

from ftserve.core.methods.base import LineValidator, MethodSpec
from ftserve.core.methods.dpo import DPO
from ftserve.core.methods.reinforcement import REINFORCEMENT
from ftserve.core.methods.supervised import SUPERVISED

METHODS: dict[str, MethodSpec] = {m.name: m for m in (SUPERVISED, DPO, REINFORCEMENT)}
# A job that names no method trains this one (OpenAI's default).
DEFAULT = SUPERVISED.name

__all__ = ["DEFAULT", "METHODS", "LineValidator", "MethodSpec", "find", "get", "names", "on_gang", "taking"]


def get(name: str) -> MethodSpec:
    """The method registered under `name`; KeyError if none is (a job row holds only registered names)."""
    return METHODS[name]


def find(name: str) -> MethodSpec | None:
    """The method registered under `name`, or None (a method the wire schema knows but ftserve does not train)."""
    return METHODS.get(name)


def names() -> tuple[str, ...]:
    """Every registered method's name, in registration order."""
    return tuple(METHODS)


def on_gang(sharded: bool = False) -> tuple[str, ...]:
    """The names of the methods a torchrun gang can train (sharded: one whose base FSDP shards)."""
    return tuple(m.name for m in METHODS.values() if m.runs_on_gang and not (sharded and m.unsharded_because))


def taking(hyperparameter: str) -> MethodSpec:
    """The first method whose hyperparameters include `hyperparameter`; KeyError if none does."""
    for method in METHODS.values():
        if hyperparameter in method.hyperparameters.model_fields:
            return method
    raise KeyError(hyperparameter)
