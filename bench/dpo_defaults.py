"""DPO's "auto" hyperparameters, measured: SFT → DPO on a small JSON-label task through the worker's own
pipeline (in-process, SQLite, real storage), for a grid of learning-rate multipliers and betas.

SFT teaches `{"label": "food"}`-style answers to "classify this sentence" prompts (60 lines); DPO then
prefers the upper-case label (`{"label": "FOOD"}` over `{"label": "food"}`) on 30 other prompts, starting
from the SFT model (its reference). On 20 held-out prompts each run reports:

- valid: greedy answers that are exactly one JSON object `{"label": L}` with L from the set (any case)
- right: of those, the right label;  style: answers with the upper-case (preferred) label
- logp pref / non: mean summed log-prob of the preferred and the other reply (end-of-turn included)
- shift: (pref − non) after DPO minus (pref − non) of the SFT model, in nats
- the job's own first/last train_mean_token_accuracy and last reward margin, and its warn events

    OMP_NUM_THREADS=1 python -m bench.dpo_defaults --lr 1.0 0.3 --batch 1 --each-epoch
    python -m bench.dpo_defaults --reuse-sft data/bench/dpo-defaults-… --lr 1.0 0.5 0.3 --batch 4
    python -m bench.dpo_defaults --reuse-sft data/bench/dpo-defaults-… --defaults --lr   # all "auto"

(the grids and results of docs/training.md#dpos-auto-hyperparameters-measured)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from sqlalchemy import select

from bench.common import DEFAULT_DATA
from ftserve.control.db.migrate import upgrade_head
from ftserve.control.db.session import session_scope
from ftserve.control.db.tables import Job, JobEvent
from ftserve.control.services.files import create_upload
from ftserve.control.services.jobs import create_job
from ftserve.core.config import Settings
from ftserve.core.datasets.formats import Message, Preference
from ftserve.core.schemas.jobs import JobCreate
from ftserve.core.storage import Storage
from ftserve.models.bases import load_base, prepare_base
from ftserve.models.chat import render_chat
from ftserve.training.methods.dpo_reference import compute
from ftserve.training.preference import tokenize_pair
from ftserve.worker.gang import run_job
from tests.jobrows import job_and_events
from tests.label_data import judge, pair_rows, reply, sft_rows, split

BASE = "smollm2-135m-instruct"
ORG = "personal"


class Chain:
    """One data dir (SQLite, local storage) whose jobs run through the worker's pipeline in this process."""

    def __init__(self, root: Path, bases: Path) -> None:
        os.environ["FTSERVE_DATA_DIR"] = str(root)
        # Every epoch's checkpoint is kept, so --each-epoch can measure them.
        self.settings = Settings(data_dir=root, bases_dir=bases, checkpoints_keep=50)
        root.mkdir(parents=True, exist_ok=True)
        upgrade_head(self.settings.resolved_database_url())

    def upload(self, rows: list[dict[str, Any]]) -> str:
        body = "".join(json.dumps(r) + "\n" for r in rows).encode()

        async def chunks() -> AsyncIterator[bytes]:
            yield body

        async def go() -> str:
            with session_scope(self.settings) as s:
                return (await create_upload(s, self.settings, ORG, "data.jsonl", "fine-tune", chunks())).id

        return asyncio.run(go())

    def run(self, **kw: Any) -> tuple[Job, list[JobEvent], float]:
        with session_scope(self.settings) as s:
            job_id = create_job(s, self.settings, ORG, JobCreate(**kw)).id
        began = time.monotonic()
        run_job(job_id, self.settings)
        job, events = job_and_events(self.settings, job_id)
        assert job.status == "succeeded", job.error
        return job, events, time.monotonic() - began

    def adapter(self, job: Job) -> Path:
        return Storage(self.settings).adapter_dir(job.id, None)


class Judge:
    """The base in the worker's dtype, with an adapter loaded per evaluated model."""

    def __init__(self, settings: Settings) -> None:
        self.base, self.tok = load_base(settings, BASE, torch.device("cpu"))
        self.device = torch.device("cpu")

    def measure(self, adapter: Path, held: list[tuple[str, str]]) -> dict[str, float]:
        model = PeftModel.from_pretrained(self.base, str(adapter))
        model.eval()
        try:
            valid = right = style = 0
            samples = []
            for p, label in held:
                text = render_chat(self.tok, [{"role": "user", "content": p}], add_generation_prompt=True)
                ids = self.tok(text, return_tensors="pt", add_special_tokens=False).input_ids
                with torch.no_grad():
                    out = model.generate(
                        input_ids=ids, max_new_tokens=16, do_sample=False, pad_token_id=self.tok.eos_token_id
                    )
                answer = self.tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
                v, r, st = judge(answer, label)
                valid, right, style = valid + v, right + r, style + st
                if not v:
                    samples.append(answer)
            pairs = [
                tokenize_pair(self.tok, Preference((Message("user", p),), reply(lab, True), reply(lab, False)))
                for p, lab in held
            ]
            logps = compute(model, pairs, 1024, self.device)
        finally:
            model.unload()  # leaves the base as it was
            del model
        n = len(held)
        return {
            "valid": valid / n,
            "right": right / n,
            "style": style / n,
            "logp_pref": float(logps[:, 0].mean()),
            "logp_non": float(logps[:, 1].mean()),
            "gap": float((logps[:, 0] - logps[:, 1]).mean()),
            "invalid": samples[:3],
        }


def job_figures(events: list[JobEvent], upto: int | None = None) -> dict[str, Any]:
    """The job's own step metrics (up to step `upto`) and its warnings."""
    steps = sorted((e.data for e in events if e.type == "metrics" and e.data), key=lambda d: d["step"])
    steps = [m for m in steps if upto is None or m["step"] <= upto]
    warns = [e.message for e in events if e.level == "warn" and (upto is None or (e.data or {})["step"] <= upto)]
    accuracy = [m["train_mean_token_accuracy"] for m in steps]
    return {
        "steps": len(steps),
        "acc_first": accuracy[0],
        "acc_last": accuracy[-1],
        "acc_min": min(accuracy),
        "margin_last": steps[-1].get("train_reward_margin"),
        "chosen_last": steps[-1].get("train_chosen_reward"),
        "warn": len(warns),
        "warnings": warns,
        "series": [
            {k: m.get(k) for k in ("step", "train_mean_token_accuracy", "train_chosen_reward", "train_reward_margin")}
            for m in steps
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lr", type=float, nargs="*", default=[1.0, 0.3, 0.1, 0.03], help="multipliers (none: no grid)")
    ap.add_argument("--beta", nargs="+", default=["0.1"], help='betas to try ("auto" for the default)')
    ap.add_argument("--epochs", nargs="+", default=["auto"], help='n_epochs values ("auto" for the default)')
    ap.add_argument("--batch", nargs="+", default=["auto"], help='batch sizes ("auto" for the default)')
    ap.add_argument("--defaults", action="store_true", help="also run DPO with every hyperparameter 'auto'")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=None, help="append one JSON line per run here")
    ap.add_argument("--each-epoch", action="store_true", help="also measure each epoch's checkpoint")
    ap.add_argument("--reuse-sft", type=Path, default=None, help="an earlier run's data dir: DPO from its SFT model")
    ap.add_argument("--only", nargs="*", default=[], help="with --evaluate: these job ids only")
    ap.add_argument("--evaluate", type=Path, default=None, help="measure the jobs of an earlier run's data dir")
    args = ap.parse_args()
    if args.evaluate:
        evaluate(args.evaluate, args.data_dir / "bases", args.each_epoch, args.out, args.only)
        return

    bases = args.data_dir / "bases"
    prepare_base(Settings(data_dir=args.data_dir, bases_dir=bases), BASE, lambda m: print(m, file=sys.stderr))
    sft_data, dpo_data, held = split()
    if args.reuse_sft:  # an earlier run's data dir: its first job is the SFT model
        chain = Chain(args.reuse_sft, bases)
        sft, sft_s = first_job(chain), 0.0
    else:
        chain = Chain(Path(tempfile.mkdtemp(prefix="dpo-defaults-", dir=args.data_dir)), bases)
        sft, _, sft_s = chain.run(model=BASE, training_file=chain.upload(sft_rows(sft_data)), suffix="sft", seed=0)
    judge_ = Judge(chain.settings)
    before = judge_.measure(chain.adapter(sft), held)
    print(f"# threads={torch.get_num_threads()} SFT: {len(sft_data)} lines, {sft.hyperparameters}, {sft_s:.0f} s")
    print(f"# SFT model: {json.dumps(before)}", flush=True)
    pairs = chain.upload(pair_rows(dpo_data))

    def auto(value: str) -> Any:
        return value if value == "auto" else float(value)

    grid: list[dict[str, Any]] = []
    if args.defaults:
        grid.append({})
    for beta in args.beta:
        for epochs in args.epochs:
            for batch in args.batch:
                for lr in args.lr:
                    hp = {"learning_rate_multiplier": lr, "beta": auto(beta), "n_epochs": auto(epochs)}
                    hp["batch_size"] = auto(batch)
                    grid.append({k: int(v) if k in ("n_epochs", "batch_size") and v != "auto" else v
                                 for k, v in hp.items()})  # fmt: skip
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    for hp in grid:
        method = {"type": "dpo", "dpo": {"hyperparameters": hp}}
        job, events, seconds = chain.run(model=sft.fine_tuned_model, training_file=pairs, suffix="dpo", seed=0,
                                         method=method)  # fmt: skip
        report(chain, judge_, job, events, before, held, args.each_epoch, args.out, seconds)


HEADER = (
    "| lr × | β | epochs | batch | steps | valid | right | style | logp pref | logp non | shift "
    "| acc first→last (min) | margin | warn | s |"
)


def report(
    chain: Chain,
    judge_: Judge,
    job: Job,
    events: list[JobEvent],
    before: dict[str, Any],
    held: list[tuple[str, str]],
    each_epoch: bool,
    out: Path | None,
    seconds: float,
) -> None:
    """One table row for the job's final model (with each_epoch, one per checkpoint first)."""
    r = job.hyperparameters
    fig = job_figures(events)
    per_epoch = fig["steps"] // r["n_epochs"]
    ends = [per_epoch * e for e in range(1, r["n_epochs"] + 1)] if each_epoch else [fig["steps"]]
    for end in ends:
        final = end == fig["steps"]
        adapter = chain.adapter(job) if final else Storage(chain.settings).adapter_dir(job.id, end)
        if not (adapter / "adapter_config.json").is_file():
            continue  # rotated out by a run with fewer checkpoints kept
        after = judge_.measure(adapter, held)
        upto = job_figures(events, end)
        shift = after["gap"] - before["gap"]
        epochs = r["n_epochs"] if final else f"{end // per_epoch} of {r['n_epochs']}"
        print(
            f"| {r['learning_rate_multiplier']} | {r['beta']} | {epochs} | {r['batch_size']} | {end} "
            f"| {after['valid']:.0%} | {after['right']:.0%} | {after['style']:.0%} | {after['logp_pref']:.2f} "
            f"| {after['logp_non']:.2f} | {shift:+.2f} | {upto['acc_first']:.2f}→{upto['acc_last']:.2f} "
            f"({upto['acc_min']:.2f}) | {upto['margin_last']:.2f} | {upto['warn']} | {seconds:.0f} |",
            flush=True,
        )
        print(f"#   invalid: {after['invalid']!r}", flush=True)
        if out:
            with out.open("a") as f:
                f.write(json.dumps({"resolved": r, "step": end, "before": before, "after": after, **upto,
                                    "seconds": seconds}) + "\n")  # fmt: skip


def succeeded(chain: Chain) -> list[Job]:
    """The data dir's succeeded jobs, oldest first."""
    with session_scope(chain.settings) as s:
        jobs = list(s.scalars(select(Job).where(Job.status == "succeeded").order_by(Job.created_at)).all())
        s.expunge_all()
    return jobs


def first_job(chain: Chain) -> Job:
    return succeeded(chain)[0]


def evaluate(root: Path, bases: Path, each_epoch: bool, out: Path | None, only: list[str]) -> None:
    """The table for the DPO jobs an earlier run left in its data dir (its SFT job's model as `before`)."""
    chain = Chain(root, bases)
    judge_ = Judge(chain.settings)
    _, _, held = split()
    jobs = succeeded(chain)
    sft = jobs[0]  # the run trains SFT first
    before = judge_.measure(chain.adapter(sft), held)
    print(f"# SFT model: {json.dumps(before)}")
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    for job in jobs:
        if job is not sft and (not only or job.id in only):
            report(chain, judge_, job, job_and_events(chain.settings, job.id)[1], before, held, each_epoch, out, 0)


if __name__ == "__main__":
    main()
