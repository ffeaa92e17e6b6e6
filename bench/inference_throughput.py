"""Inference throughput: ftserve's batched multi-adapter server against the usual ways to serve LoRA adapters.

For each base (the built-in SmolLM2-135M-Instruct and ftserve-tiny) and 1, 8 and 32 distinct random LoRA
adapters, every mode answers the same greedy requests (32 new tokens at most, EOS stops a row):

  (a) naive:   load base + adapter from disk for every request, then generate (a tutorial script)
  (b) serial:  one resident PeftModel holding every adapter, set_adapter per request, one request at a time
  (c) ftserve: 64 concurrent HTTP requests to a real `ftserve inference` process (continuous batching,
               adapters mixed in one batch)
  (d) base:    the same 64 requests to the base model through ftserve, right before each (c), to show the
               LoRA overhead

(a) and (b) serve one request at a time, so they run fewer requests (--naive-requests, --serial-requests);
their throughput is measured, and their p50/p95 latency is what 64 requests arriving together would see
when served one after another with the measured service times.

    python bench/inference_throughput.py                  # both bases, 1/8/32 adapters (a few minutes)
    python bench/inference_throughput.py --bases ftserve-tiny --adapters 8

--modes picks which of (a)-(d) run (bench/gpu_check.py runs only the server's, cd, on a GPU: (a) and (b) serve
from the CPU); --json-out writes every figure, p99 latency included; --min-seconds is how long each of (c) and
(d) keeps sending bursts.

--constrained measures grammar-constrained decoding instead: the same batch of concurrent requests to the
base model, once with every row free and once with half the rows following a JSON schema (response_format;
the schema's story must be longer than max_tokens allows, so constrained rows run as long as free ones), alternating
rounds on one server; it reports both throughputs and the cost ratio (free tokens/s ÷ half-constrained).

    python bench/inference_throughput.py --constrained --bases smollm2-135m-instruct

With --backend vllm the same requests go through one ftserve inference server to both of its backends
for the same base: (c)/(d) on ftserve's engine, and (e)/(f) on a real vLLM server (vLLM's CPU build from
.venv-vllm, `make vllm`) behind ftserve (the `vllm` backend: token ids in, runtime LoRA loading), side by
side. (a) and (b) are skipped. vLLM is built for GPUs; on a CPU this compares its CPU build only.

    python bench/inference_throughput.py --backend vllm --bases smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ftserve.control.db.migrate import upgrade_head  # noqa: E402
from ftserve.control.db.session import make_engine  # noqa: E402
from ftserve.control.services import catalog  # noqa: E402
from ftserve.core.config import Settings  # noqa: E402
from ftserve.core.storage import Storage  # noqa: E402
from ftserve.models.bases import load_base, prepare_base  # noqa: E402
from ftserve.models.special_tokens import stop_token_ids  # noqa: E402
from ftserve.training.export import save_adapter  # noqa: E402

TOPICS = ["river", "robot", "garden", "violin", "comet", "bakery", "glacier", "lantern"]


@dataclass
class Result:
    mode: str
    requests: int
    seconds: float
    tokens: int
    latencies: list[float]
    cpu_seconds: float  # CPU time of the serving process: robust to other load on a shared machine

    def row(self, base: str, adapters: int) -> str:
        lat = sorted(self.latencies)
        p50 = lat[len(lat) // 2]
        p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]
        return (
            f"| {base} | {adapters} | {self.mode} | {self.requests} | {self.requests / self.seconds:.2f} | "
            f"{self.tokens / self.seconds:.1f} | {p50:.2f} | {p95:.2f} | {self.tokens / self.cpu_seconds:.1f} |"
        )

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def latency(self, q: float) -> float:
        """The q-quantile of the latencies (nearest rank)."""
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, round(q * (len(lat) - 1)))]

    def as_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "requests": self.requests,
            "seconds": self.seconds,
            "tokens": self.tokens,
            "requests_per_s": self.requests / self.seconds,
            "tokens_per_s": self.tokens_per_s,
            "p50_s": self.latency(0.5),
            "p95_s": self.latency(0.95),
            "p99_s": self.latency(0.99),
            "tokens_per_cpu_s": self.tokens_per_cpu_s,
        }

    @property
    def tokens_per_cpu_s(self) -> float:
        return self.tokens / self.cpu_seconds


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one by default), all threads included, and of its
    child processes (vLLM's engine core runs in one)."""
    if pid is None:
        return time.process_time()
    total = 0.0
    for child in [pid, *_descendants(pid)]:
        try:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # it exited meanwhile
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def prompts(n: int, of: int = 64) -> list[str]:
    """n prompts spread evenly over the same `of` prompts, so every mode sees the same mix."""
    step = max(1, of // n)
    return [f"Story {i}: write a short story about a {TOPICS[i % len(TOPICS)]}.\n" for i in range(0, step * n, step)]


def make_adapters(settings: Settings, base: str, count: int, also: str | None = None) -> list[str]:
    """Random (untrained) rank-8 all-linear LoRA adapters saved and registered like a job's; returns model names
    (`also`: each adapter registered under that base name too, e.g. the same base on the vllm backend)."""
    model, _ = load_base(settings, base, torch.device("cpu"))
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    names = []
    storage = Storage(settings)
    with Session(make_engine(settings.resolved_database_url())) as s:
        for i in range(count):
            gen = torch.Generator().manual_seed(i)
            for pname, p in peft_model.named_parameters():
                if "lora_A" in pname:
                    p.data = torch.randn(p.shape, generator=gen).to(p.dtype) / p.shape[1] ** 0.5
                elif "lora_B" in pname:  # small enough that every adapter still writes sentences
                    p.data = (torch.randn(p.shape, generator=gen) * 0.02).to(p.dtype)
            job_id = f"ftjob-bench{base.replace('-', '')[:12]}{i}"
            save_adapter(peft_model, storage.adapter_dir(job_id, None))  # type: ignore[arg-type]
            name = f"ft:{base}:personal:bench{i}:{job_id.removeprefix('ftjob-')}"
            catalog.register(s, name, "personal", base, job_id, None)
            names.append(name)
            if also is not None:
                catalog.register(s, name.replace(f"ft:{base}:", f"ft:{also}:", 1), "personal", also, job_id, None)
        s.commit()
    return names


def _generate(model: torch.nn.Module, tok: object, prompt: str, stops: list[int], max_tokens: int) -> int:
    ids = tok(prompt, return_tensors="pt")  # type: ignore[operator]
    out = model.generate(  # type: ignore[operator]
        **ids,
        max_new_tokens=max_tokens,
        do_sample=False,
        eos_token_id=stops,
        pad_token_id=tok.pad_token_id,  # type: ignore[attr-defined]
    )
    new = out[0, ids["input_ids"].shape[1] :].tolist()
    return sum(1 for t in new if t not in stops)


def queued_latencies(service: list[float], n: int) -> list[float]:
    """Latencies of n requests arriving together and served one at a time (service times reused cyclically)."""
    done, out = 0.0, []
    for i in range(n):
        done += service[i % len(service)]
        out.append(done)
    return out


def naive(settings: Settings, base: str, models: list[str], n: int, max_tokens: int, concurrency: int) -> Result:
    """(a) Load base + adapter from disk per request."""
    service, tokens = [], 0
    started, cpu = time.perf_counter(), cpu_seconds()
    storage = Storage(settings)
    for i, prompt in enumerate(prompts(n)):
        t0 = time.perf_counter()
        model, tok = load_base(settings, base, torch.device("cpu"), progress=lambda _m: None)
        job_id = models[i % len(models)].rsplit(":", 1)[1]
        peft_model = PeftModel.from_pretrained(model, str(storage.adapter_dir(f"ftjob-{job_id}", None)))
        peft_model.eval()
        with torch.inference_mode():
            stops = sorted(stop_token_ids(model.generation_config, tok))
            tokens += _generate(peft_model, tok, prompt, stops, max_tokens)
        service.append(time.perf_counter() - t0)
    wall = time.perf_counter() - started
    return Result(
        "(a) naive: load per request", n, wall, tokens, queued_latencies(service, concurrency), cpu_seconds() - cpu
    )


def serial(settings: Settings, base: str, models: list[str], n: int, max_tokens: int, concurrency: int) -> Result:
    """(b) One resident PeftModel with every adapter; set_adapter per request, one at a time."""
    storage = Storage(settings)
    model, tok = load_base(settings, base, torch.device("cpu"), progress=lambda _m: None)
    stops = sorted(stop_token_ids(model.generation_config, tok))
    dirs = [storage.adapter_dir("ftjob-" + m.rsplit(":", 1)[1], None) for m in models]
    peft_model = PeftModel.from_pretrained(model, str(dirs[0]), adapter_name="a0")
    for i, d in enumerate(dirs[1:], start=1):
        peft_model.load_adapter(str(d), adapter_name=f"a{i}")
    peft_model.eval()
    service, tokens = [], 0
    started, cpu = time.perf_counter(), cpu_seconds()
    for i, prompt in enumerate(prompts(n)):
        t0 = time.perf_counter()
        peft_model.set_adapter(f"a{i % len(dirs)}")
        with torch.inference_mode():
            tokens += _generate(peft_model, tok, prompt, stops, max_tokens)
        service.append(time.perf_counter() - t0)
    return Result(
        "(b) resident, set_adapter, serial",
        n,
        time.perf_counter() - started,
        tokens,
        queued_latencies(service, concurrency),
        cpu_seconds() - cpu,
    )


async def _http(url: str, models: list[str], n: int, max_tokens: int) -> tuple[float, int, list[float]]:
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=n)) as client:

        async def one(i: int, prompt: str) -> tuple[float, int]:
            t0 = time.perf_counter()
            body = {"model": models[i % len(models)], "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
            r = await client.post("/v1/completions", json=body)
            r.raise_for_status()
            return time.perf_counter() - t0, int(r.json()["usage"]["completion_tokens"])

        started = time.perf_counter()
        results = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts(n))))
        return time.perf_counter() - started, sum(t for _, t in results), [lat for lat, _ in results]


def served(
    url: str,
    pid: int | list[int],
    mode: str,
    models: list[str],
    n: int,
    max_tokens: int,
    min_rounds: int = 3,
    min_seconds: float = 5.0,
) -> Result:
    """(c)/(d) bursts of n concurrent requests to the ftserve inference server, adapters warmed (loaded)
    first; repeated (at least min_rounds and min_seconds) because one burst of the tiny model lasts a
    fraction of a second, too short to time on a shared machine."""
    asyncio.run(_http(url, models, len(models), 2))  # every adapter resident, as in (b)
    pids = pid if isinstance(pid, list) else [pid]
    cpu = sum(cpu_seconds(p) for p in pids)
    seconds, tokens, latencies, rounds = 0.0, 0, [], 0
    while rounds < min_rounds or seconds < min_seconds:
        s, t, lat = asyncio.run(_http(url, models, n, max_tokens))
        seconds, tokens, rounds = seconds + s, tokens + t, rounds + 1
        latencies += lat
    return Result(mode, n * rounds, seconds, tokens, latencies, sum(cpu_seconds(p) for p in pids) - cpu)


# Half the rows of the constrained batch follow this: a short title, then a story too long to end within
# max_tokens, so constrained rows run as long as free ones and both batches keep their width to the end.
STORY_SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string", "maxLength": 40}, "story": {"type": "string", "minLength": 2000}},
    "required": ["title", "story"],
    "additionalProperties": False,
}


async def _burst(url: str, base: str, n: int, max_tokens: int, constrained: bool) -> tuple[float, int, list[float]]:
    """n concurrent requests to the base; with `constrained`, every other one carries the JSON schema."""
    fmt = {"type": "json_schema", "json_schema": {"name": "story", "schema": STORY_SCHEMA}}
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=n)) as client:

        async def one(i: int, prompt: str) -> tuple[float, int]:
            t0 = time.perf_counter()
            body = {"model": base, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
            if constrained and i % 2:
                body["response_format"] = fmt
            r = await client.post("/v1/completions", json=body)
            r.raise_for_status()
            return time.perf_counter() - t0, int(r.json()["usage"]["completion_tokens"])

        started = time.perf_counter()
        results = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts(n))))
        return time.perf_counter() - started, sum(t for _, t in results), [lat for lat, _ in results]


def constrained_cost(url: str, pid: int, base: str, n: int, max_tokens: int, rounds: int) -> tuple[Result, Result]:
    """Free and half-constrained bursts alternating (each warmed once: the schema compiled, the base loaded)."""
    for constrained in (False, True):
        asyncio.run(_burst(url, base, n, 2, constrained))
    runs: dict[bool, list[tuple[float, int, list[float], float]]] = {False: [], True: []}
    for _ in range(rounds):
        for constrained in (False, True):
            cpu = cpu_seconds(pid)
            seconds, tokens, latencies = asyncio.run(_burst(url, base, n, max_tokens, constrained))
            runs[constrained].append((seconds, tokens, latencies, cpu_seconds(pid) - cpu))

    def total(mode: str, rs: list[tuple[float, int, list[float], float]]) -> Result:
        latencies = [lat for r in rs for lat in r[2]]
        return Result(mode, n * len(rs), sum(r[0] for r in rs), sum(r[1] for r in rs), latencies, sum(r[3] for r in rs))

    return total("free rows", runs[False]), total("half the rows JSON-schema constrained", runs[True])


def constrained_main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="ftserve-bench-") as tmp:
        data = Path(tmp)
        bases_dir = (args.bases_dir or data / "bases").resolve()
        settings = Settings(data_dir=data, bases_dir=bases_dir)
        upgrade_head(settings.resolved_database_url())
        for base in args.bases:
            prepare_base(settings, base, progress=lambda m: print(f"  {m}", file=sys.stderr))
        proc, url = start_server(data, bases_dir, cache_size=1, threads=args.threads)
        lines = [
            "| base | mode | requests | tokens/s | p50 s | p95 s | tokens/CPU-s |",
            "|---|---|---|---|---|---|---|",
        ]
        ratios = []
        try:
            for base in args.bases:
                free, half = constrained_cost(url, proc.pid, base, args.requests, args.tokens, args.rounds)
                for r in (free, half):
                    lat = sorted(r.latencies)
                    p50, p95 = lat[len(lat) // 2], lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]
                    lines.append(
                        f"| {base} | {r.mode} | {r.requests} | {r.tokens_per_s:.1f} | {p50:.2f} | {p95:.2f} | "
                        f"{r.tokens_per_cpu_s:.1f} |"
                    )
                ratios.append(
                    f"| {base} | {args.requests} | {free.tokens_per_s / half.tokens_per_s:.2f}× | "
                    f"{free.tokens_per_cpu_s / half.tokens_per_cpu_s:.2f}× |"
                )
                print(*lines[-2:], ratios[-1], sep="\n", file=sys.stderr)
        finally:
            proc.terminate()
            proc.wait(30)
    print("\n".join(lines))
    print()
    print("| base | rows per batch | cost (free ÷ half constrained, tokens/s) | cost per CPU-s |")
    print("|---|---|---|---|")
    print("\n".join(ratios))


def start_server(
    data: Path, bases_dir: Path, cache_size: int, threads: int, registry: str | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    port = 18000 + os.getpid() % 1000
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTSERVE_")}
    env.update(
        FTSERVE_DATA_DIR=str(data),
        FTSERVE_BASES_DIR=str(bases_dir),
        FTSERVE_ADAPTER_CACHE_SIZE=str(cache_size),
        OMP_NUM_THREADS=str(threads),
        PYTHONUNBUFFERED="1",
    )
    if registry is not None:
        env["FTSERVE_BASE_MODELS"] = registry
    log = (data / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftserve", "inference", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError((data / "server.log").read_text()[-3000:])
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError("server did not start")


def start_vllm(venv: Path, model: Path, max_loras: int, dtype: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """vLLM's OpenAI server (CPU build) for one base, runtime LoRA loading on."""
    port = 19000 + os.getpid() % 1000
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTSERVE_")}
    env.update(VLLM_CPU_KVCACHE_SPACE="2", VLLM_ALLOW_RUNTIME_LORA_UPDATING="True", PYTHONUNBUFFERED="1")
    args = [str(venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    args += ["--dtype", dtype, "--max-model-len", "2048", "--enable-lora", "--max-lora-rank", "8"]
    args += ["--max-loras", str(max_loras), "--host", "127.0.0.1", "--port", str(port)]
    out = log.open("wb")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=out, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(3000):
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-3000:])
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError("vLLM did not start")


def compare_backends(args: argparse.Namespace) -> None:
    """The same workload through ftserve's engine and through vLLM behind ftserve, base by base."""
    with tempfile.TemporaryDirectory(prefix="ftserve-bench-") as tmp:
        data = Path(tmp)
        bases_dir = (args.bases_dir or data / "bases").resolve()
        settings = Settings(data_dir=data, bases_dir=bases_dir)
        most = max(args.adapters)
        registry: dict[str, dict[str, object]] = {}
        vllms: list[subprocess.Popen[bytes]] = []
        try:
            for i, base in enumerate(args.bases):
                path = prepare_base(settings, base, progress=lambda m: print(f"  {m}", file=sys.stderr))
                proc, url = start_vllm(args.vllm_venv, path, most, args.dtype, data / f"vllm-{i}.log")
                vllms.append(proc)
                spec = {"source": str(path), "dtype": args.dtype, "max_seq_len": 2048}
                registry[base] = spec
                registry[f"{base}-vllm"] = {**spec, "backend": "vllm", "vllm_urls": [url]}
            settings = Settings(data_dir=data, bases_dir=bases_dir, base_models=registry)  # type: ignore[arg-type]
            upgrade_head(settings.resolved_database_url())
            models = {base: make_adapters(settings, base, most, also=f"{base}-vllm") for base in args.bases}
            proc, url = start_server(data, bases_dir, most, args.threads, json.dumps(registry))
            lines = [
                "| base | adapters | mode | requests | requests/s | tokens/s | p50 s | p95 s | tokens/CPU-s |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            ratios = []
            try:
                for base, vllm in zip(args.bases, vllms, strict=True):
                    on_vllm = f"{base}-vllm"
                    for count in args.adapters:
                        chosen = models[base][:count]
                        chosen_vllm = [m.replace(f"ft:{base}:", f"ft:{on_vllm}:", 1) for m in chosen]
                        pids = [proc.pid, vllm.pid]
                        d = served(url, pids, "(d) builtin engine, base model", [base], args.requests, args.tokens)
                        c = served(url, pids, "(c) builtin engine, adapters", chosen, args.requests, args.tokens)
                        f = served(url, pids, "(f) vLLM backend, base model", [on_vllm], args.requests, args.tokens)
                        e = served(url, pids, "(e) vLLM backend, adapters", chosen_vllm, args.requests, args.tokens)
                        lines += [r.row(base, count) for r in (c, d, e, f)]
                        ratios.append(
                            f"| {base} | {count} | {d.tokens_per_s / f.tokens_per_s:.2f}× | "
                            f"{c.tokens_per_s / e.tokens_per_s:.2f}× | "
                            f"{d.tokens_per_cpu_s / f.tokens_per_cpu_s:.2f}× | "
                            f"{c.tokens_per_cpu_s / e.tokens_per_cpu_s:.2f}× |"
                        )
                        print(*lines[-4:], sep="\n", file=sys.stderr)
            finally:
                proc.terminate()
                proc.wait(30)
        finally:
            for v in vllms:
                os.killpg(v.pid, signal.SIGTERM)
                v.wait(60)
    print("\n".join(lines))
    print()
    print(
        "| base | adapters | builtin/vLLM base tokens/s | builtin/vLLM adapters tokens/s "
        "| base per CPU-s | adapters per CPU-s |"
    )
    print("|---|---|---|---|---|---|")
    print("\n".join(ratios))


def _modes(
    args: argparse.Namespace, settings: Settings, url: str, pid: int, base: str, chosen: list[str]
) -> dict[str, Result]:
    """The modes asked for, for one base and its chosen adapters, keyed a-d."""
    runs: dict[str, Result] = {}
    gc.collect()  # the HTTP client must not pause to collect (a)/(b)'s models mid-run
    # (d) right before (c), on the same server: the overhead compares neighbours in time, not
    # figures minutes apart (the same server's throughput drifts by ±5 % over a run).
    n, tokens, least = args.requests, args.tokens, args.min_seconds
    if "d" in args.modes:
        runs["d"] = served(url, pid, "(d) ftserve, base model only", [base], n, tokens, min_seconds=least)
    if "c" in args.modes:
        runs["c"] = served(url, pid, "(c) ftserve, batched multi-adapter", chosen, n, tokens, min_seconds=least)
    if "a" in args.modes:
        runs["a"] = naive(settings, base, chosen, args.naive_requests, tokens, n)
    if "b" in args.modes:
        runs["b"] = serial(settings, base, chosen, args.serial_requests, tokens, n)
    return runs


def _ratios(runs: dict[str, Result]) -> list[str]:
    """The summary table's ratios ((c)/(a), (c)/(b), (d)/(c); by wall time, then by CPU time); '-' where a mode
    did not run."""

    def ratio(top: str, bottom: str, per_cpu: bool, digits: int) -> str:
        if top not in runs or bottom not in runs:
            return "-"
        a, b = runs[top], runs[bottom]
        value = a.tokens_per_cpu_s / b.tokens_per_cpu_s if per_cpu else a.tokens_per_s / b.tokens_per_s
        return f"{value:.{digits}f}×"

    pairs = [("c", "a", 1), ("c", "b", 1), ("d", "c", 2)]
    return [ratio(t, b, per_cpu, d) for per_cpu in (False, True) for t, b, d in pairs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bases", nargs="+", default=["smollm2-135m-instruct", "ftserve-tiny"])
    ap.add_argument("--adapters", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=64, help="concurrent requests for (c) and (d)")
    ap.add_argument("--tokens", type=int, default=32, help="max new tokens per request")
    ap.add_argument("--naive-requests", type=int, default=4)
    ap.add_argument("--serial-requests", type=int, default=16)
    ap.add_argument("--bases-dir", type=Path, default=None, help="prepared bases (default: a fresh temp dir)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads, the same for every mode (1: on a small shared machine, two spinning "
        "OpenMP threads per process stall each other)",
    )
    ap.add_argument("--constrained", action="store_true", help="measure grammar-constrained rows (see above)")
    ap.add_argument("--rounds", type=int, default=3, help="--constrained: bursts per mode")
    ap.add_argument("--backend", choices=["builtin", "vllm"], default="builtin", help="vllm: builtin against vLLM")
    ap.add_argument("--vllm-venv", type=Path, default=ROOT / ".venv-vllm", help="vLLM's CPU build (`make vllm`)")
    ap.add_argument("--dtype", default="float32", help="--backend vllm: both engines' dtype")
    ap.add_argument("--modes", default="abcd", help="which of (a)-(d) to run (the default, builtin backend)")
    ap.add_argument("--min-seconds", type=float, default=5.0, help="(c)/(d): send bursts for at least this long")
    ap.add_argument("--json-out", type=Path, help="also write every figure to this JSON file (builtin backend)")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    if args.constrained:
        constrained_main(args)
        return
    if args.backend == "vllm":
        compare_backends(args)
        return
    with tempfile.TemporaryDirectory(prefix="ftserve-bench-") as tmp:
        data = Path(tmp)
        bases_dir = (args.bases_dir or data / "bases").resolve()
        settings = Settings(data_dir=data, bases_dir=bases_dir)
        upgrade_head(settings.resolved_database_url())
        most = max(args.adapters)
        models = {}
        for base in args.bases:
            prepare_base(settings, base, progress=lambda m: print(f"  {m}", file=sys.stderr))
            models[base] = make_adapters(settings, base, most)
        proc, url = start_server(data, bases_dir, cache_size=most, threads=args.threads)
        lines = [
            "| base | adapters | mode | requests | requests/s | tokens/s | p50 s | p95 s | tokens/CPU-s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        ratios, figures = [], []
        try:
            for base in args.bases:
                for count in args.adapters:
                    runs = _modes(args, settings, url, proc.pid, base, models[base][:count])
                    lines += [runs[m].row(base, count) for m in "abcd" if m in runs]
                    ratios.append(f"| {base} | {count} | " + " | ".join(_ratios(runs)) + " |")
                    print(*lines[-len(runs) :], sep="\n", file=sys.stderr)
                    overhead = runs["d"].tokens_per_s / runs["c"].tokens_per_s if {"c", "d"} <= runs.keys() else None
                    modes = {m: r.as_dict() for m, r in runs.items()}
                    figures.append({"base": base, "adapters": count, "modes": modes, "lora_overhead": overhead})
        finally:
            proc.terminate()
            proc.wait(30)
        if args.json_out:
            args.json_out.write_text(json.dumps({"requests": args.requests, "tokens": args.tokens, "runs": figures}))
    print("\n".join(lines))
    print()
    print(
        "| base | adapters | (c)/(a) tokens/s | (c)/(b) tokens/s | LoRA overhead (d)/(c) "
        "| (c)/(a) per CPU-s | (c)/(b) per CPU-s | overhead per CPU-s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(ratios))


if __name__ == "__main__":
    main()
