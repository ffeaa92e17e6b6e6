"""A reinforcement job's grader, checked at creation: the grader itself (a 400 naming its field), what the
bases cannot honour (reasoning_effort), and every line of its files against the `item.*` fields the grader's
templates read, so a line without one is refused now, by number, not scored 0 for a whole run."""

from __future__ import annotations

from typing import Any

from ftserve import graders
from ftserve.core.config import Settings
from ftserve.core.datasets.jsonl import json_lines
from ftserve.core.errors import bad_request
from ftserve.core.schemas.jobs import ReinforcementHyperparameters
from ftserve.core.storage import Storage
from ftserve.graders.references import item_references, missing

PARAM = "method.reinforcement"


def check_reinforcement(
    settings: Settings, grader: Any, hyperparameters: ReinforcementHyperparameters, files: dict[str, str]
) -> None:
    """InvalidRequest naming the field (and the file's line) that a reinforcement job cannot run with.
    `files`: file id → the job's parameter that names it (training_file, validation_file)."""
    effort = hyperparameters.reasoning_effort
    if effort not in (None, "default"):
        raise bad_request(
            f"reasoning_effort '{effort}' cannot be honoured: the bases ftserve trains have no reasoning mode; "
            "use 'default' or leave it out",
            param=f"{PARAM}.hyperparameters.reasoning_effort",
            code="unsupported_reasoning_effort",
        )
    limits = graders.limits_for(settings.python_grader_timeout_seconds, settings.python_grader_memory_bytes)
    graders.check(grader, f"{PARAM}.grader", limits)
    references = item_references(grader, f"{PARAM}.grader")
    if not references:
        return
    storage = Storage(settings)
    for file_id, param in files.items():
        for line, obj in json_lines(storage.local_file(file_id), settings.max_line_bytes):
            for where, path in references:
                if isinstance(obj, dict) and missing(obj, path):
                    raise bad_request(
                        f"Line {line} of {param} {file_id} has no {path.removeprefix('item.')!r}, which the "
                        f"grader reads at {where} ({{{{{path}}}}}): add it to every line, or change the grader",
                        param=where,
                        code="invalid_grader_reference",
                    )
