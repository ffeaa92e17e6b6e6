"""Profile ftserve's LoRA training step (bench/train_throughput's arm (d)): where a step's time goes, by kind of op.

Runs the worker's layout (training/planner) on the benchmark's data, one warm-up step, then `--profile-steps`
steps under torch.profiler, and prints the micro-batch shapes the planner chose and a table of self time per
category (GEMMs, attention, elementwise, casts, LoRA's own small matmuls cannot be told apart from the base's
by op name, so they are timed separately with `--lora-split`), the optimizer, and what no op accounts for
(Python, autograd bookkeeping).

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python -m bench.train_profile --threads 2 --batch 4        # the AVX2-only (fp32) path
    python -m bench.train_profile --threads 2 --batch 4            # bf16 where the CPU has it
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from bench.common import DEFAULT_DATA, add_lora, load_model, make_dataset, tokenize_all
from bench.mfu import head_params, lora_train_flops, matmul_params
from ftserve.training.batching import step_groups

# Op name -> category; first match wins (names are aten's; the backward's are the same ops under autograd).
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention", ("scaled_dot_product", "flash_attention", "_softmax", "softmax")),
    ("GEMM", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "mkldnn", "aten::linear")),
    ("casts/copies", ("aten::copy_", "aten::_to_copy", "aten::to", "aten::contiguous", "aten::clone")),
    ("cross-entropy", ("nll_loss", "log_softmax", "cross_entropy")),
    ("optimizer", ("adamw", "_foreach", "aten::addcdiv", "aten::lerp", "aten::sqrt", "clip_grad")),
)


def category(name: str) -> str:
    low = name.lower()
    for cat, keys in CATEGORIES:
        if any(k.lower() in low for k in keys):
            return cat
    if low.startswith("aten::"):
        return "elementwise/other aten"
    return "other (autograd nodes, Python scopes)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--examples", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--profile-steps", type=int, default=4)
    p.add_argument("--packing", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--shapes", type=int, default=24, help="print the planner's micro-batch shapes for this many steps")
    p.add_argument("--trace", type=Path, help="also write a Chrome trace here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from ftserve.models.bases import training_attention
    from ftserve.training import planner
    from ftserve.training.planner import CostModel, plan_step
    from ftserve.training.trainer import LoraTrainer

    device = torch.device("cpu")
    model, tok = load_model(args.data_dir.resolve(), args.model, device)
    dtype = next(model.parameters()).dtype
    data = make_dataset(args.examples, args.seed, tok)
    model = add_lora(model, args.seed)
    # As the worker trains: its attention for "auto", its packed-row cap. (Written so that it also runs against
    # ftserve before issue 30, for the "before" profile: no default_row_cap there, CPU rows capped at 1024.)
    model.get_base_model().set_attn_implementation(training_attention("auto", device))
    examples = tokenize_all(tok, data)
    cost = CostModel.for_model(model.get_base_model())
    row_cap = getattr(planner, "default_row_cap", None)
    cap = row_cap(4096, device, cost.varlen) if row_cap else planner.CPU_PACKED_ROW_TOKENS
    groups = step_groups(len(examples[: args.shapes * args.batch]), args.batch, args.seed, 0)
    plans = [plan_step([examples[i] for i in g], int(tok.pad_token_id), 4096, cost, args.packing, cap) for g in groups]
    print(f"dtype {dtype}, torch threads {torch.get_num_threads()}, capability "
          f"{torch.backends.cpu.get_cpu_capability()}, attention {model.config._attn_implementation}, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("planner's micro-batches per step ([rows x cols], kept LM-head columns; P = packed rows):")
    for s, plan in enumerate(plans):
        shapes = [
            f"{tuple(mb.input_ids.shape)}:{int((mb.weights[:, 1:].sum(0) > 0).sum())}" for mb in plan.micro_batches
        ]
        print(f"  step {s}: {'P ' if plan.packed else ''}{' '.join(shapes)}  real {plan.real_tokens}")
    print(f"  {sum(len(p.micro_batches) for p in plans) / len(plans):.2f} calls per step")
    trainer = LoraTrainer(model, device, lr=2e-4, total_steps=len(plans))
    trainer.step(plans[0].micro_batches)  # warm-up (allocator, oneDNN primitives)
    chosen = plans[1 : 1 + args.profile_steps]
    tokens = sum(pl.real_tokens for pl in chosen)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for plan in chosen:
            with record_function("## step"):
                trainer.step(plan.micro_batches)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if args.trace:
        prof.export_chrome_trace(str(args.trace))
    cfg: Any = model.get_base_model().config
    body, head = matmul_params(model.get_base_model()) - head_params(model.get_base_model()), head_params(model)
    targets = sum(float((mb.weights[:, 1:] > 0).sum()) for pl in chosen for mb in pl.micro_batches)
    useful = lora_train_flops(body, head, tokens, int(targets))
    print(f"\nuseful work (bench/mfu.py: 4 x body x tokens + 4 x head x targets): {useful / 1e9:.0f} GFLOP; "
          f"{useful / wall / 1e9:.1f} GFLOP/s of wall time, {useful / cpu / 1e9:.1f} per CPU-second "
          f"(under the profiler: a few percent slower than without)")  # fmt: skip
    _table(prof, wall, cpu, tokens)
    _gemm_split(prof, int(cfg.vocab_size), wall)


def _table(prof: Any, wall: float, cpu: float, tokens: int) -> None:
    by_cat: dict[str, float] = defaultdict(float)
    by_op: dict[str, float] = defaultdict(float)
    main_thread: Any = None
    for evt in prof.events():
        if main_thread is None and evt.name == "## step":
            main_thread = evt.thread
    for evt in prof.key_averages():
        if evt.key.startswith("## "):
            continue
        by_cat[category(evt.key)] += evt.self_cpu_time_total / 1e6
        by_op[evt.key] += evt.self_cpu_time_total / 1e6
    steps_s = sum(e.cpu_time_total for e in prof.key_averages() if e.key == "## step") / 1e6
    print(f"\nprofiled {tokens} real tokens in {wall:.2f} s wall ({tokens / wall:.0f} tok/s under the profiler), "
          f"process CPU {cpu:.2f} s ({cpu / wall:.2f} cores busy)")  # fmt: skip
    total = sum(by_cat.values())
    print("| category | self s | share of step |\n|---|---:|---:|")
    for cat, s in sorted(by_cat.items(), key=lambda kv: -kv[1]):
        print(f"| {cat} | {s:.2f} | {s / steps_s:.1%} |")
    rest = max(steps_s - total, 0.0)
    print(f"| not in any op (Python, framework) | {rest:.2f} | {rest / steps_s:.1%} |")
    print("\ntop ops by self time:")
    print("| op | self s | share | calls |\n|---|---:|---:|---:|")
    calls = {e.key: e.count for e in prof.key_averages()}
    for op, s in sorted(by_op.items(), key=lambda kv: -kv[1])[:25]:
        print(f"| {op} | {s:.3f} | {s / steps_s:.1%} | {calls[op]} |")
    _ = main_thread
    scopes = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages()}
    for key in ("Optimizer.step#AdamW.step", "Optimizer.zero_grad#AdamW.zero_grad"):
        if key in scopes:
            print(f"scope {key}: {scopes[key]:.3f} s ({scopes[key] / steps_s:.1%} of the step, children included)")


def _gemm_split(prof: Any, vocab: int, wall: float) -> None:
    """GEMM self time by what it multiplies: the LM head (a vocabulary-wide dimension), LoRA's low-rank factors
    (a dimension of at most 64), or the base's projections (the rest), with each group's achieved GFLOP/s."""
    seconds: dict[str, float] = defaultdict(float)
    flops: dict[str, float] = defaultdict(float)
    for evt in prof.key_averages(group_by_input_shape=True):
        if evt.key not in ("aten::mm", "aten::addmm", "aten::bmm") or not evt.input_shapes:
            continue
        shapes = [s for s in evt.input_shapes if len(s) >= 2]
        if len(shapes) < 2:
            continue
        a, b = shapes[-2], shapes[-1]
        m, k, n = a[-2], a[-1], b[-1]
        dims = (m, k, n)
        kind = "LM head" if vocab in dims else "LoRA (rank dims)" if min(dims) <= 64 else "base projections"
        seconds[kind] += evt.self_cpu_time_total / 1e6
        flops[kind] += 2.0 * m * k * n * evt.count * (a[0] if len(a) == 3 else 1)
    print("\n| GEMMs by kind | self s | share of wall | GFLOP/s while in them |\n|---|---:|---:|---:|")
    for kind, s in sorted(seconds.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {s:.2f} | {s / wall:.1%} | {flops[kind] / s / 1e9:.1f} |")


if __name__ == "__main__":
    main()
