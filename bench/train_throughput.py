"""Training throughput: the same LoRA on the same generated data, several ways, each in its own process.

(a)   the naive tutorial: padding="max_length", max_length=1024, labels = input_ids
(b)   HF Trainer with dynamic padding and a -100 prompt mask
(c)   TRL SFTTrainer defaults (completion_only_loss on prompt/completion data; bf16 autocast, as TRL's
      defaults pick it, also on a CPU without bf16 kernels)
(c32) the same in fp32 (bf16=False, the model in fp32): TRL's defaults as they run where bf16 is not fast
      (the default in place of (c) where the model trains in fp32: there (c)'s bf16 autocast runs hundreds of
      times slower; `--methods abcc32d --cap-steps c=1` puts it on record from one step)
(d)   ftserve's LoraTrainer as the worker runs it: weighted loss, logits only where loss is taken, per-step
      padded/packed layout, packed rows attended per sequence (models/attention), fused LoRA linears

Every method trains the same examples for the same number of optimizer steps (`--batch` examples each); the
table reports target (completion + EOS) tokens per second, the padding fraction, peak memory and the held-out
completion loss afterwards, with ratios to (a) and (c) (to (c32) when (c) is not run).

    python -m bench.train_throughput                       # SmolLM2-135M, 4 steps x 8 per method, a few minutes
    python -m bench.train_throughput --model ftserve-tiny  # seconds
    # issue 30's workload: 96 examples of 20-600 tokens, batch 4, two threads
    python -m bench.train_throughput --steps 24 --batch 4 --threads 2 --methods a,c32,d

Compute. Before the methods, a child process times the step's GEMM shapes alone in the same thread setting
(bench/gemm_peak.py: every projection's forward and input-gradient GEMM at 512-4096 rows, the LM head's,
in fp32 and bf16); a dtype's **measured peak** is the best rate any of those shapes sustains over a 0.1 s
window. After the table, each method's arithmetic as FLOP/s (bench/mfu.py's lora_train_flops):

    useful FLOPs = 4 x body x non-padding tokens + 4 x head x loss positions
    + attention  = useful FLOPs + 6 x layers x heads x head_dim x sum over examples of L^2

body = the transformer's matmul parameters (SmolLM2-135M: 106 M), head = the LM head's (vocabulary x hidden,
28 M), loss positions = the trained examples' target tokens. 4 per parameter: the forward (2) and the
backward's input gradient (2); LoRA never computes the frozen base's weight gradients. Every method is
credited the same useful FLOPs (same examples, same targets), so useful GFLOP/s ranks them as time does, and
its share of the measured peak of the dtype the step computes in says how close to the machine it runs.
Attention has no weights, so the body term leaves it out; "+ attention" adds its causal products (QK^T and PV
forward, dV, dP, dQ, dK backward: L^2/2 pairs x heads x head_dim x 2 FLOPs each), as PaLM's MFU counts them:
with this data's lengths it is ~8% more FLOPs, and on a CPU ~20% of a step's time.
Also shown, the work each actually did: (a) and (b) every position fed (padding too) through the body and
the LM head; (c)/(c32) the same plus 2 x body per position for gradient checkpointing's recomputed forward;
(d) every position of its micro-batches (padding included, none when packed) and the LM head only at
the columns it keeps. --json-out writes every figure (bench/gpu_check.py reads it); on a CUDA card in
bench/mfu.py's table, MFU against its dense bf16 peak (6 x parameters per token) is shown as before.

Threads: --threads N for every method (default 1 on CPU: far steadier timings on a shared machine); --threads
auto takes the worker's count (ftserve/training/threads.py: the cores this process may run on).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import (
    DEFAULT_DATA,
    add_lora,
    completion_loss,
    load_model,
    make_dataset,
    peak_memory_mb,
    tokenize_all,
)
from bench.gemm_peak import measure
from bench.mfu import (
    attention_train_flops,
    attention_width,
    device_name,
    head_params,
    lora_train_flops,
    matmul_params,
    mfu,
    model_flops,
)

METHODS = {
    "a": "naive: max_length=1024, labels=input_ids",
    "b": "HF Trainer, dynamic padding, -100 prompt",
    "c": "TRL SFTTrainer defaults, completion_only",
    "c32": "TRL SFTTrainer defaults in fp32",
    "d": "ftserve LoraTrainer",
}
HELD_OUT = 16
LR = 2e-4


class Counting:
    """Wraps a data collator to count the positions fed to the model and how many of them are padding."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.positions = 0
        self.real = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(features)
        self.positions += int(batch["input_ids"].numel())
        self.real += (
            int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel())
        )
        return batch


class Clock:
    """A TrainerCallback-shaped timer around the training loop only (not model or data setup)."""

    start = end = cpu_start = cpu_end = 0.0

    def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
        self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def on_train_end(self, *args: Any, **kwargs: Any) -> None:
        self.end, self.cpu_end = time.perf_counter(), time.process_time()

    @property
    def cpu(self) -> float:
        return self.cpu_end - self.cpu_start

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


def _hf_args(args: argparse.Namespace, device: torch.device, **over: Any) -> dict[str, Any]:
    return {
        "output_dir": str(args.data_dir / "hf-out"),
        "max_steps": args.steps,
        "per_device_train_batch_size": args.batch,
        "learning_rate": LR,
        "lr_scheduler_type": "linear",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "seed": args.seed,
        "data_seed": args.seed,
        "use_cpu": device.type == "cpu",
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        **over,
    }


def run_hf(method: str, args: argparse.Namespace, model: Any, tok: Any, train: list[Any]) -> dict[str, Any]:
    """(a) or (b) with transformers' Trainer."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments, default_data_collator

    rows = []
    for ex in train:
        if method == "a":
            enc = tok(ex.prompt + ex.completion, padding="max_length", max_length=1024, truncation=True)
            rows.append({**enc, "labels": list(enc["input_ids"])})
        else:
            prompt = tok(ex.prompt)["input_ids"]
            ids = tok(ex.prompt + ex.completion)["input_ids"] + [tok.eos_token_id]
            rows.append(
                {
                    "input_ids": ids,
                    "attention_mask": [1] * len(ids),
                    "labels": [-100] * len(prompt) + ids[len(prompt) :],
                }
            )
    collator = Counting(default_data_collator if method == "a" else DataCollatorForSeq2Seq(tok, padding=True))
    device = next(model.parameters()).device
    clock = Clock()
    # (a) at 8 x 1024 peaks near 15 GB on SmolLM2-135M (fp32 logits over 49k vocab at every position):
    # it runs as micro-batches with accumulation, the same 8 examples per optimizer step.
    acc = args.naive_accumulation if method == "a" else 1
    over = {"per_device_train_batch_size": args.batch // acc, "gradient_accumulation_steps": acc}
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**_hf_args(args, device, **over)),
        train_dataset=Dataset.from_list(rows),
        data_collator=collator,
        callbacks=[clock],  # type: ignore[list-item]
    )
    trainer.train()
    note = f"micro-batch {args.batch // acc} x {acc}"
    return {
        "seconds": clock.end - clock.start,
        "cpu_seconds": clock.cpu,
        "positions": collator.positions,
        "real": collator.real,
        "head_positions": collator.positions,  # logits at every position fed
        "note": note,
    }


def run_trl(args: argparse.Namespace, model: Any, tok: Any, train: list[Any], fp32: bool = False) -> dict[str, Any]:
    """(c) TRL's SFTTrainer with its defaults, on prompt/completion data (completion-only loss); (c32) the same
    with bf16 off, on a model in fp32."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    device = next(model.parameters()).device
    clock = Clock()
    data = Dataset.from_list([{"prompt": ex.prompt, "completion": ex.completion} for ex in train])
    precision = {"bf16": False, "fp16": False} if fp32 else {}
    config = SFTConfig(**_hf_args(args, device, **precision))
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=data,
        processing_class=tok,
        callbacks=[clock],  # type: ignore[list-item]
    )
    assert getattr(trainer.args, "completion_only_loss", None) is not False
    counting = Counting(trainer.data_collator)
    trainer.data_collator = counting
    trainer.train()
    model.disable_input_require_grads()
    checkpointing = bool(trainer.args.gradient_checkpointing)
    autocast = "bfloat16" if trainer.args.bf16 else "float16" if trainer.args.fp16 else None
    return {
        "seconds": clock.end - clock.start,
        "cpu_seconds": clock.cpu,
        "positions": counting.positions,
        "real": counting.real,
        "recompute": checkpointing,
        "head_positions": counting.positions,  # logits at every position fed
        "compute_dtype": autocast or str(next(model.parameters()).dtype).removeprefix("torch."),
        "note": f"batch {trainer.args.per_device_train_batch_size}, gradient_checkpointing={checkpointing}"
        + (f", {autocast} autocast" if autocast else ""),
    }


def run_ftserve(args: argparse.Namespace, model: Any, tok: Any, train: list[Any]) -> dict[str, Any]:
    """(d) ftserve's own trainer as the worker runs it: its training attention, per-step layout, trainer."""
    from ftserve.models.bases import training_attention
    from ftserve.training import planner
    from ftserve.training.batching import step_groups
    from ftserve.training.planner import CostModel, plan_step
    from ftserve.training.trainer import LoraTrainer

    device = next(model.parameters()).device
    model.get_base_model().set_attn_implementation(training_attention("auto", device))
    examples = tokenize_all(tok, train)
    cost = CostModel.for_model(model.get_base_model())
    # Written so that it also runs against ftserve before issue 30 (the "before" figures): no default_row_cap
    # there, packed rows capped at 1024 tokens on CPU.
    row_cap = getattr(planner, "default_row_cap", None)
    cap = row_cap(4096, device, cost.varlen) if row_cap else 4096 if device.type == "cuda" else 1024
    trainer = LoraTrainer(model, device, lr=LR, total_steps=args.steps)
    positions = real = packed = heads = calls = 0
    start, cpu = time.perf_counter(), time.process_time()
    for group in step_groups(len(examples), args.batch, args.seed, 0)[: args.steps]:
        plan = plan_step([examples[i] for i in group], int(tok.pad_token_id), 4096, cost, args.packing, cap)
        trainer.step(plan.micro_batches)
        positions, real, packed = positions + plan.padded_tokens, real + plan.real_tokens, packed + plan.packed
        heads += sum(
            int(mb.input_ids.shape[0]) * int((mb.weights[:, 1:].sum(0) > 0).sum()) for mb in plan.micro_batches
        )
        calls += len(plan.micro_batches)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "positions": positions,
        "real": real,
        "head_positions": heads,
        "note": f"packed {packed}/{args.steps} steps, {calls / args.steps:.1f} calls/step, "
        f"{model.config._attn_implementation}",
    }


def child(args: argparse.Namespace) -> None:
    """Run one method in this process and print its figures as one JSON line."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.child == "mm":
        gemm_child(args, device)
        return
    model, tok = load_model(args.data_dir, args.model, device, torch.float32 if args.child == "c32" else None)
    data = make_dataset(args.examples, args.seed, tok)
    train, held_out = data[: args.steps * args.batch], data[-HELD_OUT:]
    params, head = matmul_params(model), head_params(model)
    model = add_lora(model, args.seed)
    runner = {"a": lambda: run_hf("a", args, model, tok, train), "b": lambda: run_hf("b", args, model, tok, train)}
    runner |= {"c": lambda: run_trl(args, model, tok, train), "d": lambda: run_ftserve(args, model, tok, train)}
    runner |= {"c32": lambda: run_trl(args, model, tok, train, fp32=True)}
    result = runner[args.child]()
    tokenized = tokenize_all(tok, train)
    target = sum(sum(e.completion[1:]) for e in tokenized)
    body = params - head
    result |= {
        "method": args.child,
        "examples": len(train),
        "target_tokens": target,
        "peak_mb": peak_memory_mb(device),
        "held_out_loss": completion_loss(model, tok, tokenize_all(tok, held_out)),
        "device": device.type,
        "matmul_params": params,
        "head_params": head,
        # Credited alike to every method: the non-padding tokens through the body, the targets through the head.
        "useful_flops": lora_train_flops(body, head, sum(len(e) for e in tokenized), target),
        # Causal attention over each example's own tokens, credited alike too (the "with attention" columns).
        "attention_flops": attention_train_flops(
            int(model.config.num_hidden_layers), attention_width(model.config), [len(e) for e in tokenized]
        ),
        "done_flops": lora_train_flops(
            body, head, result["positions"], result["head_positions"], result.get("recompute", False)
        ),
    }
    result.setdefault("compute_dtype", str(next(p.dtype for p in model.parameters())).removeprefix("torch."))
    print("RESULT " + json.dumps(result), flush=True)


def gemm_child(args: argparse.Namespace, device: torch.device) -> None:
    """Time the step's GEMM shapes in fp32 and bf16 (bench/gemm_peak) in this process's thread setting."""
    from transformers import AutoConfig

    from bench.common import settings_for
    from ftserve.models.bases import prepare_base

    path = prepare_base(settings_for(args.data_dir), args.model, lambda m: print(m, file=sys.stderr))
    report = measure(AutoConfig.from_pretrained(str(path)), [torch.float32, torch.bfloat16], device)
    print("RESULT " + json.dumps(report), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="a built-in base (ftserve-tiny for a quick run)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--examples", type=int, default=512, help="examples generated (the first steps*batch are trained)")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per method")
    p.add_argument("--batch", type=int, default=8, help="examples per optimizer step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--methods",
        help="which, e.g. abcd or a,c32,d (default abcd, plus c32 where the model trains in fp32: no fast bf16)",
    )
    p.add_argument("--no-gemm", action="store_true", help="skip the matmul microbenchmark (no %% of peak)")
    p.add_argument(
        "--cap-steps",
        action="append",
        default=[],
        metavar="METHOD=N",
        help="train METHOD for at most N steps (rates only: its held-out loss is then after fewer steps), "
        "e.g. c=1 for TRL's bf16 autocast on a CPU without bf16 kernels",
    )
    p.add_argument("--naive-accumulation", type=int, default=4, help="(a) micro-batches per step (memory)")
    p.add_argument("--packing", default="auto", choices=["auto", "on", "off"], help="ftserve's layout setting")
    # On a shared CPU one thread per process gives far steadier timings (no OpenMP barrier stalls).
    p.add_argument(
        "--threads",
        default="1" if not torch.cuda.is_available() else str(torch.get_num_threads()),
        help="torch threads in every method's process: a number, or auto (the worker's: the cores owned)",
    )
    p.add_argument("--json-out", type=Path, help="also write every figure to this JSON file")
    p.add_argument("--child", choices=[*METHODS, "mm"], help=argparse.SUPPRESS)
    args = p.parse_args()
    args.data_dir = args.data_dir.resolve()
    if args.threads == "auto":
        from ftserve.training.threads import training_threads

        args.threads = str(training_threads())
    torch.set_num_threads(int(args.threads))
    if args.child:
        child(args)
        return
    methods = _methods(args)
    _describe_data(args)
    peaks = {} if args.no_gemm else _spawn("mm", args)
    _peak_table(peaks)
    caps = {m: int(n) for m, n in (c.split("=", 1) for c in args.cap_steps)}
    results = {m: _spawn(m, args, min(args.steps, caps.get(m, args.steps))) for m in methods}
    _table(results, args)
    name = device_name(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    figures = _compute(results, name, peaks)
    _compute_table(figures, name)
    if args.json_out:
        report = {"model": args.model, "device_name": name, "steps": args.steps, "batch": args.batch}
        report |= {"threads": int(args.threads), "load_average": os.getloadavg()[0], "gemm": peaks}
        args.json_out.write_text(json.dumps(report | {"methods": figures}, indent=1))


def _methods(args: argparse.Namespace) -> list[str]:
    """The methods asked for, in order; by default abcd, and where the model trains in fp32 (no fast bf16) c32
    in place of c: TRL's bf16 autocast there runs hundreds of times slower (put it on record with
    --methods abcc32d --cap-steps c=1)."""
    if args.methods:
        methods = re.findall(r"c32|[abcd]", args.methods)
        if not methods or "".join(methods) != re.sub(r"[,\s]", "", args.methods):
            sys.exit(f"--methods: expected letters of abcd and c32, got {args.methods!r}")
        return methods
    from bench.common import settings_for
    from ftserve.models.bases import resolve_dtype

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fp32 = resolve_dtype(settings_for(args.data_dir).base_models[args.model], device) == torch.float32
    return ["a", "b", "c32", "d"] if fp32 else ["a", "b", "c", "d"]


def _describe_data(args: argparse.Namespace) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _, tok = load_model(args.data_dir, args.model, device)
    tokenized = tokenize_all(tok, make_dataset(args.examples, args.seed, tok))
    for what, part in (("generated", tokenized), ("trained", tokenized[: args.steps * args.batch])):
        lengths = sorted(len(e) for e in part)
        q = [lengths[int(f * (len(lengths) - 1))] for f in (0, 0.25, 0.5, 0.75, 1)]
        print(f"{len(lengths)} {what} examples, tokens min/q1/median/q3/max = {'/'.join(map(str, q))}")
    print(
        f"model {args.model}, {args.steps} optimizer steps x {args.batch} examples per method, torch threads "
        f"{torch.get_num_threads()}, cpu capability {torch.backends.cpu.get_cpu_capability()}, "
        f"load average {os.getloadavg()[0]:.1f}\n"
    )


def _spawn(method: str, args: argparse.Namespace, steps: int | None = None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.train_throughput", "--child", method, "--model", args.model]
    cmd += ["--data-dir", str(args.data_dir), "--examples", str(args.examples), "--steps", str(steps or args.steps)]
    cmd += ["--batch", str(args.batch), "--seed", str(args.seed), "--packing", args.packing]
    cmd += ["--threads", str(args.threads), "--naive-accumulation", str(args.naive_accumulation)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"method {method} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    result = dict(json.loads(line.removeprefix("RESULT ")))
    if steps is not None and steps < args.steps:
        result["note"] = f"{steps} of {args.steps} steps; " + result.get("note", "")
    return result


def _compute(
    results: dict[str, dict[str, Any]], name: str, peaks: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Each method's figures with its rates: examples/s, target and non-padding tokens/s, useful and done FLOP/s
    with their shares of the measured peak in the step's dtype, model FLOP/s (6N) and MFU (None off CUDA)."""
    out = {}
    for m, r in results.items():
        real_rate = r["real"] / r["seconds"]
        flops = model_flops(r["matmul_params"], real_rate, training=True)
        peak = peaks.get(r["compute_dtype"], {}).get("peak_flops")
        useful, done = r["useful_flops"] / r["seconds"], r["done_flops"] / r["seconds"]
        with_attention = (r["useful_flops"] + r.get("attention_flops", 0.0)) / r["seconds"]
        out[m] = r | {
            "label": METHODS[m],
            "examples_per_s": r["examples"] / r["seconds"],
            "target_tokens_per_s": r["target_tokens"] / r["seconds"],
            "tokens_per_s": real_rate,
            "useful_flops_per_s": useful,
            "done_flops_per_s": done,
            "peak_flops": peak,
            "useful_of_peak": useful / peak if peak else None,
            "with_attention_flops_per_s": with_attention,
            "with_attention_of_peak": with_attention / peak if peak else None,
            "done_of_peak": done / peak if peak else None,
            "model_flops_per_s": flops,
            "mfu": mfu(flops, name) if r["device"] == "cuda" else None,
        }
    return out


def _peak_table(peaks: dict[str, dict[str, Any]]) -> None:
    if not peaks:
        return
    print("Measured matmul peak (the step's GEMM shapes alone, best 0.1 s window; bench/gemm_peak.py):")
    print("| dtype | peak GFLOP/s | at | shapes timed |\n|---|---:|---|---:|")
    for dtype, p in peaks.items():
        slow = " (no fast kernels: smallest shapes only)" if p["slow"] else ""
        print(f"| {dtype} | {p['peak_flops'] / 1e9:.1f} | {p['peak_shape']}{slow} | {len(p['rates'])} |")
    print()


def _compute_table(figures: dict[str, dict[str, Any]], name: str) -> None:
    print(f"\nCompute on {name} (useful = 4 x body x non-padding tokens + 4 x head x target tokens, the same")
    print("for every method; + attention = useful + 6 x layers x heads x head_dim x L^2 per example of L tokens;")
    print("done = what each computed, padding and recomputation included; bench/mfu.py):")
    print(
        "| method | examples/s | tokens/s | dtype | useful GFLOP/s | % of peak | + attention GFLOP/s | % of peak "
        "| done GFLOP/s | % of peak | MFU |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")

    def pct(share: float | None) -> str:
        return "-" if share is None else f"{share:.0%}"

    for m, f in figures.items():
        share = "-" if f["mfu"] is None else f"{f['mfu']:.1%}"
        print(
            f"| ({m}) {METHODS[m]} | {f['examples_per_s']:.2f} | {f['tokens_per_s']:.0f} | {f['compute_dtype']} | "
            f"{f['useful_flops_per_s'] / 1e9:.1f} | {pct(f['useful_of_peak'])} | "
            f"{f['with_attention_flops_per_s'] / 1e9:.1f} | {pct(f['with_attention_of_peak'])} | "
            f"{f['done_flops_per_s'] / 1e9:.1f} | {pct(f['done_of_peak'])} | {share} |"
        )


def _table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    rate = {m: r["target_tokens"] / r["seconds"] for m, r in results.items()}
    bases = [m for m in ("a", "c", "c32") if m in rate] or ["a"]
    heads = " | ".join(f"vs ({b})" for b in bases)
    print(f"| method | target tok/s | {heads} | padding | peak MB | held-out loss | time s | cores busy | note |")
    print("|---|---:|" + "---:|" * len(bases) + "---:|---:|---:|---:|---:|---|")
    for m, r in results.items():
        ratios = " | ".join(f"{rate[m] / rate[b]:.2f}x" if b in rate else "-" for b in bases)
        pad = 1 - r["real"] / r["positions"] if r["positions"] else 0.0
        print(
            f"| ({m}) {METHODS[m]} | {rate[m]:.0f} | {ratios} | {pad:.0%} | {r['peak_mb']:.0f} | "
            f"{r['held_out_loss']:.3f} | {r['seconds']:.1f} | {r['cpu_seconds'] / r['seconds']:.2f} | "
            f"{r.get('note', '')} |"
        )


if __name__ == "__main__":
    main()
