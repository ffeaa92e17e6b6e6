"""Gang scaling: examples/s of ftserve's training step on 1 process against a torchrun gang of N (gloo on CPU,
nccl on GPUs), the same examples, batch and LoRA; each rank trains its planner share of every step and the
LoRA gradients are summed (training/rank.py), exactly what a worker with FTSERVE_WORKER_PROCS=N runs.

On CPU the processes share the machine's cores (each gets cores/N threads), so a gang can only win what one
process leaves idle; the figure that matters is on GPUs, one process per device.

    python -m bench.gang_scaling                            # SmolLM2-135M, 1 vs 2 processes
    python -m bench.gang_scaling --model ftserve-tiny --procs 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.common import DEFAULT_DATA, add_lora, load_model, make_dataset, tokenize_all
from ftserve.training.batching import step_groups
from ftserve.training.planner import CostModel, Layout
from ftserve.training.rank import Gang
from ftserve.training.trainer import LoraTrainer


def worker(args: argparse.Namespace) -> None:
    """One rank: train args.steps steps (after one warm-up step) and, on rank 0, print examples/s as JSON."""
    gang = Gang.from_env()
    gang.start(timeout_s=600)
    device = gang.device()
    model, tok = load_model(args.data_dir, args.model, device)
    model = add_lora(model, seed=0)
    examples = tokenize_all(tok, make_dataset(args.batch * (args.steps + 1), seed=1, tok=tok))
    pad = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
    cost = CostModel.for_model(model.get_base_model())
    layout = Layout(cost, pad, 4096, "auto", 1024 if device.type == "cpu" else 4096)
    trainer = LoraTrainer(model, device, lr=2e-4, total_steps=args.steps + 1, gang=gang)
    groups = step_groups(len(examples), args.batch, 0, 0)
    losses = []
    started = 0.0
    for i, group in enumerate(groups):
        if i == 1:  # the first step warms kernels and allocators up
            if device.type == "cuda":
                torch.cuda.synchronize()
            gang.sums([0.0])  # a barrier
            started = time.perf_counter()
        batches = layout.plan_share([examples[j] for j in group], gang.rank, gang.size)
        losses.append(trainer.step(batches).loss)
    if device.type == "cuda":
        torch.cuda.synchronize()
    gang.sums([0.0])
    seconds = time.perf_counter() - started
    if gang.main:
        steps = len(groups) - 1
        print(json.dumps({"procs": gang.size, "examples_per_s": steps * args.batch / seconds, "losses": losses}))
    gang.stop()


def run(procs: int, args: argparse.Namespace) -> dict[str, object]:
    cores = os.cpu_count() or 1
    threads = args.threads or max(1, cores // procs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
        "-m", "bench.gang_scaling", "--worker", "--model", args.model, "--steps", str(args.steps),
        "--batch", str(args.batch), "--data-dir", str(args.data_dir),
    ]  # fmt: skip
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return {**json.loads(next(line for line in out.splitlines() if line.startswith("{"))), "threads": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per process (default: cores / procs)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    device = "cuda" if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    results = [run(p, args) for p in args.procs]
    base = float(results[0]["examples_per_s"])  # type: ignore[arg-type]
    print(f"{args.model}, batch {args.batch}, {args.steps} timed steps, {device}")
    print("| processes | threads each | examples/s | vs first row | first losses |")
    print("|---|---|---|---|---|")
    for r in results:
        eps = float(r["examples_per_s"])  # type: ignore[arg-type]
        losses = ", ".join(f"{x:.4f}" for x in r["losses"][:3])  # type: ignore[index]
        print(f"| {r['procs']} | {r['threads']} | {eps:.2f} | {eps / base:.2f}x | {losses} |")


if __name__ == "__main__":
    main()
