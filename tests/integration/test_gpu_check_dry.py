"""bench/gpu_check.py's dry mode, as CI runs it so the GPU check cannot rot between GPU loans: every step runs on
the CPU at tiny sizes and the report has every section, with numbers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _number(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_the_dry_mode_runs_every_step_and_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "bench/gpu_check.py", "--cpu", "--out", str(out), "--work", str(tmp_path / "work")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    logs = {p.name: p.read_text()[-2000:] for p in (out / "logs").glob("*.log")} if out.exists() else {}
    assert done.returncode == 0, (done.stderr[-3000:], logs)

    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "cpu-dry"
    assert report["device"]["type"] == "cpu" and report["device"]["name"] and report["device"]["torch"]
    assert set(report["steps"]) == {"tests", "train-smollm2", "train-1b", "inference"}
    assert all(s["status"] == "ok" and _number(s["seconds"]) for s in report["steps"].values()), report["steps"]

    tests = report["tests"]
    assert tests["failed"] == tests["errors"] == 0 and tests["passed"] >= 4, tests
    assert {c["name"].split("::")[0] for c in tests["cases"]} == {"test_training", "test_engine", "test_gang"}

    assert [t["model"] for t in report["train"]] == ["ftserve-tiny", "random-llama-tiny"]
    for run in report["train"]:
        assert run["methods"] and "d" in run["methods"]
        for figures in run["methods"].values():
            for key in ("target_tokens_per_s", "tokens_per_s", "model_flops_per_s", "matmul_params", "peak_mb"):
                assert _number(figures[key]), (run["model"], key, figures[key])
            assert figures["mfu"] is None  # no bf16 peak on a CPU: GFLOP/s only

    inference = report["inference"]
    assert [r["adapters"] for r in inference["runs"]] == [1, 2]
    for run in inference["runs"]:
        assert set(run["modes"]) == {"c", "d"} and _number(run["lora_overhead"])
        for mode in run["modes"].values():
            for key in ("tokens_per_s", "p50_s", "p99_s", "model_flops_per_s"):
                assert _number(mode[key]), (key, mode)

    markdown = (out / "gpu_check.md").read_text()
    for heading in ("# GPU check (cpu-dry)", "## Tests", "## Training throughput", "## Inference throughput"):
        assert heading in markdown
