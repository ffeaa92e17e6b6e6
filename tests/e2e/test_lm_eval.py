"""lm-eval's `local-completions` (its default token-id requests) against a real ftserve server scores a local
multiple-choice task exactly as lm-eval's own `hf` backend does on the same model directory; the command
docs/api.md gives runs as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.lm_eval_parity import ITEMS, TASK, evaluate, local_completions_args, write_task
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


def _documented_command() -> str:
    """The shell command in docs/api.md's "lm-eval" section (its first bash block), as written."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    section = doc.split("### lm-eval", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block is not None, "docs/api.md's lm-eval section has a bash block"
    return block.group(1).strip()


def test_the_documented_command_runs(embedded: Service, bases_dir: Path, tmp_path: Path) -> None:
    model_dir = base_path(Settings(data_dir=bases_dir, bases_dir=bases_dir), BASE)
    command = _documented_command()
    # The placeholders the doc explains, each replaced by this test's own: task, server, tokenizer, model.
    for placeholder, value in [
        ("--tasks TASK", f"--tasks {TASK}"),
        ("http://127.0.0.1:8000", embedded.base_url),
        ("DATA/bases/smollm2-135m-instruct", str(model_dir)),
        ("model=smollm2-135m-instruct", f"model={BASE}"),
    ]:
        assert placeholder in command, placeholder
        command = command.replace(placeholder, value)
    task, out = write_task(tmp_path / "task"), tmp_path / "out"
    command += f" --include_path {task} --limit 4 --output_path {out}"  # the test's own task, kept small
    bin_dir = str(Path(sys.executable).parent)  # the venv's lm_eval
    env = os.environ | {"PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1"}
    env["HF_DATASETS_OFFLINE"] = "1"
    done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [results] = out.rglob("results_*.json")
    got = json.loads(results.read_text())
    assert got["config"]["batch_size"] in (4, "4") and got["n-samples"][TASK]["effective"] == 4
    assert 0.0 <= got["results"][TASK]["acc,none"] <= 1.0
