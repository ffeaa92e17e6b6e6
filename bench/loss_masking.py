"""`labels = input_ids`, or completion-only? Measured through ftserve's own API on the seed's format (a system
line, numbered references, a question → a short answer found in one of the references): a real `ftserve up`,
fine-tuning jobs with `extensions.prompt_loss_weight` in {0, 0.01, 0.1, 1} × three seeds, and every fine-tuned
model and the base evaluated by ONE eval through `/v1/evals` (string_check exact and contains, text_similarity
fuzzy_match) on held-out items whose entities never occur in training: the answer must be read from the prompt,
not remembered. Reports each criterion's pass rate per weight (mean and min–max over seeds) and train time, as a
markdown table and a PNG.

    python -m bench.loss_masking           # SmolLM2-135M-Instruct, 12 jobs + 13 eval runs (~40 min, shared 2 cores)
    python -m bench.loss_masking --quick   # ftserve-tiny, one seed, two steps per job: a smoke run (~1 min)

(the experiment of docs/loss-masking.md)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openai import OpenAI

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ftserve.core.config import Settings  # noqa: E402
from ftserve.models.bases import prepare_base  # noqa: E402
from tests.servers import Service, start_embedded  # noqa: E402

WEIGHTS = [0.0, 0.01, 0.1, 1.0]
SYSTEM = "Answer the question from the numbered references. Reply with the answer only, exactly as written there."
USER = "References:\n{references}\n\nQuestion: {question}"
# The eval's input_messages render an item into the very messages the training lines hold (checked on the
# first output item): the same system line, the same user turn.
TEMPLATE = [
    {"role": "system", "content": "{{item.system}}"},
    {"role": "user", "content": USER.format(references="{{item.references}}", question="{{item.question}}")},
]
ITEM_SCHEMA = {
    "type": "object",
    "properties": {k: {"type": "string"} for k in ("system", "references", "question", "answer")},
    "required": ["system", "references", "question", "answer"],
}
CRITERIA: list[dict[str, Any]] = [
    {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
     "operation": "eq"},
    {"type": "string_check", "name": "contains", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
     "operation": "ilike"},
    {"type": "text_similarity", "name": "fuzzy", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
     "evaluation_metric": "fuzzy_match", "pass_threshold": 0.8},
]  # fmt: skip
NAMES = [c["name"] for c in CRITERIA]
RUN_ENDS = ("completed", "failed", "canceled")

# Facts about invented places: (reference sentence, question, answer values). Every prompt holds several facts
# of the same kind about different places, so the question's place must be found, not guessed.
RELATIONS: list[tuple[str, str, list[str]]] = [
    ("The main export of {e} is {a}.", "What is the main export of {e}?",
     ["copper", "wool", "salt", "timber", "olive oil", "silk", "amber", "tin", "cotton", "honey", "marble", "tea"]),
    ("The river that runs through {e} is the {a}.", "Which river runs through {e}?",
     ["Ossel", "Varn", "Teluk", "Brisa", "Manto", "Quell", "Sarrow", "Ilde", "Ferra", "Noss", "Umbra", "Kesh"]),
    ("{e} was founded in {a}.", "In what year was {e} founded?",
     ["1204", "1388", "1512", "1647", "1731", "1806", "1859", "1902", "1044", "1275", "1590", "1768"]),
    ("The mayor of {e} is {a}.", "Who is the mayor of {e}?",
     ["Ada Brandt", "Tomas Iver", "Lena Okafor", "Piet Marov", "Sara Lind", "Omar Hale", "Ines Duarte",
      "Karl Weiss", "Mira Sol", "Jon Arke", "Eva Kurz", "Ravi Desai"]),
    ("The football team of {e} plays in {a}.", "What colour does the football team of {e} play in?",
     ["red", "blue", "green", "yellow", "black", "white", "orange", "purple", "grey", "maroon", "teal", "gold"]),
]  # fmt: skip
SYLLABLES = "ka ro mi ven tal or ba lu sen dra fel mor qui za thu nel ost par rin ge vo lam ist cor".split()  # noqa: SIM905


@dataclass(frozen=True)
class Example:
    references: str
    question: str
    answer: str

    def messages(self) -> list[dict[str, str]]:
        user = USER.format(references=self.references, question=self.question)
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]

    def chat_line(self) -> dict[str, Any]:
        return {"messages": [*self.messages(), {"role": "assistant", "content": self.answer}]}

    def item(self) -> dict[str, Any]:
        return {"item": {"system": SYSTEM, "references": self.references, "question": self.question,
                         "answer": self.answer}}  # fmt: skip


def place_names(rng: random.Random, n: int) -> list[str]:
    """n distinct invented place names (two or three syllables)."""
    names: set[str] = set()
    while len(names) < n:
        names.add("".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize())
    return sorted(names)


def make_examples(places: list[str], n: int, refs: int, rng: random.Random) -> list[Example]:
    """n prompts of `refs` numbered facts about these places (most of one relation, the rest of others) and a
    question about one of them whose answer is in its reference."""
    out = []
    for _ in range(n):
        relation = rng.randrange(len(RELATIONS))
        chosen = rng.sample(places, refs)
        facts = []
        for i, place in enumerate(chosen):
            # Two of three facts share the question's relation: the right one must be told apart by its place.
            r = relation if i == 0 or rng.random() < 0.66 else rng.randrange(len(RELATIONS))
            sentence, _, values = RELATIONS[r]
            facts.append((place, r, rng.choice(values), sentence))
        target = facts[0]
        rng.shuffle(facts)
        references = "\n".join(f"[{i}] {s.format(e=p, a=a)}" for i, (p, _, a, s) in enumerate(facts, start=1))
        out.append(Example(references, RELATIONS[relation][1].format(e=target[0]), target[2]))
    return out


def make_data(n_train: int, n_valid: int, n_held: int, refs: int, seed: int) -> tuple[list[Example], ...]:
    """Training, validation and held-out examples; the held-out places never occur in training or validation."""
    rng = random.Random(seed)
    places = place_names(rng, 160)
    rng.shuffle(places)
    seen, unseen = places[:100], places[100:]
    return (
        make_examples(seen, n_train, refs, rng),
        make_examples(seen, n_valid, refs, rng),
        make_examples(unseen, n_held, refs, rng),
    )


def upload(client: OpenAI, path: Path, rows: list[dict[str, Any]], purpose: Any) -> str:
    """These rows as a JSONL file of this purpose; its id."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with path.open("rb") as f:
        return client.files.create(file=f, purpose=purpose).id


def wait(fetch: Any, done: tuple[str, ...], timeout: float, every: float = 1.0) -> Any:
    """Poll fetch() until its status is one of `done`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = fetch()
        if obj.status in done:
            return obj
        time.sleep(every)
    raise TimeoutError(f"{obj.id} still {obj.status} after {timeout:.0f}s")


def train_seconds(client: OpenAI, job: Any) -> float:
    """From the job's first event (the worker picked it up) to its end: queueing behind other jobs excluded."""
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    return float(job.finished_at - min(e.created_at for e in events))


def pass_rates(run: Any) -> dict[str, float]:
    """Each criterion's pass rate over the run's items (errored items count as not passed)."""
    total = run.result_counts.total
    return {c.testing_criteria: c.passed / total for c in run.per_testing_criteria_results}


def check_template(client: OpenAI, run: Any, held: list[Example]) -> None:
    """The eval's input_messages rendered the first held-out item into the messages its training lines would hold."""
    items = client.evals.runs.output_items.list(run.id, eval_id=run.eval_id, limit=100)
    first = next(i for i in items if i.datasource_item_id == 0)
    got = [{"role": m.role, "content": m.content} for m in first.sample.input]
    assert got == held[0].messages(), (got, held[0].messages())


def experiment(args: argparse.Namespace, service: Service, workdir: Path) -> dict[str, Any]:
    """Upload, train every (weight, seed), run the one eval on the base and each model; the raw results."""
    client = OpenAI(base_url=f"{service.base_url}/v1", api_key="bench", max_retries=2, timeout=300)
    train, valid, held = make_data(args.train, args.valid, args.held_out, args.refs, args.data_seed)
    training_file = upload(client, workdir / "train.jsonl", [e.chat_line() for e in train], "fine-tune")
    validation_file = upload(client, workdir / "valid.jsonl", [e.chat_line() for e in valid], "fine-tune")
    items = upload(client, workdir / "held.jsonl", [e.item() for e in held], "evals")
    ev = client.evals.create(
        name=f"loss masking: {len(held)} held-out reference questions",
        data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA, "include_sample_schema": True},
        testing_criteria=CRITERIA,  # type: ignore[arg-type]
    )

    def run_on(model: str, name: str) -> Any:
        return client.evals.runs.create(
            ev.id,
            name=name,
            data_source={
                "type": "completions",
                "model": model,
                "source": {"type": "file_id", "id": items},
                "input_messages": {"type": "template", "template": TEMPLATE},
                "sampling_params": {"temperature": 0.0, "max_completion_tokens": args.max_tokens},
            },  # type: ignore[arg-type]
        )

    base = {"model": args.base, "weight": None, "seed": None}
    runs: list[tuple[dict[str, Any], Any]] = [(base, run_on(args.base, "base"))]
    hp = {"n_epochs": args.epochs, "batch_size": args.batch, "learning_rate_multiplier": args.lr_multiplier}
    for seed in range(args.seeds):
        for weight in args.weights:
            job = client.fine_tuning.jobs.create(
                model=args.base,
                training_file=training_file,
                validation_file=validation_file,
                suffix=f"plw{weight:g}-s{seed}",
                seed=seed,
                method={"type": "supervised", "supervised": {"hyperparameters": hp}},
                extra_body={"extensions": {"prompt_loss_weight": weight}},
            )
            job = wait(lambda j=job: client.fine_tuning.jobs.retrieve(j.id), ("succeeded", "failed", "cancelled"), 3600)
            assert job.status == "succeeded", job.error
            seconds = train_seconds(client, job)
            print(f"plw={weight:g} seed={seed}: {job.fine_tuned_model} trained in {seconds:.0f}s"
                  f" ({job.trained_tokens} tokens)", flush=True)  # fmt: skip
            # The model's eval run goes while the next job trains (the inference role and the worker share the CPU).
            meta = {"model": job.fine_tuned_model, "weight": weight, "seed": seed, "train_s": seconds,
                    "trained_tokens": job.trained_tokens, "job": job.id}  # fmt: skip
            runs.append((meta, run_on(job.fine_tuned_model, f"plw={weight:g} seed={seed}")))
    results = []
    for meta, run in runs:
        run = wait(lambda r=run: client.evals.runs.retrieve(r.id, eval_id=ev.id), RUN_ENDS, 3600)
        assert run.status == "completed", run.error
        results.append({**meta, "run": run.id, "rates": pass_rates(run), "counts": run.result_counts.model_dump(),
                        "usage": [u.model_dump() for u in run.per_model_usage]})  # fmt: skip
        print(f"{meta['model']}: {run.result_counts.model_dump()} {results[-1]['rates']}", flush=True)
    check_template(client, runs[0][1], held)
    listed = client.evals.runs.output_items.list(runs[-1][1].id, eval_id=ev.id, limit=100)
    sample = sorted(listed, key=lambda i: i.datasource_item_id)[:5]
    answers = [(i.datasource_item["answer"], i.sample.output[0].content if i.sample.output else None) for i in sample]
    return {"eval": ev.id, "results": results, "answers_last_model": answers}


def summary(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per weight: each criterion's mean, min and max pass rate over seeds, and the mean train time."""
    rows = []
    for weight in WEIGHTS:
        runs = [r for r in results if r["weight"] == weight]
        if not runs:
            continue
        rates = {n: [r["rates"][n] for r in runs] for n in NAMES}
        rows.append({
            "weight": weight,
            "seeds": len(runs),
            **{n: (statistics.mean(v), min(v), max(v)) for n, v in rates.items()},
            "train_s": statistics.mean(r["train_s"] for r in runs),
        })  # fmt: skip
    return rows


def table(results: list[dict[str, Any]]) -> str:
    """The markdown table: the base, then each weight's mean (min–max) per criterion and train time."""
    head = "| model | " + " | ".join(f"{n} (mean, min–max)" for n in NAMES) + " | train time (s) |"
    lines = [head, "|---|" + "---:|" * (len(NAMES) + 1)]
    base = next(r for r in results if r["weight"] is None)
    lines.append("| base | " + " | ".join(f"{base['rates'][n]:.0%}" for n in NAMES) + " | – |")
    for row in summary(results):
        cells = [f"**{m:.0%}** ({lo:.0%}–{hi:.0%})" for m, lo, hi in (row[n] for n in NAMES)]
        label = f"prompt_loss_weight {row['weight']:g} ({row['seeds']} seeds)"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {row['train_s']:.0f} |")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path, title: str) -> None:
    """One panel per criterion: each seed's pass rate as a dot, the mean as a bar, the base as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(NAMES), figsize=(3.2 * len(NAMES), 3.2), sharey=True)
    base = next(r for r in results if r["weight"] is None)
    rows = summary(results)
    for ax, name in zip(axes, NAMES, strict=True):
        xs = range(len(rows))
        ax.bar(xs, [100 * row[name][0] for row in rows], color=[f"C{i}" for i in xs], alpha=0.5)
        for x, row in zip(xs, rows, strict=True):
            seeds = [100 * r["rates"][name] for r in results if r["weight"] == row["weight"]]
            ax.plot([x] * len(seeds), seeds, "ko", ms=3)
        ax.axhline(100 * base["rates"][name], ls="--", color="grey", label="base")
        ax.set_xticks(list(xs), [f"{row['weight']:g}" for row in rows])
        ax.set_xlabel("prompt_loss_weight")
        ax.set_title(name)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("held-out pass rate (%)")
    axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def stop_group(service: Service) -> None:
    """Kill what is left of the server's process group: `ftserve up`'s Celery worker waits out a job on SIGTERM."""
    for proc in service.procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.proc.pid, signal.SIGKILL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="smollm2-135m-instruct")
    ap.add_argument("--quick", action="store_true", help="ftserve-tiny, one seed, two steps per job: a smoke run")
    ap.add_argument("--weights", type=float, nargs="+", default=WEIGHTS, help="prompt_loss_weight values")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train", type=int, default=64)
    ap.add_argument("--valid", type=int, default=10, help="validation lines (10, the least a file may hold)")
    ap.add_argument("--held-out", type=int, default=48)
    ap.add_argument("--refs", type=int, default=5, help="numbered references per prompt")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr-multiplier", type=float, default=5.0, help="× the base's learning rate (SmolLM2: 2e-4)")
    ap.add_argument("--max-tokens", type=int, default=12, help="max_completion_tokens of each eval sample")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--data", type=Path, default=Path("data/bench"), help="holds bases/ (prepared once)")
    ap.add_argument("--plot", type=Path, default=Path("docs/img/loss-masking.png"))
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = ap.parse_args()
    if args.quick:
        args.base, args.seeds, args.train, args.valid, args.held_out, args.epochs = "ftserve-tiny", 1, 16, 10, 8, 1
        args.lr_multiplier = 1.0
        args.plot = args.data / "loss-masking-quick.png"

    bases = args.data.resolve() / "bases"
    prepare_base(Settings(data_dir=args.data, bases_dir=bases), args.base, lambda m: print(m, file=sys.stderr))
    load = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ftserve-loss-masking-") as tmp:
        service = start_embedded(Path(tmp), bases, FTSERVE_PREPARE_BASES="[]", OMP_NUM_THREADS=str(args.threads))
        try:
            out = experiment(args, service, Path(tmp))
        except BaseException:
            print(service.logs()[-4000:], file=sys.stderr)
            raise
        finally:
            service.stop()
            stop_group(service)
    wall = time.perf_counter() - started
    load_end = os.getloadavg()
    print(
        f"\n{args.base}: {args.train} training lines ({args.refs} references each) × {args.epochs} epochs, batch"
        f" {args.batch}, lr × {args.lr_multiplier:g}, seeds 0–{args.seeds - 1}; {args.held_out} held-out items;"
        f" OMP_NUM_THREADS={args.threads}, {os.cpu_count()} CPUs; {wall / 60:.1f} min wall;"
        f" load average {load[0]:.2f} at start, {load_end[0]:.2f} at end (15-min {load_end[2]:.2f})\n"
    )
    print(table(out["results"]))
    print(f"\nlast model's first answers (reference, sample): {out['answers_last_model']}")
    title = (f"{args.base}: {args.train} lines × {args.epochs} epochs, {args.held_out} held-out items, "
             f"{args.seeds} seed(s) per weight")  # fmt: skip
    plot(out["results"], args.plot, title)
    print(f"plot: {args.plot} ({args.plot.stat().st_size // 1024} kB)")
    if args.json:
        args.json.write_text(json.dumps({**out, "args": {k: str(v) for k, v in vars(args).items()},
                                         "wall_s": wall, "load": [load, load_end]}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
