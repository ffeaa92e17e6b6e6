"""RFT throughput: ftserve's reinforcement method against TRL's GRPOTrainer on the same prompts, model, LoRA, group
size, completion length and steps, each in its own process.

(trl)     TRL GRPOTrainer with its defaults: generation by `model.generate` (no vLLM), loss_type left as it is,
          gradient checkpointing on, bf16 where ftserve's resolve_dtype picks bf16 (else fp32)
(ftserve) ftserve's Reinforcement method as the worker runs it: rollouts sampled by ftserve's engine in the
          training process on the policy's live LoRA weights, graded in a pool as each group finishes (a python
          grader runs in its sandbox), TRL's GRPO loss, the new weights handed to the engine after each step

Both sample `--group` completions of up to `--tokens` tokens for each of `--batch` prompts per optimizer step
(temperature 1, the same LoRA: rank 8 on all linear layers, the same initialisation, lr, linear decay) and are
rewarded by the same function: the python grader's source run by ftserve's sandbox, and the same source called in
process by TRL's reward function. The table gives rollouts (completions sampled) per second, steps per second,
the ratio ftserve/TRL and both reward curves (mean reward per step); then where ftserve's step spends its time.

    python -m bench.rft_throughput            # SmolLM2-135M-Instruct, 8 steps x 4 prompts x 4 samples x 32 tokens
    python -m bench.rft_throughput --quick    # ftserve-tiny, seconds: checks the script
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common import DEFAULT_DATA, WORDS, add_lora, load_model, settings_for
from bench.mfu import device_name

METHODS = {"trl": "TRL GRPOTrainer defaults (model.generate)", "ftserve": "ftserve reinforcement (engine rollouts)"}
BREVITY = """
def grade(sample, item):
    words = len(sample["output_text"].split())
    return max(0.0, 1.0 - words / 30)
"""
GRADERS: dict[str, dict[str, Any]] = {
    "python": {"type": "python", "name": "brevity", "source": BREVITY},
    "string": {
        "type": "string_check",
        "name": "names_topic",
        "input": "{{sample.output_text}}",
        "reference": "%{{item.topic}}%",
        "operation": "ilike",
    },
}


def make_prompts(n: int) -> list[dict[str, Any]]:
    """n prompts ("Tell me about the <word>."), each with its topic for the grader's item."""
    return [
        {"messages": [{"role": "user", "content": f"Tell me about the {w}."}], "topic": w}
        for w in (WORDS[i % len(WORDS)] for i in range(n))
    ]


def python_reward(source: str) -> Callable[[str, dict[str, Any]], float]:
    """The python grader's `grade` run in this process, as a TRL user's reward function would run it."""
    scope: dict[str, Any] = {}
    exec(compile(source, "<grader>", "exec"), scope)  # the bench's own grader source, trusted
    grade = scope["grade"]
    return lambda text, item: float(grade({"output_text": text, "output_json": None, "output_tools": []}, item))


def run_trl(args: argparse.Namespace, model: Any, tok: Any, lines: list[dict[str, Any]]) -> dict[str, Any]:
    """TRL's GRPOTrainer: one generation of batch x group completions per optimizer step."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from ftserve import graders
    from ftserve.graders.base import Sample

    if args.grader == "python":
        score = python_reward(BREVITY)
    else:
        grader = graders.build(graders_wire(args.grader))
        score = lambda text, item: grader.grade(Sample.from_text(text), item).reward  # noqa: E731

    def reward(prompts: list[Any], completions: list[Any], topic: list[str], **_: Any) -> list[float | None]:
        return [score(c[0]["content"], {"topic": t}) for c, t in zip(completions, topic, strict=True)]

    device = next(model.parameters()).device
    config = GRPOConfig(
        output_dir=str(args.data_dir / "trl-grpo-out"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch * args.group,  # completions: batch prompts x group each
        num_generations=args.group,
        max_completion_length=args.tokens,
        learning_rate=args.lr,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        use_cpu=device.type == "cpu",
        disable_tqdm=True,
        shuffle_dataset=False,  # the same prompts in the same order as ftserve's run
        bf16=next(model.parameters()).dtype == torch.bfloat16,
    )
    rows = [{"prompt": line["messages"], "topic": line["topic"]} for line in lines]
    trainer = GRPOTrainer(
        model=model, reward_funcs=reward, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok
    )
    phases = Phases()
    trainer._generate_single_turn = phases.timed("generate", trainer._generate_single_turn)  # type: ignore[method-assign]
    trainer._calculate_rewards = phases.timed("reward", trainer._calculate_rewards)  # type: ignore[method-assign]
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    logs = [h for h in trainer.state.log_history if "reward" in h]
    note = f"gradient_checkpointing={config.gradient_checkpointing}, bf16={config.bf16}, loss_type={config.loss_type}"
    return {
        "seconds": seconds,
        "rewards": [h["reward"] for h in logs],
        "lengths": [h.get("completions/mean_length") for h in logs],
        "phases": phases.seconds,
        "note": note,
    }


def graders_wire(kind: str) -> Any:
    """The grader's wire model (what a job's method carries)."""
    from pydantic import TypeAdapter

    from ftserve.core.schemas.graders import Grader as WireGrader

    return TypeAdapter(WireGrader).validate_python(GRADERS[kind])


class Phases:
    """Wall seconds per named phase, summed over calls (phases may overlap: grading runs in a pool)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **kw: Any) -> Any:
            began = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - began
                self.calls[name] = self.calls.get(name, 0) + 1

        return wrapper


def run_ftserve(args: argparse.Namespace, model: Any, tok: Any, lines: list[dict[str, Any]]) -> dict[str, Any]:
    """ftserve's Reinforcement method on LoraTrainer, as the worker's loop steps it, with each phase timed."""
    from ftserve import graders
    from ftserve.models.chat import render_chat
    from ftserve.training.hyperparams import GROUP_PER_COMPUTE, ReinforcementResolved
    from ftserve.training.methods.reinforcement import Reinforcement
    from ftserve.training.methods.rft_data import PromptItem
    from ftserve.training.rollouts import Rollouts
    from ftserve.training.trainer import LoraTrainer

    device = next(model.parameters()).device
    settings = settings_for(args.data_dir)
    prompts = [PromptItem(_ids(tok, render_chat(tok, line["messages"], True)), line) for line in lines]
    limits = graders.limits_for(settings.python_grader_timeout_seconds, settings.python_grader_memory_bytes)
    grader = graders.build(graders_wire(args.grader), limits)
    hp = ReinforcementResolved(args.group / GROUP_PER_COMPUTE, 10**9, 0, "default")  # group_size == args.group
    assert hp.group_size == args.group
    rollouts = Rollouts(model, tok, settings.engine(), device, "bench")
    method = Reinforcement(model, tok, prompts, [], grader, rollouts, hp, args.tokens, args.seed, device)
    phases = Phases()
    sample = phases.timed("sample + grading tail", method._sample)
    method._sample = sample  # type: ignore[method-assign]
    rollouts.sample = phases.timed("sampling (engine)", rollouts.sample)  # type: ignore[method-assign]
    method._grade = phases.timed("grading (pool, overlaps sampling)", method._grade)  # type: ignore[method-assign]
    method._backward = phases.timed("loss forward + backward", method._backward)  # type: ignore[method-assign]
    rollouts.publish = phases.timed("publish LoRA snapshot", rollouts.publish)  # type: ignore[method-assign]
    start = time.perf_counter()
    trainer = LoraTrainer(model, device, lr=args.lr, total_steps=args.steps)
    trainer.finish_step = phases.timed("optimizer step", trainer.finish_step)  # type: ignore[method-assign]
    method.prepare(trainer, resumed=False)
    batches = [list(range(s * args.batch, (s + 1) * args.batch)) for s in range(args.steps)]
    steps = [method.train_step(trainer, batch, s + 1) for s, batch in enumerate(batches)]
    seconds = time.perf_counter() - start
    admissions = list(rollouts.engine.scheduler.admissions)
    method.close()
    trainer.close()
    p = phases.seconds
    p["grading tail (after sampling)"] = p.pop("sample + grading tail") - p["sampling (engine)"]
    return {
        "seconds": seconds,
        "rewards": [s.metrics["train_reward_mean"] for s in steps],
        "lengths": [s.metrics["train_sample_tokens_mean"] for s in steps],
        "phases": p,
        "grader_errors": sum(float(s.metrics["train_grader_errors"] or 0) for s in steps),
        "admissions": admissions,  # (rows admitted, rows already running) per prefill
        "note": f"batch window {settings.batch_window_ms} ms, max {settings.max_batch_rows} rows",
    }


def _ids(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False).input_ids)


def child(args: argparse.Namespace) -> None:
    """Run one method in this process and print its figures as one JSON line."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_model(args.data_dir, args.model, device)
    model = add_lora(model, args.seed)
    lines = make_prompts(args.steps * args.batch)
    result = run_ftserve(args, model, tok, lines) if args.child == "ftserve" else run_trl(args, model, tok, lines)
    result |= {"method": args.child, "rollouts": args.steps * args.batch * args.group, "device": device.type}
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="a built-in base")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per method")
    p.add_argument("--batch", type=int, default=4, help="prompts per optimizer step")
    p.add_argument("--group", type=int, default=4, help="completions per prompt (ftserve: 4 x compute_multiplier)")
    p.add_argument("--tokens", type=int, default=32, help="max completion tokens")
    p.add_argument("--lr", type=float, default=2e-3, help="ftserve's 2e-4 x learning_rate_multiplier 10")
    p.add_argument("--grader", choices=sorted(GRADERS), default="python")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default="trl,ftserve")
    p.add_argument("--quick", action="store_true", help="ftserve-tiny, 2 steps x 2 prompts x 2 samples x 8 tokens")
    # On a shared CPU one thread per process gives far steadier timings (no OpenMP barrier stalls).
    p.add_argument("--threads", type=int, default=1 if not torch.cuda.is_available() else torch.get_num_threads())
    p.add_argument("--json-out", type=Path, help="also write every figure to this JSON file")
    p.add_argument("--child", choices=sorted(METHODS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.model, args.steps, args.batch, args.group, args.tokens = "ftserve-tiny", 2, 2, 2, 8
    args.data_dir = args.data_dir.resolve()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    header = _describe(args)
    results = {m: _spawn(m, args) for m in args.methods.split(",")}
    print(_table(results))
    if "ftserve" in results:
        print(_profile(results["ftserve"]))
    if args.json_out:
        args.json_out.write_text(json.dumps(header | {"methods": results}, indent=1))


def _describe(args: argparse.Namespace) -> dict[str, Any]:
    """Print (and return) what runs where: the CPU, the load, the prompts as both sides tokenize them."""
    from ftserve.models.chat import render_chat

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _, tok = load_model(args.data_dir, args.model, device)
    lines = make_prompts(args.steps * args.batch)
    ours = [_ids(tok, render_chat(tok, line["messages"], True)) for line in lines]
    theirs = [_template_ids(tok, line["messages"]) for line in lines]
    lengths = sorted(len(ids) for ids in ours)
    same = "the same tokens" if ours == theirs else "DIFFERENT tokens"
    header = {
        "device_name": device_name(device),
        "model": args.model,
        "steps": args.steps,
        "batch": args.batch,
        "group": args.group,
        "tokens": args.tokens,
        "grader": args.grader,
        "threads": args.threads,
        "load_average": os.getloadavg()[0],
    }
    print(f"{device_name(device)}; torch threads {args.threads} per process; load average {header['load_average']:.1f}")
    print(f"model {args.model}; {args.steps} steps x {args.batch} prompts x {args.group} samples of up to "
          f"{args.tokens} tokens; {args.grader} grader; lr {args.lr}")  # fmt: skip
    print(f"prompt tokens {lengths[0]}..{lengths[-1]} (ftserve's renderer and TRL's chat template give {same})\n")
    return header


def _template_ids(tok: Any, messages: list[dict[str, Any]]) -> list[int]:
    """The prompt's tokens as TRL makes them (the chat template, tokenized, generation prompt added)."""
    out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(out["input_ids"])


def _spawn(method: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.rft_throughput", "--child", method, "--model", args.model]
    cmd += ["--data-dir", str(args.data_dir), "--steps", str(args.steps), "--batch", str(args.batch)]
    cmd += ["--group", str(args.group), "--tokens", str(args.tokens), "--lr", str(args.lr), "--grader", args.grader]
    cmd += ["--seed", str(args.seed), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"method {method} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return dict(json.loads(line.removeprefix("RESULT ")))


def _table(results: dict[str, dict[str, Any]]) -> str:
    out = ["| method | rollouts/s | steps/s | vs TRL | time s | mean reward per step | mean sample tokens | note |"]
    out.append("|---|---:|---:|---:|---:|---|---|---|")
    base = results.get("trl")
    for m, r in results.items():
        rate = r["rollouts"] / r["seconds"]
        vs = f"{base['seconds'] / r['seconds']:.2f}x" if base else "-"
        rewards = " / ".join(f"{x:.3f}" for x in r["rewards"])
        lengths = " / ".join(f"{x:.1f}" for x in r["lengths"] if x is not None)
        out.append(
            f"| {METHODS[m]} | {rate:.2f} | {len(r['rewards']) / r['seconds']:.3f} | {vs} | {r['seconds']:.1f} | "
            f"{rewards} | {lengths} | {r['note']} |"
        )
    return "\n".join(out)


def _profile(r: dict[str, Any]) -> str:
    total = r["seconds"]
    out = [f"\nWhere ftserve's {total:.1f} s went (grading overlaps sampling; the rest is the loop's own):"]
    out += ["| phase | s | share |", "|---|---:|---:|"]
    serial = 0.0
    for name, s in r["phases"].items():
        out.append(f"| {name} | {s:.2f} | {s / total:.0%} |")
        serial += 0.0 if name.startswith("grading (pool") else s
    out.append(f"| other | {total - serial:.2f} | {(total - serial) / total:.0%} |")
    prefills = r["admissions"]
    joined = sum(1 for _, running in prefills if running)
    out.append(f"\nengine prefills: {len(prefills)} (rows each: {[n for n, _ in prefills]}); {joined} joined a running "
               f"batch; grader errors {r['grader_errors']:.0f}")  # fmt: skip
    return "\n".join(out)


if __name__ == "__main__":
    main()
