"""DPO throughput: ftserve's DPO method against TRL's DPOTrainer on the same pairs, model and LoRA, each in its
own process.

(a) TRL DPOTrainer with its defaults (reference model re-run every step, two sequences per pair,
    gradient checkpointing, bf16 autocast)
(b) TRL DPOTrainer tuned: precompute_ref_log_probs=True, gradient checkpointing off
(c) ftserve's DPO method as the worker runs it: reference log-probs once per pair, each pair's prompt run
    once for both replies (one block-masked packed row), LM head only at reply positions

Every method trains the same pairs in the same order (batch 4 pairs per optimizer step, lr 2e-4, beta 0.1,
LoRA rank 8 on all linear layers, the same initialisation). The table reports pairs per second of
wall time (the reference pass included), the per-step training losses, and the DPO loss and reward
accuracy on held-out pairs afterwards, all evaluated by the same code, to show the methods learned the same.

    python -m bench.dpo_throughput                       # SmolLM2-135M, 4 steps per method
    python -m bench.dpo_throughput --model ftserve-tiny  # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import DEFAULT_DATA, WORDS, add_lora, load_model, peak_memory_mb
from ftserve.core.datasets.formats import Message, Preference
from ftserve.models.chat import render_chat
from ftserve.training.preference import PreferencePair, tokenize_pair

METHODS = {
    "a": "TRL DPOTrainer defaults",
    "b": "TRL DPOTrainer, precomputed reference, no checkpointing",
    "c": "ftserve DPO",
}
LR, BETA, HELD_OUT = 2e-4, 0.1, 16


def make_pairs(n: int, seed: int, low: int = 100, high: int = 400) -> list[Preference]:
    """n reading-comprehension pairs: a passage of low..high words (prompts far longer than replies), the
    preferred reply names its first and last word, the other reply gets them wrong."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
        wrong = [rng.choice(WORDS) for _ in range(2)]
        question = f"Here is a passage:\n{' '.join(words)}\n\nWhat are its first and last words?"
        good = f"The first word is {words[0]} and the last word is {words[-1]}."
        bad = f"The first word is {wrong[0]} and the last word is {wrong[1]}."
        if good != bad:
            out.append(Preference((Message("user", question),), good, bad))
    return out


def run_trl(method: str, args: argparse.Namespace, model: Any, tok: Any, pairs: list[Preference]) -> dict[str, Any]:
    """(a) or (b): TRL's DPOTrainer on the conversational preference format."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    device = next(model.parameters()).device
    rows = [
        {
            "prompt": [{"role": "user", "content": p.messages[0].content}],
            "chosen": [{"role": "assistant", "content": p.preferred}],
            "rejected": [{"role": "assistant", "content": p.non_preferred}],
        }
        for p in pairs
    ]
    tuned = {"precompute_ref_log_probs": True, "gradient_checkpointing": False} if method == "b" else {}
    config = DPOConfig(
        output_dir=str(args.data_dir / "trl-dpo-out"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=LR,
        beta=BETA,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        use_cpu=device.type == "cpu",
        disable_tqdm=True,
        # The same pairs in the same order as (c); the order does not change the speed.
        train_sampling_strategy="sequential",
        **tuned,
    )
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok)
    start = time.perf_counter()
    trainer.train()  # (b)'s reference pass runs in here
    seconds = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    note = f"gradient_checkpointing={config.gradient_checkpointing}, bf16={config.bf16}"
    return {"seconds": seconds, "losses": losses, "note": note}


def run_ftserve(args: argparse.Namespace, model: Any, tok: Any, pairs: list[Preference]) -> dict[str, Any]:
    """(c) ftserve's Dpo method on LoraTrainer, as the worker runs it."""
    from ftserve.training.methods.dpo import Dpo
    from ftserve.training.planner import CPU_PACKED_ROW_TOKENS
    from ftserve.training.trainer import LoraTrainer

    device = next(model.parameters()).device
    tokenized = [tokenize_pair(tok, p) for p in pairs]
    cap = 4096 if device.type == "cuda" else CPU_PACKED_ROW_TOKENS
    reference = args.data_dir / "ftserve-dpo-reference.pt"
    reference.unlink(missing_ok=True)
    start = time.perf_counter()
    trainer = LoraTrainer(model, device, lr=LR, total_steps=args.steps)
    groups = [list(range(s * args.batch, (s + 1) * args.batch)) for s in range(args.steps)]
    method = Dpo(model, tokenized, [], BETA, cap, device, reference, None, (groups, []))
    method.prepare(trainer, resumed=False)  # the reference pass, timed
    losses = [method.train_step(trainer, group, s).metrics["train_loss"] for s, group in enumerate(groups, 1)]
    seconds = time.perf_counter() - start
    trainer.close()
    return {"seconds": seconds, "losses": losses, "note": f"rows of at most {cap} tokens"}


@torch.no_grad()
def held_out(model: Any, tok: Any, pairs: list[Preference]) -> tuple[float, float]:
    """DPO loss and reward accuracy on pairs none of the methods trained on, against the base as reference."""
    from ftserve.training.methods.dpo_reference import compute

    device = next(model.parameters()).device
    tokenized = [tokenize_pair(tok, p) for p in pairs]
    policy = compute(model, tokenized, 1024, device)
    with model.disable_adapter():
        ref = compute(model, tokenized, 1024, device)
    margin = BETA * ((policy[:, 0] - ref[:, 0]) - (policy[:, 1] - ref[:, 1]))
    loss = float(-torch.nn.functional.logsigmoid(margin).mean())
    return loss, float((margin > 0).float().mean())


def child(args: argparse.Namespace) -> None:
    """Run one method in this process and print its figures as one JSON line."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_model(args.data_dir, args.model, device)
    data = make_pairs(args.steps * args.batch + HELD_OUT, args.seed)
    train, test = data[: args.steps * args.batch], data[-HELD_OUT:]
    model = add_lora(model, args.seed)
    result = run_ftserve(args, model, tok, train) if args.child == "c" else run_trl(args.child, args, model, tok, train)
    loss, accuracy = held_out(model, tok, test)
    result |= {"method": args.child, "pairs": len(train), "peak_mb": peak_memory_mb(device)}
    result |= {"held_out_loss": loss, "held_out_accuracy": accuracy, "device": device.type}
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="a built-in base (ftserve-tiny for a quick run)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per method")
    p.add_argument("--batch", type=int, default=4, help="pairs per optimizer step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default="abc")
    # On a shared CPU one thread per process gives far steadier timings (no OpenMP barrier stalls).
    p.add_argument("--threads", type=int, default=1 if not torch.cuda.is_available() else torch.get_num_threads())
    p.add_argument("--child", choices=sorted(METHODS), help=argparse.SUPPRESS)
    args = p.parse_args()
    args.data_dir = args.data_dir.resolve()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    _describe_data(args)
    results = {m: _spawn(m, args) for m in args.methods}
    _table(results)


def _describe_data(args: argparse.Namespace) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _, tok = load_model(args.data_dir, args.model, device)
    pairs: list[PreferencePair] = [tokenize_pair(tok, p) for p in make_pairs(args.steps * args.batch, args.seed)]
    prompts = sorted(len(p.prompt) for p in pairs)
    replies = sorted(len(r) for p in pairs for r in (p.chosen, p.rejected))
    spread = f"{prompts[0]}/{prompts[len(prompts) // 2]}/{prompts[-1]}"
    print(f"{len(pairs)} pairs: prompt tokens min/median/max = {spread}, "
          f"reply tokens {replies[0]}/{replies[len(replies) // 2]}/{replies[-1]}")  # fmt: skip
    example = render_chat(tok, [{"role": "user", "content": "…"}], True)
    print(f"model {args.model} (chat template prompt suffix {example[-30:]!r}), {args.steps} steps x {args.batch} "
          f"pairs, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}\n")  # fmt: skip


def _spawn(method: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.dpo_throughput", "--child", method, "--model", args.model]
    cmd += ["--data-dir", str(args.data_dir), "--steps", str(args.steps), "--batch", str(args.batch)]
    cmd += ["--seed", str(args.seed), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"method {method} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return dict(json.loads(line.removeprefix("RESULT ")))


def _table(results: dict[str, dict[str, Any]]) -> None:
    rate = {m: r["pairs"] / r["seconds"] for m, r in results.items()}
    print("| method | pairs/s | vs (a) | vs (b) | per-step train loss | held-out loss | held-out reward acc. "
          "| peak MB | time s | note |")  # fmt: skip
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---|")
    for m, r in results.items():
        vs_a = f"{rate[m] / rate['a']:.2f}x" if "a" in rate else "-"
        vs_b = f"{rate[m] / rate['b']:.2f}x" if "b" in rate else "-"
        losses = " / ".join(f"{x:.4f}" for x in r["losses"])
        print(
            f"| ({m}) {METHODS[m]} | {rate[m]:.3f} | {vs_a} | {vs_b} | {losses} | {r['held_out_loss']:.4f} | "
            f"{r['held_out_accuracy']:.2f} | {r['peak_mb']:.0f} | {r['seconds']:.1f} | {r.get('note', '')} |"
        )


if __name__ == "__main__":
    main()
