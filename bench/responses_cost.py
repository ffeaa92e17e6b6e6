"""What a stored Responses API response costs against the same chat completion: the same greedy conversation
sent N times as `POST /v1/chat/completions` and as `POST /v1/responses` (`store: true`, not streamed, so each
response is written to the database) from C concurrent clients, against one real `ftserve api --with-inference`
server (SQLite in its data dir, or --database-url). Both render the same chat prompt and generate the same
tokens, so what the responses pay on top is their plan, their body and the database write, which happens once
the body is built (generation never waits on it). The target: responses / chat ≤ 1.1 in wall time and server CPU.

Rounds alternate chat, responses (the server's speed drifts on a shared machine); the ratio is over all rounds.
A last pass checks what the write's placement must guarantee: each response is retrievable the moment its
create returned (no 404 race).

    python bench/responses_cost.py                                 # SmolLM2, 400 requests x 2 rounds, 16 clients
    python bench/responses_cost.py --base ftserve-tiny --requests 40 --rounds 1     # a smoke run
    python bench/responses_cost.py --clients 1                     # one request at a time: latency, not throughput
"""

from __future__ import annotations

import argparse
import asyncio
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

from ftserve.control.db.migrate import upgrade_head  # noqa: E402
from ftserve.core.config import Settings  # noqa: E402
from ftserve.models.bases import prepare_base  # noqa: E402
from tests.servers import Proc, base_env, free_port, wait_http  # noqa: E402

TOPICS = ["river", "robot", "garden", "violin", "comet", "bakery", "glacier", "lantern", "harbor", "meadow"]
MODES = ("chat", "responses")


def prompts(n: int) -> list[str]:
    return [f"Write one sentence about a {TOPICS[i % 10]} (#{i})." for i in range(n)]


def request(mode: str, model: str, prompt: str, tokens: int) -> tuple[str, dict[str, Any]]:
    """The same greedy conversation as either endpoint's request."""
    if mode == "chat":
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_completion_tokens": tokens}
        return "/v1/chat/completions", {**body, "temperature": 0}
    body = {"model": model, "input": prompt, "max_output_tokens": tokens, "store": True}
    return "/v1/responses", {**body, "temperature": 0}


def generated(mode: str, body: dict[str, Any]) -> int:
    usage = body["usage"]
    return int(usage["completion_tokens"] if mode == "chat" else usage["output_tokens"])


async def send_all(url: str, mode: str, model: str, texts: list[str], tokens: int, clients: int) -> tuple[float, int]:
    """Seconds for `clients` concurrent clients to send every request one after another; tokens generated."""
    todo = list(reversed(texts))
    out = 0
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:

        async def client() -> None:
            nonlocal out
            while todo:
                path, body = request(mode, model, todo.pop(), tokens)
                r = await http.post(path, json=body)
                r.raise_for_status()
                out += generated(mode, r.json())

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - started, out


async def retrievable_at_once(url: str, model: str, texts: list[str], tokens: int, clients: int) -> int:
    """Create responses concurrently, each retrieved the moment its create returns; how many were not found."""
    todo = list(texts)
    missing = 0
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:

        async def client() -> None:
            nonlocal missing
            while todo:
                path, body = request("responses", model, todo.pop(), tokens)
                created = (await http.post(path, json=body)).raise_for_status().json()
                got = await http.get(f"/v1/responses/{created['id']}")
                missing += got.status_code == 404
                if got.status_code != 404:
                    assert got.raise_for_status().json()["output"] == created["output"]

        await asyncio.gather(*(client() for _ in range(clients)))
    return missing


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="smollm2-135m-instruct")
    ap.add_argument("--requests", type=int, default=400, help="per mode per round")
    ap.add_argument("--tokens", type=int, default=32, help="max new tokens per request")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2, help="chat then responses, this many times")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--database-url", default=None, help="e.g. postgresql+psycopg://…/db (default: SQLite)")
    ap.add_argument("--data", type=Path, default=Path("data/bench"), help="holds bases/ (prepared once)")
    args = ap.parse_args()

    bases = args.data.resolve() / "bases"
    prepare_base(Settings(data_dir=args.data, bases_dir=bases), args.base, lambda m: print(m, file=sys.stderr))
    texts = prompts(args.requests)
    runs: list[tuple[str, float, int, float]] = []
    with tempfile.TemporaryDirectory(prefix="ftserve-responses-bench-") as tmp:
        port = free_port()
        extra = {"FTSERVE_PREPARE_BASES": "[]", "OMP_NUM_THREADS": str(args.threads)}
        if args.database_url:  # an empty database of its own: migrated here (`ftserve api` does not migrate)
            upgrade_head(args.database_url)
            extra["FTSERVE_DATABASE_URL"] = args.database_url
        env = base_env(Path(tmp), bases, **extra)
        cmd = [sys.executable, "-m", "ftserve", "api", "--with-inference", "--port", str(port)]
        proc = Proc(cmd, env, Path(tmp) / "server.log")
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/health", [proc])
            for mode in MODES:  # the base loaded, the database's first write done
                asyncio.run(send_all(url, mode, args.base, texts[:4], args.tokens, 4))
            server = psutil.Process(proc.proc.pid)
            for _ in range(args.rounds):
                for mode in MODES:
                    cpu = sum(server.cpu_times()[:2])
                    seconds, tokens = asyncio.run(send_all(url, mode, args.base, texts, args.tokens, args.clients))
                    runs.append((mode, seconds, tokens, sum(server.cpu_times()[:2]) - cpu))
            check = texts[: max(8, min(len(texts), 64))]
            missing = asyncio.run(retrievable_at_once(url, args.base, check, args.tokens, args.clients))
        finally:
            proc.stop()
    db = "Postgres" if args.database_url else "SQLite"
    print(f"CPU: {cpu_name()}; OMP_NUM_THREADS={args.threads}; database {db}")
    print(f"{args.base}: {args.requests} requests per mode and round, {args.clients} clients, max {args.tokens} tokens")
    for mode, seconds, tokens, cpu in runs:
        print(
            f"  {mode:10s} {seconds:7.2f} s  {args.requests / seconds:7.2f} req/s  {tokens / seconds:8.1f} tokens/s"
            f"  server CPU {cpu:7.2f} s"
        )
    chat_tokens = sum(r[2] for r in runs if r[0] == "chat")
    resp_tokens = sum(r[2] for r in runs if r[0] == "responses")
    print(f"  tokens generated: chat {chat_tokens}, responses {resp_tokens} (the same conversations)")
    for label, pick in (("wall", lambda r: r[1]), ("server CPU", lambda r: r[3])):
        chat = sum(pick(r) for r in runs if r[0] == "chat")
        resp = sum(pick(r) for r in runs if r[0] == "responses")
        ratio = resp / chat
        print(f"  responses / chat {label} time, all rounds: {ratio:.3f}  ({'within' if ratio <= 1.1 else 'OVER'} 1.1)")
    print(f"  retrieved right after create: {len(check) - missing}/{len(check)} found")


if __name__ == "__main__":
    main()
