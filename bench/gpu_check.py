"""The GPU check (issue 29): ftserve's CUDA path run once on a lent GPU machine, prepared and dry-run on the CPU.

    python bench/gpu_check.py --out $OUT          # one NVIDIA GPU (H100/H200 class): under 8 minutes
    python bench/gpu_check.py --cpu --out DIR     # the dry mode: the same steps on the CPU at tiny sizes (CI)

Each step runs in its own processes under its own time budget (a step past it is killed and reported so):
  tests      pytest -m gpu tests/gpu: a bf16 LoRA step and a resumed one, the engine's multi-adapter batch against
             PEFT's merged greedy output, a json_schema row in that batch, a gang of one process and the gang's
             collectives on nccl (gloo dry)
  train-*    bench/train_throughput.py, the four recipes (naive, HF Trainer, TRL, ftserve), on SmolLM2-135M and on
             a ~1B random-weight Llama (dry: ftserve-tiny without the HF Trainer arm, a tiny random Llama with
             ftserve's arm only): tokens/s, model FLOP/s and MFU against the card's bf16 peak (bench/mfu.py)
  inference  bench/inference_throughput.py, the server's modes (c) and (d), with 1, 8 and 32 adapters on
             SmolLM2 (dry: 1 and 2 on ftserve-tiny): tokens/s, p50/p99 latency, LoRA overhead, MFU
then writes gpu_check.json (every figure, the card's name, the versions) and gpu_check.md into --out, with each
step's log under --out/logs. The exit status is 0 when every step finished and no test failed.

It needs only the GPU image's torch, transformers and peft plus ftserve's other dependencies (pytest, and TRL
and datasets for the TRL and HF Trainer arms, which are left out when missing): nothing is downloaded.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# On the GPU the whole run must stay under 8 minutes (480 s). Measured-by-design budgets (the check has not run on
# a GPU yet; each is a ceiling, past which the step is killed): the tests start 3 processes (pytest, torchrun, a
# rank) and train two tiny adapters on the CPU; each training model spawns 5 processes (the parent and one per
# recipe), each loading the model (SmolLM2's first preparation de-quantizes its GGUF, ~20 s; the 1B base is built
# on the GPU and written, 2 GB) and training 10 steps of 8 examples; inference makes 32 adapters, starts a server
# and sends bursts of 64 requests for at least 3 s per mode and adapter count. 110 + 100 + 150 + 100 = 460 s.
GPU_BUDGETS = {"tests": 110, "train-smollm2": 100, "train-1b": 150, "inference": 100}
TOTAL_S = 480
# The dry mode's budgets only stop a hung step: a loaded 2-core CI machine takes about 30-60 s a step.
DRY_BUDGETS = {"tests": 300, "train-smollm2": 240, "train-1b": 180, "inference": 180}


@dataclass(frozen=True)
class TrainRun:
    """One bench/train_throughput.py run: the step it is, its base, and its sizes."""

    step: str
    model: str
    methods: str
    steps: int
    batch: int
    examples: int
    random_shape: str | None = None  # a random-weight Llama built for it (bench/random_base.py)


@dataclass(frozen=True)
class Plan:
    """What one mode runs."""

    dry: bool
    budgets: dict[str, int]
    train: list[TrainRun]
    inference_base: str
    inference_args: list[str] = field(default_factory=list)


def plan(dry: bool) -> Plan:
    """The GPU run, or its dry mode on the CPU: the same steps at tiny sizes."""
    if dry:
        return Plan(
            True,
            DRY_BUDGETS,
            [
                TrainRun("train-smollm2", "ftserve-tiny", "acd", 2, 4, 24),
                TrainRun("train-1b", "random-llama-tiny", "d", 2, 4, 24, "tiny"),
            ],
            "ftserve-tiny",
            ["--adapters", "1", "2", "--requests", "8", "--tokens", "8", "--min-seconds", "0.5"],
        )
    return Plan(
        False,
        GPU_BUDGETS,
        [
            TrainRun("train-smollm2", "smollm2-135m-instruct", "abcd", 10, 8, 128),
            TrainRun("train-1b", "random-llama-1b", "abcd", 10, 8, 128, "1b"),
        ],
        "smollm2-135m-instruct",
        ["--adapters", "1", "8", "32", "--requests", "64", "--tokens", "32", "--min-seconds", "3"],
    )


def available(methods: str) -> tuple[str, list[str]]:
    """The recipes this environment can run (HF Trainer's need datasets, TRL's trl too), and notes on the rest."""
    has = {name: importlib.util.find_spec(name) is not None for name in ("datasets", "trl")}
    needs = {"a": ["datasets"], "b": ["datasets"], "c": ["datasets", "trl"], "d": []}
    kept = "".join(m for m in methods if all(has[n] for n in needs[m]))
    notes = [
        f"({m}) left out: {', '.join(n for n in needs[m] if not has[n])} not installed"
        for m in methods
        if m not in kept
    ]
    return kept, notes


def child_env(dry: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The steps' environment: no FTSERVE_* or pytest-xdist variables of the caller; the dry mode hides CUDA."""
    drop = ("FTSERVE_", "PYTEST_XDIST_", "PYTEST_CURRENT_TEST")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["FTSERVE_GPU_CHECK_DEVICE"] = "cpu" if dry else "cuda"
    if dry:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env | (extra or {})


def run(cmd: list[str], env: dict[str, str], timeout: float, log: Path) -> tuple[int | None, float]:
    """Run cmd in its own process group, output to log; its exit code (None: killed at the timeout), seconds."""
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the step and every process it started (servers, recipes)
            proc.wait()
            rc = None
    return rc, time.monotonic() - started


class Check:
    """One run of the check: the plan, the clock, the folders, and the report as it fills."""

    def __init__(self, plan: Plan, out: Path, work: Path) -> None:
        self.plan, self.out, self.work = plan, out, work
        self.started = time.monotonic()
        (out / "logs").mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        self.report: dict[str, Any] = {"mode": "cpu-dry" if plan.dry else "gpu", "steps": {}, "tests": {}}
        self.report |= {"train": [], "inference": {}, "notes": []}

    def budget(self, step: str) -> float:
        """The step's budget, cut to what the whole run has left (on the GPU)."""
        if self.plan.dry:
            return self.plan.budgets[step]
        return min(self.plan.budgets[step], TOTAL_S - (time.monotonic() - self.started) - 5)

    def step(self, name: str, cmd: list[str], budget: float, env: dict[str, str] | None = None) -> bool:
        """Run one step's command, record how it went; True when it exited 0."""
        rc, seconds = run(cmd, env or child_env(self.plan.dry), budget, self.out / "logs" / f"{name}.log")
        status = "timeout" if rc is None else "ok" if rc == 0 else f"exit {rc}"
        prior = self.report["steps"].get(name, {}).get("seconds", 0.0)
        self.report["steps"][name] = {"status": status, "seconds": prior + seconds, "budget_s": self.plan.budgets[name]}
        print(f"[gpu_check] {name}: {status} in {seconds:.0f} s", file=sys.stderr, flush=True)
        return rc == 0

    def tests(self) -> None:
        xml = self.work / "gpu_tests.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-m", "gpu", "tests/gpu", "-p", "no:cacheprovider"]
        cmd += [f"--basetemp={self.work / 'pytest'}", f"--junitxml={xml}"]
        self.step("tests", cmd, self.budget("tests"))
        self.report["tests"] = junit(xml)
        if self.report["tests"]["failed"] or self.report["tests"]["errors"]:
            self.report["steps"]["tests"]["status"] = "failed"

    def train(self, job: TrainRun) -> None:
        from bench.random_base import registry_entry

        started, limit, extra = time.monotonic(), self.budget(job.step), {}
        if job.random_shape is not None:
            path = self._random_base(job.random_shape)
            registry = {k: v.model_dump() for k, v in self._settings().base_models.items()}
            extra["FTSERVE_BASE_MODELS"] = json.dumps(registry | {job.model: registry_entry(path)})
        methods, notes = available(job.methods)
        self.report["notes"] += [f"{job.model}: {n}" for n in notes]
        figures = self.work / f"{job.step}.json"
        cmd = [sys.executable, "-m", "bench.train_throughput", "--model", job.model, "--data-dir", str(self.work)]
        cmd += ["--steps", str(job.steps), "--batch", str(job.batch), "--examples", str(job.examples)]
        cmd += ["--methods", methods, "--json-out", str(figures)]
        if self.plan.dry:  # the CPU's GEMM peak is issue 30's figure, not the GPU check's: the dry run skips it
            cmd.append("--no-gemm")
        budget = limit - (time.monotonic() - started)  # building the random base counts against the step
        self.report["steps"][job.step] = {"seconds": time.monotonic() - started}
        if self.step(job.step, cmd, budget, child_env(self.plan.dry, extra)) and figures.exists():
            self.report["train"].append(json.loads(figures.read_text()))

    def inference(self) -> None:
        from bench.mfu import matmul_params_of, mfu, model_flops
        from ftserve.models.bases import prepare_base

        figures = self.work / "inference.json"
        base = self.plan.inference_base
        cmd = [sys.executable, "bench/inference_throughput.py", "--bases", base, "--modes", "cd"]
        cmd += ["--bases-dir", str(self.work / "bases"), "--json-out", str(figures), *self.plan.inference_args]
        if not self.step("inference", cmd, self.budget("inference")) or not figures.exists():
            return
        params = matmul_params_of(prepare_base(self._settings(), base))
        result = json.loads(figures.read_text())
        for r in result["runs"]:
            for mode in r["modes"].values():
                mode["model_flops_per_s"] = model_flops(params, mode["tokens_per_s"], training=False)
                mode["mfu"] = None if self.plan.dry else mfu(mode["model_flops_per_s"], self.report["device"]["name"])
        self.report["inference"] = {"base": base, "matmul_params": params, **result}

    def _settings(self) -> Any:
        from ftserve.core.config import Settings

        return Settings(data_dir=self.work, bases_dir=self.work / "bases")

    def _random_base(self, shape: str) -> Path:
        """The random-weight Llama, with SmolLM2's tokenizer on the GPU (ftserve-tiny's dry), built on the device."""
        import torch

        from bench.random_base import build_random_base
        from ftserve.models.bases import prepare_base

        source = prepare_base(self._settings(), "ftserve-tiny" if self.plan.dry else "smollm2-135m-instruct")
        device = torch.device("cpu" if self.plan.dry else "cuda")
        return build_random_base(self.work / f"random-llama-{shape}", source, shape, device)

    def finish(self) -> int:
        """Write gpu_check.json and gpu_check.md; 0 when every step finished and no test failed."""
        from bench.gpu_report import markdown

        self.report["seconds"] = time.monotonic() - self.started
        (self.out / "gpu_check.json").write_text(json.dumps(self.report, indent=1))
        (self.out / "gpu_check.md").write_text(markdown(self.report))
        return 0 if all(s["status"] == "ok" for s in self.report["steps"].values()) else 1


def junit(path: Path) -> dict[str, Any]:
    """pytest's JUnit XML as counts and one entry per test (name, outcome, seconds, the failure's first line)."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    cases = []
    if path.exists():
        for case in ET.parse(path).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for child, kind in (("failure", "failed"), ("error", "errors"), ("skipped", "skipped")):
                found = case.find(child)
                if found is not None:
                    outcome, message = kind, (found.get("message") or "").partition("\n")[0]
                    break
            counts[outcome] += 1
            name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
            cases.append(
                {"name": name, "outcome": outcome, "seconds": float(case.get("time") or 0), "message": message}
            )
    return counts | {"cases": cases}


def describe_device(dry: bool) -> dict[str, Any]:
    """The device the check ran on, with the versions that matter."""
    import torch

    from bench.mfu import bf16_peak, device_name

    device = torch.device("cpu" if dry else "cuda")
    name = device_name(device)
    versions = {p: importlib.metadata.version(p) for p in ("transformers", "peft")}
    peak = None if dry else bf16_peak(name)
    return {"type": device.type, "name": name, "torch": torch.__version__, "cuda": torch.version.cuda, **versions,
            "bf16_peak_flops": peak}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="the dry mode: every step on the CPU at tiny sizes")
    ap.add_argument("--out", type=Path, default=os.environ.get("OUT"), help="where the report goes (default: $OUT)")
    ap.add_argument("--work", type=Path, help="where bases and intermediate files go (default: a temporary folder)")
    args = ap.parse_args()
    if args.out is None:
        ap.error("--out (or $OUT) is required")
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: this process must not see a GPU either
    import torch

    if not args.cpu and not torch.cuda.is_available():
        ap.error("torch sees no CUDA device: run the dry mode with --cpu")
    with TemporaryDirectory(prefix="ftserve-gpu-check-") as tmp:
        work = (args.work or Path(tmp)).resolve()
        check = Check(plan(args.cpu), args.out.resolve(), work)
        check.report["device"] = describe_device(args.cpu)
        check.tests()
        for job in check.plan.train:
            check.train(job)
        check.inference()
        return check.finish()


if __name__ == "__main__":
    sys.exit(main())
