"""The Batch API against HTTP clients: the same N completion requests (SmolLM2 by default) sent once as one
batch (`POST /v1/batches`, run by the inference role's runner through the engine) and once as HTTP requests
from 64 concurrent clients, against one real `ftserve api --with-inference` server. The batch should be at
least as fast. Runs HTTP, batch, HTTP (the server's speed drifts on a shared machine) and reports each.

    python bench/batch_throughput.py                         # 1,000 requests on SmolLM2 (a few minutes)
    python bench/batch_throughput.py --base ftserve-tiny --requests 300
"""

from __future__ import annotations

import argparse
import asyncio
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

from ftserve.core.config import Settings  # noqa: E402
from ftserve.models.bases import prepare_base  # noqa: E402
from tests.servers import Proc, base_env, free_port, wait_http  # noqa: E402

TOPICS = ["river", "robot", "garden", "violin", "comet", "bakery", "glacier", "lantern", "harbor", "meadow"]


def bodies(model: str, n: int, max_tokens: int) -> list[dict[str, Any]]:
    """n distinct greedy completion requests."""
    return [
        {"model": model, "prompt": f"Write one sentence about a {TOPICS[i % 10]} (#{i}):", "max_tokens": max_tokens,
         "temperature": 0}
        for i in range(n)
    ]  # fmt: skip


async def over_http(url: str, requests: list[dict[str, Any]], clients: int) -> tuple[float, int]:
    """Seconds for `clients` concurrent clients to send every request one after another; tokens generated."""
    todo = list(reversed(requests))
    tokens = 0
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=clients)) as http:

        async def client() -> None:
            nonlocal tokens
            while todo:
                r = await http.post("/v1/completions", json=todo.pop())
                r.raise_for_status()
                tokens += int(r.json()["usage"]["completion_tokens"])

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - started, tokens


def as_batch(url: str, requests: list[dict[str, Any]]) -> tuple[float, int]:
    """Seconds from uploading the batch file to the batch's completion; tokens generated."""
    lines = "".join(
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions", "body": body}) + "\n"
        for i, body in enumerate(requests)
    )
    with httpx.Client(base_url=url, timeout=600) as http:
        started = time.perf_counter()
        f = http.post("/v1/files", files={"file": ("b.jsonl", io.BytesIO(lines.encode()))}, data={"purpose": "batch"})
        f.raise_for_status()
        body = {"input_file_id": f.json()["id"], "endpoint": "/v1/completions", "completion_window": "24h"}
        batch = http.post("/v1/batches", json=body).json()
        while batch["status"] not in ("completed", "failed", "cancelled", "expired"):
            time.sleep(0.1)
            batch = http.get(f"/v1/batches/{batch['id']}").json()
        seconds = time.perf_counter() - started
        assert batch["status"] == "completed" and batch["request_counts"]["completed"] == len(requests), batch
        out = http.get(f"/v1/files/{batch['output_file_id']}/content").text.splitlines()
    tokens = sum(json.loads(line)["response"]["body"]["usage"]["completion_tokens"] for line in out)
    return seconds, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="smollm2-135m-instruct")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--tokens", type=int, default=32, help="max new tokens per request")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--rounds", type=int, default=2, help="HTTP then batch, this many times")
    ap.add_argument("--data", type=Path, default=Path("data/bench"), help="holds bases/ (prepared once)")
    args = ap.parse_args()

    bases = args.data.resolve() / "bases"
    prepare_base(Settings(data_dir=args.data, bases_dir=bases), args.base, lambda m: print(m, file=sys.stderr))
    requests = bodies(args.base, args.requests, args.tokens)
    with tempfile.TemporaryDirectory(prefix="ftserve-batch-bench-") as tmp:
        port = free_port()
        env = base_env(Path(tmp), bases, FTSERVE_PREPARE_BASES="[]", OMP_NUM_THREADS=str(args.threads))
        cmd = [sys.executable, "-m", "ftserve", "api", "--with-inference", "--port", str(port)]
        proc = Proc(cmd, env, Path(tmp) / "server.log")
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/health", [proc])
            asyncio.run(over_http(url, requests[:8], 8))  # the base loaded and warm
            server = psutil.Process(proc.proc.pid)
            runs: list[tuple[str, float, int, float]] = []
            for _ in range(args.rounds):
                for mode in ("HTTP, 64 clients", "Batch API"):
                    cpu = sum(server.cpu_times()[:2])
                    if mode == "Batch API":
                        seconds, tokens = as_batch(url, requests)
                    else:
                        seconds, tokens = asyncio.run(over_http(url, requests, args.clients))
                    runs.append((mode, seconds, tokens, sum(server.cpu_times()[:2]) - cpu))
        finally:
            proc.stop()
    print(f"{args.base}: {args.requests} requests, max_tokens {args.tokens}, greedy, OMP_NUM_THREADS={args.threads}")
    for mode, seconds, tokens, cpu in runs:
        print(
            f"  {mode:18s} {seconds:7.1f} s  {tokens / seconds:7.1f} tokens/s  {args.requests / seconds:6.2f} req/s"
            f"  server CPU {cpu:7.1f} s"
        )
    for label, pick in (("wall", lambda r: r[1]), ("server CPU", lambda r: r[3])):
        batch = sum(pick(r) for r in runs if r[0] == "Batch API")
        http = sum(pick(r) for r in runs if r[0] != "Batch API")
        print(f"  batch / HTTP {label} time, all rounds: {batch / http:.2f}")


if __name__ == "__main__":
    main()
