"""lm-eval's `local-completions` (its default token-id requests) against a real ftserve server scores a local
multiple-choice task exactly as lm-eval's own `hf` backend does on the same model directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.lm_eval_parity import ITEMS, evaluate, local_completions_args, write_task
from ftserve.core.config import Settings
from ftserve.models.bases import base_path
from tests.servers import Service

BASE = "ftserve-tiny"


def test_local_completions_matches_the_hf_backend(embedded: Service, bases_dir: Path, tmp_path: Path) -> None:
    model_dir = base_path(Settings(data_dir=bases_dir, bases_dir=bases_dir), BASE)
    task = write_task(tmp_path / "task")
    served_acc, served = evaluate("local-completions", local_completions_args(embedded.base_url, BASE, model_dir), task)
    hf_acc, hf = evaluate("hf", {"pretrained": str(model_dir), "dtype": "float32", "device": "cpu"}, task)
    assert len(served) == len(hf) == len(ITEMS) and all(len(s) == 4 for s in served)
    for got, want in zip(served, hf, strict=True):
        assert got == pytest.approx(want, abs=1e-3)
    assert served_acc == hf_acc
    # The scores are real: every choice has its own, finite, negative loglikelihood.
    assert all(score < 0 for item in served for score in item) and len({s for item in served for s in item}) > 20
