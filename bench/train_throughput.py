"""Training throughput: the same LoRA on the same generated data, four ways, each in its own process.

(a) the naive tutorial: padding="max_length", max_length=1024, labels = input_ids
(b) HF Trainer with dynamic padding and a -100 prompt mask
(c) TRL SFTTrainer defaults (completion_only_loss on prompt/completion data)
(d) ftserve's LoraTrainer: weighted loss, logits only where loss is taken, per-step padded/packed layout

Every method trains the same examples for the same number of optimizer steps (batch 8 examples); the table
reports target (completion + EOS) tokens per second, the padding fraction, peak memory and the held-out
completion loss afterwards, with ratios to (a) and (c).

    python -m bench.train_throughput                       # SmolLM2-135M, 4 steps per method, a few minutes
    python -m bench.train_throughput --model ftserve-tiny  # seconds

After the table, the same runs as compute: every non-padding token per second, the model FLOP/s that is
(6 x non-embedding parameters per token, bench/mfu.py) and, on a CUDA card in bench/mfu.py's table, MFU
against its dense bf16 peak. --json-out writes every figure (bench/gpu_check.py reads it).
"""

from __future__ import annotations

import argparse
import json
import os
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
from bench.mfu import device_name, matmul_params, mfu, model_flops

METHODS = {
    "a": "naive: max_length=1024, labels=input_ids",
    "b": "HF Trainer, dynamic padding, -100 prompt",
    "c": "TRL SFTTrainer defaults, completion_only",
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

    start = end = 0.0

    def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
        self.start = time.perf_counter()

    def on_train_end(self, *args: Any, **kwargs: Any) -> None:
        self.end = time.perf_counter()

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
    return {"seconds": clock.end - clock.start, "positions": collator.positions, "real": collator.real, "note": note}


def run_trl(args: argparse.Namespace, model: Any, tok: Any, train: list[Any]) -> dict[str, Any]:
    """(c) TRL's SFTTrainer with its defaults, on prompt/completion data (completion-only loss)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    device = next(model.parameters()).device
    clock = Clock()
    data = Dataset.from_list([{"prompt": ex.prompt, "completion": ex.completion} for ex in train])
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**_hf_args(args, device)),
        train_dataset=data,
        processing_class=tok,
        callbacks=[clock],  # type: ignore[list-item]
    )
    assert getattr(trainer.args, "completion_only_loss", None) is not False
    counting = Counting(trainer.data_collator)
    trainer.data_collator = counting
    trainer.train()
    model.disable_input_require_grads()
    return {
        "seconds": clock.end - clock.start,
        "positions": counting.positions,
        "real": counting.real,
        "note": f"batch {trainer.args.per_device_train_batch_size}, "
        f"gradient_checkpointing={trainer.args.gradient_checkpointing}",
    }


def run_ftserve(args: argparse.Namespace, model: Any, tok: Any, train: list[Any]) -> dict[str, Any]:
    """(d) ftserve's own trainer with the worker's per-step layout."""
    from ftserve.training.batching import step_groups
    from ftserve.training.planner import CPU_PACKED_ROW_TOKENS, CostModel, plan_step
    from ftserve.training.trainer import LoraTrainer

    device = next(model.parameters()).device
    examples = tokenize_all(tok, train)
    cost = CostModel.for_model(model.get_base_model())
    cap = 4096 if device.type == "cuda" else CPU_PACKED_ROW_TOKENS
    trainer = LoraTrainer(model, device, lr=LR, total_steps=args.steps)
    positions = real = packed = 0
    start = time.perf_counter()
    for group in step_groups(len(examples), args.batch, args.seed, 0)[: args.steps]:
        plan = plan_step([examples[i] for i in group], int(tok.pad_token_id), 4096, cost, args.packing, cap)
        trainer.step(plan.micro_batches)
        positions, real, packed = positions + plan.padded_tokens, real + plan.real_tokens, packed + plan.packed
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "positions": positions, "real": real, "note": f"packed {packed}/{args.steps} steps"}


def child(args: argparse.Namespace) -> None:
    """Run one method in this process and print its figures as one JSON line."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_model(args.data_dir, args.model, device)
    data = make_dataset(args.examples, args.seed, tok)
    train, held_out = data[: args.steps * args.batch], data[-HELD_OUT:]
    params = matmul_params(model)
    model = add_lora(model, args.seed)
    runner = {"a": lambda: run_hf("a", args, model, tok, train), "b": lambda: run_hf("b", args, model, tok, train)}
    runner |= {"c": lambda: run_trl(args, model, tok, train), "d": lambda: run_ftserve(args, model, tok, train)}
    result = runner[args.child]()
    target = sum(sum(e.completion[1:]) for e in tokenize_all(tok, train))
    result |= {
        "method": args.child,
        "target_tokens": target,
        "peak_mb": peak_memory_mb(device),
        "held_out_loss": completion_loss(model, tok, tokenize_all(tok, held_out)),
        "device": device.type,
        "matmul_params": params,
    }
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="a built-in base (ftserve-tiny for a quick run)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--examples", type=int, default=512, help="examples generated (the first steps*batch are trained)")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per method")
    p.add_argument("--batch", type=int, default=8, help="examples per optimizer step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default="abcd")
    p.add_argument("--naive-accumulation", type=int, default=4, help="(a) micro-batches per step (memory)")
    p.add_argument("--packing", default="auto", choices=["auto", "on", "off"], help="ftserve's layout setting")
    # On a shared CPU one thread per process gives far steadier timings (no OpenMP barrier stalls).
    p.add_argument("--threads", type=int, default=1 if not torch.cuda.is_available() else torch.get_num_threads())
    p.add_argument("--json-out", type=Path, help="also write every figure to this JSON file")
    p.add_argument("--child", choices=sorted(METHODS), help=argparse.SUPPRESS)
    args = p.parse_args()
    args.data_dir = args.data_dir.resolve()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    _describe_data(args)
    results = {m: _spawn(m, args) for m in args.methods}
    _table(results, args)
    name = device_name(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    figures = _compute(results, name)
    _compute_table(figures, name)
    if args.json_out:
        report = {"model": args.model, "device_name": name, "steps": args.steps, "batch": args.batch}
        args.json_out.write_text(json.dumps(report | {"methods": figures}, indent=1))


def _describe_data(args: argparse.Namespace) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _, tok = load_model(args.data_dir, args.model, device)
    lengths = sorted(len(e) for e in tokenize_all(tok, make_dataset(args.examples, args.seed, tok)))
    q = [lengths[int(f * (len(lengths) - 1))] for f in (0, 0.25, 0.5, 0.75, 1)]
    print(f"{len(lengths)} generated examples, tokens min/q1/median/q3/max = {'/'.join(map(str, q))}")
    print(
        f"model {args.model}, {args.steps} optimizer steps x {args.batch} examples per method, torch threads "
        f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}\n"
    )


def _spawn(method: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.train_throughput", "--child", method, "--model", args.model]
    cmd += ["--data-dir", str(args.data_dir), "--examples", str(args.examples), "--steps", str(args.steps)]
    cmd += ["--batch", str(args.batch), "--seed", str(args.seed), "--packing", args.packing]
    cmd += ["--threads", str(args.threads), "--naive-accumulation", str(args.naive_accumulation)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"method {method} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return dict(json.loads(line.removeprefix("RESULT ")))


def _compute(results: dict[str, dict[str, Any]], name: str) -> dict[str, dict[str, Any]]:
    """Each method's figures with its rates: target and non-padding tokens/s, model FLOP/s, MFU (None off CUDA)."""
    out = {}
    for m, r in results.items():
        real_rate = r["real"] / r["seconds"]
        flops = model_flops(r["matmul_params"], real_rate, training=True)
        out[m] = r | {
            "label": METHODS[m],
            "target_tokens_per_s": r["target_tokens"] / r["seconds"],
            "tokens_per_s": real_rate,
            "model_flops_per_s": flops,
            "mfu": mfu(flops, name) if r["device"] == "cuda" else None,
        }
    return out


def _compute_table(figures: dict[str, dict[str, Any]], name: str) -> None:
    print(f"\nCompute on {name} (6 x non-embedding parameters per non-padding token; bench/mfu.py):")
    print("| method | tokens/s | model TFLOP/s | MFU |")
    print("|---|---:|---:|---:|")
    for m, f in figures.items():
        share = "-" if f["mfu"] is None else f"{f['mfu']:.1%}"
        print(f"| ({m}) {METHODS[m]} | {f['tokens_per_s']:.0f} | {f['model_flops_per_s'] / 1e12:.3f} | {share} |")


def _table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    rate = {m: r["target_tokens"] / r["seconds"] for m, r in results.items()}
    print("| method | target tok/s | vs (a) | vs (c) | padding | peak MB | held-out loss | time s | note |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for m, r in results.items():
        vs_a = f"{rate[m] / rate['a']:.2f}x" if "a" in rate else "-"
        vs_c = f"{rate[m] / rate['c']:.2f}x" if "c" in rate else "-"
        pad = 1 - r["real"] / r["positions"] if r["positions"] else 0.0
        print(
            f"| ({m}) {METHODS[m]} | {rate[m]:.0f} | {vs_a} | {vs_c} | {pad:.0%} | {r['peak_mb']:.0f} | "
            f"{r['held_out_loss']:.3f} | {r['seconds']:.1f} | {r.get('note', '')} |"
        )


if __name__ == "__main__":
    main()
