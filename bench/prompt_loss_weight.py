"""Does prompt loss help? The same data trained with prompt_loss_weight in {0, 0.01, 0.1, 1} by ftserve's own
training code (tokenize → plan_step → LoraTrainer), reporting held-out completion loss along the way and the
exact match of greedy answers at the end, with a PNG of the curves.

    python -m bench.prompt_loss_weight                      # SmolLM2-135M on CPU, a few minutes
    python -m bench.prompt_loss_weight --model ftserve-tiny # seconds (the tiny model learns nothing useful)
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import DEFAULT_DATA, WORDS, add_lora, completion_loss, load_model, tokenize_all
from ftserve.core.datasets.formats import PromptCompletion
from ftserve.training.batching import step_groups
from ftserve.training.planner import CPU_PACKED_ROW_TOKENS, CostModel, plan_step
from ftserve.training.trainer import LoraTrainer

WEIGHTS = [0.0, 0.01, 0.1, 1.0]


def make_task(n: int, seed: int) -> list[PromptCompletion]:
    """Long prompts, short answers (the regime where prompt loss is said to matter): name the first and last
    word of a 10-40 word list, in a fixed instruction format."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(10, 40))]
        prompt = f"Here is a list of words: {' '.join(words)}.\nQuestion: what are the first and last words?\nAnswer:"
        out.append(PromptCompletion(prompt, f" {words[0]}, {words[-1]}"))
    return out


@torch.no_grad()
def exact_match(model: Any, tok: Any, examples: list[PromptCompletion], max_new_tokens: int = 8) -> float:
    """Fraction of examples whose greedy answer (up to EOS) equals the reference completion."""
    model.eval()
    right = 0
    for ex in examples:
        ids = torch.tensor([tok(ex.prompt)["input_ids"]])
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        text = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        right += text.strip() == ex.completion.strip()
    return right / len(examples)


def train_one(
    args: argparse.Namespace, plw: float, train: list[PromptCompletion], held: list[PromptCompletion]
) -> dict[str, Any]:
    """Fresh LoRA on the base, trained with this prompt_loss_weight; held-out curve and final exact match."""
    device = torch.device("cpu")
    base, tok = load_model(args.data_dir, args.model, device)
    model = add_lora(base, args.seed)
    examples = tokenize_all(tok, train, plw)
    held_tok = tokenize_all(tok, held)
    cost = CostModel.for_model(model.get_base_model())
    groups = [g for epoch in range(args.epochs) for g in step_groups(len(examples), args.batch, args.seed, epoch)]
    trainer = LoraTrainer(model, device, lr=args.lr, total_steps=len(groups), warmup_ratio=0.1)
    curve = [(0, completion_loss(model, tok, held_tok))]
    train_loss = []
    for step, group in enumerate(groups, start=1):
        plan = plan_step([examples[i] for i in group], int(tok.pad_token_id), 4096, cost, "auto", CPU_PACKED_ROW_TOKENS)
        train_loss.append(trainer.step(plan.micro_batches).loss)
        if step % args.eval_every == 0 or step == len(groups):
            curve.append((step, completion_loss(model, tok, held_tok)))
    return {
        "prompt_loss_weight": plw,
        "curve": curve,
        "train_loss": train_loss,
        "exact_match": exact_match(model, tok, held),
    }


def plot(results: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
    for r in results:
        steps, losses = zip(*r["curve"], strict=True)
        left.plot(steps, losses, marker="o", label=f"prompt_loss_weight={r['prompt_loss_weight']:g}")
    left.set_xlabel("optimizer step")
    left.set_ylabel("held-out completion loss (nats/token)")
    left.legend()
    left.grid(alpha=0.3)
    names = [f"{r['prompt_loss_weight']:g}" for r in results]
    right.bar(names, [100 * r["exact_match"] for r in results], color=[f"C{i}" for i in range(len(results))])
    right.set_xlabel("prompt_loss_weight")
    right.set_ylabel("held-out exact match (%)")
    right.set_ylim(0, 100)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--train", type=int, default=48)
    p.add_argument("--held-out", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--plot", type=Path, default=Path("docs/img/plw.png"))
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = p.parse_args()
    args.data_dir = args.data_dir.resolve()
    torch.set_num_threads(args.threads)
    data = make_task(args.train + args.held_out, args.seed)
    train, held = data[: args.train], data[args.train :]
    results = []
    for plw in WEIGHTS:
        start = time.perf_counter()
        results.append(train_one(args, plw, train, held))
        print(f"prompt_loss_weight={plw:g} done in {time.perf_counter() - start:.0f}s", flush=True)
    print(
        f"\n{args.model}: {args.train} training examples x {args.epochs} epochs (batch {args.batch}, lr {args.lr}),"
        f" {args.held_out} held-out\n"
    )
    print("| prompt_loss_weight | held-out completion loss: start → end (best) | exact match |")
    print("|---:|---|---:|")
    for r in results:
        losses = [loss for _, loss in r["curve"]]
        print(
            f"| {r['prompt_loss_weight']:g} | {losses[0]:.3f} → {losses[-1]:.3f} ({min(losses):.3f}) |"
            f" {r['exact_match']:.0%} |"
        )
    plot(results, args.plot, f"{args.model}: first/last word task, {args.train} examples, LoRA r=8")
    print(f"\nplot: {args.plot}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
