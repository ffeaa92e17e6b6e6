"""The training-method registry: outside its own modules no code compares a method's name (issue 24's grep),
the api's registry (ftserve/core/methods) and the worker's (ftserve/training/methods/registry.py) list the same
methods, and each describes its file formats, their line validators and its hyperparameters."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import pytest

from ftserve.core import methods
from ftserve.core.datasets.formats import Format, detect_format
from ftserve.core.schemas.jobs import FtserveExtensions, Hyperparameters, Method
from ftserve.training.methods.registry import TRAINING

ROOT = Path(__file__).resolve().parents[2]
# Issue 24's must-show, `grep -rnE PATTERN ftserve`, as a Python pattern over the same files.
NAME_COMPARISON = re.compile(r"""== ?["'](supervised|dpo|reinforcement)["']|["'](supervised|dpo)["'] ?==""")
REGISTRY_MODULES = (
    "ftserve/core/methods/",
    "ftserve/training/methods/base.py",
    "ftserve/training/methods/registry.py",
    "ftserve/training/methods/supervised.py",
    "ftserve/training/methods/dpo.py",
)
# One valid line of each format, for the method that trains on it.
SAMPLES: dict[str, dict[str, Any]] = {
    "prompt_completion": {"prompt": "2+2=", "completion": "4"},
    "chat": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    "preference": {
        "input": {"messages": [{"role": "user", "content": "Hi"}]},
        "preferred_output": [{"role": "assistant", "content": "Hello!"}],
        "non_preferred_output": [{"role": "assistant", "content": "What do you want."}],
    },
    "prompts": {"messages": [{"role": "user", "content": "What is 2+2?"}], "answer": "4"},
}


def _name_comparisons() -> list[str]:
    """Every line under ftserve/ (any file, as grep reads it) that compares a method's name, as path:line: text."""
    found = []
    for path in sorted((ROOT / "ftserve").rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if NAME_COMPARISON.search(line):
                found.append(f"{path.relative_to(ROOT).as_posix()}:{number}: {line.strip()}")
    return found


def test_the_grep_catches_a_name_comparison() -> None:
    assert NAME_COMPARISON.search('if spec.method == "dpo":') and NAME_COMPARISON.search("'supervised'== m")
    assert not NAME_COMPARISON.search('method = methods.get("dpo")')


def test_only_the_registry_compares_method_names() -> None:
    outside = [hit for hit in _name_comparisons() if not hit.startswith(REGISTRY_MODULES)]
    assert outside == []


def test_both_registries_list_the_same_methods() -> None:
    assert list(TRAINING) == list(methods.names())
    for name, training in TRAINING.items():
        assert training.method is methods.get(name)
    assert methods.DEFAULT in methods.METHODS


@pytest.mark.parametrize("name", methods.names())
def test_a_method_describes_its_formats_validators_and_hyperparameters(name: str) -> None:
    method = methods.get(name)
    assert method.formats and method.format_hint
    for fmt, validator in method.formats.items():
        assert fmt in typing.get_args(Format)
        sample = SAMPLES[fmt]
        assert detect_format(sample) == fmt
        assert validator(sample, 1) is not None
    assert issubclass(method.hyperparameters, Hyperparameters)
    # Every hyperparameter takes "auto" but reinforcement's reasoning_effort, whose values are OpenAI's levels.
    every_auto = {field: "auto" for field in method.hyperparameters.model_fields if field != "reasoning_effort"}
    assert method.hyperparameters.model_validate(every_auto).model_dump(include=set(every_auto)) == every_auto
    assert set(method.refused_extensions) <= set(FtserveExtensions.model_fields)
    # The wire schema has a block per method (OpenAI's `method.<type>`), where its hyperparameters go.
    assert name in Method.model_fields


def test_each_format_is_trained_by_one_method() -> None:
    formats = [fmt for m in methods.METHODS.values() for fmt in m.formats]
    assert sorted(formats) == sorted(set(formats))


def test_registry_lookups() -> None:
    assert methods.find("continued_pretraining") is None
    assert methods.find("reinforcement") is methods.get("reinforcement")
    assert methods.taking("beta") is methods.get("dpo")
    assert methods.on_gang() == ("supervised", "reinforcement")
    assert methods.on_gang(sharded=True) == ("supervised",)  # its rollouts need the whole base on a rank
    with pytest.raises(KeyError):
        methods.get("continued_pretraining")
