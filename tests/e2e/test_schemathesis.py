"""schemathesis `--checks all` (every built-in check, all phases: examples, coverage, fuzzing, stateful)
against a real api role and a real inference role, each its own process on a shared data dir: 0 failures.

Bounds and the statuses a schema cannot predict are in st_config/schemathesis.toml, with their reasons."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import FTSERVE, ROOT, Proc, Service, base_env, free_port, wait_http

CONFIG = Path(__file__).parent / "st_config" / "schemathesis.toml"
HOOKS = "tests.e2e.st_config.hooks"


@pytest.fixture(scope="module")
def roles(tmp_path_factory: pytest.TempPathFactory, bases_dir: Path) -> Iterator[tuple[Service, Service]]:
    """`ftserve api` (forwarding completions) and `ftserve inference`, on one SQLite data dir."""
    data = tmp_path_factory.mktemp("roles")
    api_port, inference_port = free_port(), free_port()
    env = base_env(data, bases_dir, FTSERVE_INFERENCE_URL=f"http://127.0.0.1:{inference_port}")
    api = Proc([*FTSERVE, "api", "--port", str(api_port)], env, data / "api.log")
    wait_http(f"http://127.0.0.1:{api_port}/health", [api])  # it migrates the DB the other role reads
    inference = Proc([*FTSERVE, "inference", "--port", str(inference_port)], env, data / "inference.log")
    wait_http(f"http://127.0.0.1:{inference_port}/health", [inference])
    services = (
        Service(f"http://127.0.0.1:{api_port}", [api], env),
        Service(f"http://127.0.0.1:{inference_port}", [inference], env),
    )
    yield services
    for service in services:
        service.stop()


def _schemathesis(service: Service, report: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SCHEMATHESIS_HOOKS": HOOKS, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(CONFIG),
        "run",
        f"{service.base_url}/openapi.json",
        "--checks",
        "all",
        "--suppress-health-check",
        "all",
        "--workers",
        "1",
        "--max-failures",
        "20",
    ]
    # Run from a scratch directory, so nothing schemathesis writes lands in the repository.
    result = subprocess.run(command, env=env, cwd=report.parent, capture_output=True, text=True, timeout=600)
    report.write_text(result.stdout + result.stderr)
    return result


@pytest.mark.parametrize("role", ["api", "inference"])
def test_schemathesis_checks_all_pass(roles: tuple[Service, Service], role: str, tmp_path: Path) -> None:
    service = roles[0] if role == "api" else roles[1]
    result = _schemathesis(service, tmp_path / "schemathesis.txt")
    out = result.stdout + result.stderr
    assert "Operations:" in out, out[-5000:]
    assert result.returncode == 0, out[-12000:] + "\n" + service.logs()[-3000:]
