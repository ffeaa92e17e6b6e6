"""A training method as the api and the worker know it, without torch: its name, the file formats it trains on
(each with its line validator), its hyperparameters, the extensions it refuses, whether a gang can train it
(and one whose base is sharded)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ftserve.core.datasets.formats import Example, Format
from ftserve.core.schemas.jobs import Hyperparameters

# Checks one decoded JSON line (a dict) of a format and turns it into an Example, or raises DatasetError.
LineValidator = Callable[[dict[str, Any], int], Example]


@dataclass(frozen=True)
class MethodSpec:
    """One registered method's description; its training side (tokenize, loss, metrics) is in
    ftserve/training/methods, registered under the same name."""

    name: str  # OpenAI's `method.type`, and the job row's `method`
    formats: Mapping[Format, LineValidator]  # the file formats it trains on, each with its line validator
    format_hint: str  # the end of the 400 that refuses a file in another format: what the method trains on
    # Its hyperparameters: their bounds are the model's fields, and each may be "auto" (resolved by the worker
    # once the dataset's size is known, ftserve/training/hyperparams).
    hyperparameters: type[Hyperparameters]
    refused_extensions: Mapping[str, str] = field(default_factory=dict)  # extension → why it would change nothing
    packing: str | None = None  # how it always lays out its rows, whatever FTSERVE_PACKING says (None: the setting)
    runs_on_gang: bool = False  # whether a torchrun gang can split its steps across processes
    # Why a gang whose base is sharded (FTSERVE_GANG_SHARDING=fsdp) cannot, where it cannot (the job then trains
    # in one process, and its warn event says this); None: a sharded gang trains it too.
    unsharded_because: str | None = None
    # Its "auto" rules where they differ from the shared ones (ftserve/training/hyperparams): the
    # learning_rate_multiplier, and the smallest batch_size (the shared rule's ~0.2% of the examples below it).
    auto_learning_rate_multiplier: float = 1.0
    auto_min_batch_size: int = 1
    # The fields of its `method.<name>` block besides hyperparameters that the job keeps (reinforcement: its
    # grader), stored as the job's method_config and handed to training in JobSpec.method_config.
    config_fields: tuple[str, ...] = ()
