"""Start real ftserve processes (uvicorn + celery) for tests, and stop them cleanly."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
FTSERVE = [sys.executable, "-m", "ftserve"]


def xdist_index() -> int:
    """This pytest-xdist process's number (gw0 → 0), 0 outside xdist: what keeps processes' resources apart."""
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process whose output goes to a log file, printed if a test needs it."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env = args, env
        self.log_path = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.alive():
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-20000:]


def wait_http(url: str, procs: list[Proc], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"process exited early:\n{p.output()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not come up:\n" + "\n".join(p.output() for p in procs))


class Service:
    """A running ftserve: its base URL and the processes behind it."""

    def __init__(self, base_url: str, procs: list[Proc], env: dict[str, str]) -> None:
        self.base_url = base_url
        self.procs = procs
        self.env = env

    def stop(self) -> None:
        for p in self.procs:
            p.stop()

    def logs(self) -> str:
        return "\n".join(p.output() for p in self.procs)


def base_env(data_dir: Path, bases_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a server a test starts: its own data dir, the shared bases, and (in a run with
    --storage s3) its own prefix of the run's S3 bucket, reached with the standard AWS variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTSERVE_")}
    env.update(
        FTSERVE_DATA_DIR=str(data_dir),
        FTSERVE_BASES_DIR=str(bases_dir),
        FTSERVE_PREPARE_BASES='["ftserve-tiny"]',
        PYTHONUNBUFFERED="1",
    )
    s3 = os.environ.get("FTSERVE_TEST_S3")
    if s3:
        config = json.loads(s3)
        env["FTSERVE_STORAGE_URL"] = f"s3://{config.pop('bucket')}/{secrets.token_hex(6)}"
        env.update(config)
    env.update(extra)
    return env


def start_embedded(data_dir: Path, bases_dir: Path, **extra: str) -> Service:
    """`ftserve up`: api + inference + worker on SQLite, local storage and the filesystem broker."""
    port = free_port()
    env = base_env(data_dir, bases_dir, **extra)
    proc = Proc([*FTSERVE, "up", "--port", str(port), "--data-dir", str(data_dir)], env, data_dir / "up.log")
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/health", [proc])
    return Service(base, [proc], env)


def start_distributed(data_dir: Path, bases_dir: Path, database_url: str, broker_url: str, **extra: str) -> Service:
    """`ftserve api --with-inference` plus a separate `ftserve worker`, on Postgres and Redis."""
    port = free_port()
    env = base_env(data_dir, bases_dir, FTSERVE_DATABASE_URL=database_url, FTSERVE_BROKER_URL=broker_url, **extra)
    api = Proc([*FTSERVE, "api", "--with-inference", "--port", str(port)], env, data_dir / "api.log")
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/health", [api])
    worker = Proc([*FTSERVE, "worker", "--name", f"test-{port}"], env, data_dir / "worker.log")
    return Service(base, [api, worker], env)
