"""An eval run against the Batch API on the same requests: N items as one `completions` eval run (each item's
chat request built from the run's template, sampled through the inference role's eval runner and graded there by
a `string_check` and a `text_similarity` criterion) and the same N chat requests (the same model, prompts and
greedy sampling) as one Batch API batch, against one real `ftserve api --with-inference` server. The goal: the
eval run's items/s at least 0.9x the batch's, grading included. Rounds alternate batch, eval (the server's speed
drifts on a shared machine); the ratio is over all rounds. Each is timed from its file's upload to the
`completed` status; the answers of the two are compared afterwards (greedy: the same text).

    python bench/evals_throughput.py                       # 500 items on SmolLM2, 2 rounds (several minutes)
    python bench/evals_throughput.py --quick               # a smoke run: 100 items on ftserve-tiny, 1 round
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.responses_cost import cpu_name  # noqa: E402
from ftserve.core.config import Settings  # noqa: E402
from ftserve.models.bases import prepare_base  # noqa: E402
from tests.servers import Proc, base_env, free_port, wait_http  # noqa: E402

TOPICS = ["river", "robot", "garden", "violin", "comet", "bakery", "glacier", "lantern", "harbor", "meadow"]
TEMPLATE = "Write one sentence about a {{item.topic}} (#{{item.n}})."
ITEM_SCHEMA = {
    "type": "object",
    "properties": {"topic": {"type": "string"}, "n": {"type": "string"}},
    "required": ["topic", "n"],
}
CRITERIA: list[dict[str, Any]] = [
    {"type": "string_check", "name": "names the topic", "input": "{{sample.output_text}}",
     "reference": "{{item.topic}}", "operation": "ilike"},
    {"type": "text_similarity", "name": "close to the topic", "input": "{{sample.output_text}}",
     "reference": "{{item.topic}}", "evaluation_metric": "fuzzy_match", "pass_threshold": 0.5},
]  # fmt: skip
TERMINAL = ("completed", "failed", "canceled", "cancelled", "expired")


def items(n: int) -> list[dict[str, str]]:
    return [{"topic": TOPICS[i % 10], "n": str(i)} for i in range(n)]


def prompt(item: dict[str, str]) -> str:
    """The template rendered as the eval runner renders it."""
    return TEMPLATE.replace("{{item.topic}}", item["topic"]).replace("{{item.n}}", item["n"])


def upload(http: httpx.Client, lines: list[dict[str, Any]], purpose: str) -> str:
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    f = http.post("/v1/files", files={"file": ("in.jsonl", io.BytesIO(content))}, data={"purpose": purpose})
    return str(f.raise_for_status().json()["id"])


def wait(http: httpx.Client, path: str) -> dict[str, Any]:
    while True:
        obj: dict[str, Any] = http.get(path).raise_for_status().json()
        if obj["status"] in TERMINAL:
            return obj
        time.sleep(0.1)


def as_batch(http: httpx.Client, model: str, todo: list[dict[str, str]], tokens: int) -> tuple[float, list[str]]:
    """Seconds from the upload to the batch's completion; the answers in item order."""
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": model, "messages": [{"role": "user", "content": prompt(item)}],
                  "max_completion_tokens": tokens, "temperature": 0}}
        for i, item in enumerate(todo)
    ]  # fmt: skip
    started = time.perf_counter()
    body = {"input_file_id": upload(http, lines, "batch"), "endpoint": "/v1/chat/completions",
            "completion_window": "24h"}  # fmt: skip
    batch = http.post("/v1/batches", json=body).raise_for_status().json()
    batch = wait(http, f"/v1/batches/{batch['id']}")
    seconds = time.perf_counter() - started
    assert batch["status"] == "completed" and batch["request_counts"]["completed"] == len(todo), batch
    out = [json.loads(line) for line in http.get(f"/v1/files/{batch['output_file_id']}/content").text.splitlines()]
    answers = {int(o["custom_id"][1:]): o["response"]["body"]["choices"][0]["message"]["content"] for o in out}
    return seconds, [answers[i] for i in range(len(todo))]


def as_eval(
    http: httpx.Client, eval_id: str, model: str, todo: list[dict[str, str]], tokens: int
) -> tuple[float, list[str], dict[str, Any]]:
    """Seconds from the upload to the run's completion (every item sampled and graded); answers; the run."""
    started = time.perf_counter()
    source = {"type": "file_id", "id": upload(http, [{"item": item} for item in todo], "evals")}
    ds = {"type": "completions", "model": model, "source": source,
          "input_messages": {"type": "template", "template": [{"role": "user", "content": TEMPLATE}]},
          "sampling_params": {"max_completion_tokens": tokens, "temperature": 0}}  # fmt: skip
    run = http.post(f"/v1/evals/{eval_id}/runs", json={"data_source": ds}).raise_for_status().json()
    run = wait(http, f"/v1/evals/{eval_id}/runs/{run['id']}")
    seconds = time.perf_counter() - started
    assert run["status"] == "completed" and run["result_counts"]["total"] == len(todo), run
    assert run["result_counts"]["errored"] == 0, run
    answers: dict[int, str] = {}
    after = None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"after": after} if after else {})}
        page = http.get(f"/v1/evals/{eval_id}/runs/{run['id']}/output_items", params=params).raise_for_status().json()
        answers |= {o["datasource_item_id"]: o["sample"]["output"][0]["content"] for o in page["data"]}
        if not page["has_more"]:
            break
        after = page["last_id"]
    return seconds, [answers[i] for i in range(len(todo))], run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="smollm2-135m-instruct")
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--tokens", type=int, default=32, help="max_completion_tokens per item")
    ap.add_argument("--rounds", type=int, default=2, help="batch then eval, this many times")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--quick", action="store_true", help="a smoke run: ftserve-tiny, 100 items, 1 round")
    ap.add_argument("--data", type=Path, default=Path("data/bench"), help="holds bases/ (prepared once)")
    args = ap.parse_args()
    if args.quick:
        args.base, args.items, args.rounds = "ftserve-tiny", 100, 1

    bases = args.data.resolve() / "bases"
    prepare_base(Settings(data_dir=args.data, bases_dir=bases), args.base, lambda m: print(m, file=sys.stderr))
    todo = items(args.items)
    runs: list[tuple[str, float, float]] = []
    answers: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="ftserve-evals-bench-") as tmp:
        port = free_port()
        env = base_env(Path(tmp), bases, FTSERVE_PREPARE_BASES="[]", OMP_NUM_THREADS=str(args.threads))
        cmd = [sys.executable, "-m", "ftserve", "api", "--with-inference", "--port", str(port)]
        proc = Proc(cmd, env, Path(tmp) / "server.log")
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/health", [proc])
            with httpx.Client(base_url=url, timeout=600) as http:
                body = {"name": "bench", "data_source_config": {"type": "custom", "item_schema": ITEM_SCHEMA},
                        "testing_criteria": CRITERIA}  # fmt: skip
                eval_id = http.post("/v1/evals", json=body).raise_for_status().json()["id"]
                as_batch(http, args.base, todo[:8], args.tokens)  # the base loaded and warm, both runners polled
                as_eval(http, eval_id, args.base, todo[:8], args.tokens)
                server = psutil.Process(proc.proc.pid)
                for _ in range(args.rounds):
                    for mode in ("Batch API", "eval run"):
                        cpu = sum(server.cpu_times()[:2])
                        if mode == "Batch API":
                            seconds, answers[mode] = as_batch(http, args.base, todo, args.tokens)
                        else:
                            seconds, answers[mode], run = as_eval(http, eval_id, args.base, todo, args.tokens)
                        runs.append((mode, seconds, sum(server.cpu_times()[:2]) - cpu))
        finally:
            proc.stop()
    print(f"CPU: {cpu_name()}; OMP_NUM_THREADS={args.threads}")
    print(f"{args.base}: {args.items} items, max_completion_tokens {args.tokens}, greedy; eval graded by "
          f"{', '.join(c['type'] for c in CRITERIA)}")  # fmt: skip
    for mode, seconds, cpu in runs:
        print(f"  {mode:10s} {seconds:7.2f} s  {args.items / seconds:7.2f} items/s  server CPU {cpu:7.2f} s")
    same = sum(a == b for a, b in zip(answers["Batch API"], answers["eval run"], strict=True))
    per = ", ".join(f"{c['testing_criteria']} {c['passed']}/{c['passed'] + c['failed']}"
                    for c in run["per_testing_criteria_results"])  # fmt: skip
    print(f"  the same answer from both: {same}/{args.items}; the last eval run passed {per}")
    for label, pick in (("items/s", lambda r: r[1]), ("server CPU per item", lambda r: r[2])):
        batch = sum(pick(r) for r in runs if r[0] == "Batch API")
        ev = sum(pick(r) for r in runs if r[0] == "eval run")
        ratio = batch / ev if label == "items/s" else ev / batch
        goal = f"  ({'meets' if ratio >= 0.9 else 'BELOW'} the 0.9x goal)" if label == "items/s" else ""
        print(f"  eval / batch {label}, all rounds: {ratio:.3f}{goal}")


if __name__ == "__main__":
    main()
