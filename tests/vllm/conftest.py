"""The vllm backend's contract tests: two real vLLM servers (vLLM's CPU build, in its own virtualenv: `make
vllm`) serving SmolLM2 in fp32, and one ftserve whose registry serves that same base twice: once through its
own engine (builtin) and once through the two vLLM servers, so every answer can be compared token for token.
The servers are shared by the whole module (each vLLM server takes about a minute to start)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from openai import OpenAI
from sqlalchemy.orm import Session

from ftserve.control.db.session import make_engine
from ftserve.control.services import catalog
from ftserve.core.config import Settings
from ftserve.core.storage import Storage
from ftserve.models.bases import prepare_base
from tests.servers import ROOT, Proc, Service, free_port, start_embedded, wait_http
from tests.vllm.adapters import write_random_adapter

BUILTIN, VLLM = "smollm2-135m-instruct", "smollm2-vllm"
JOB = "ftjob-vllmcontract0001"


def vllm_python() -> Path:
    venv = Path(os.environ.get("FTSERVE_TEST_VLLM_VENV") or ROOT / ".venv-vllm")
    python = venv / "bin" / "python"
    if not python.exists():
        # Not a skip: these tests exist to run against a real vLLM (`make test-vllm` builds the venv first).
        pytest.fail(f"vLLM's virtualenv is missing at {venv}: run `make vllm` (or `make test-vllm`)")
    return python


def start_vllm(model: Path, log: Path) -> tuple[str, Proc]:
    """`python -m vllm.entrypoints.openai.api_server` for the base, fp32, runtime LoRA updates on."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTSERVE_")}
    env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_ALLOW_RUNTIME_LORA_UPDATING="True", PYTHONUNBUFFERED="1")
    args = [str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    args += ["--served-model-name", "smollm2", "--dtype", "float32", "--max-model-len", "2048"]
    args += ["--enable-lora", "--max-lora-rank", "8", "--max-loras", "4", "--host", "127.0.0.1", "--port", str(port)]
    return f"http://127.0.0.1:{port}", Proc(args, env, log)


@dataclass
class Stack:
    ftserve: Service
    client: OpenAI
    replicas: dict[str, Proc]  # url → the vLLM server
    adapter_dir: Path  # where ftserve copies adapters for the vLLM servers
    settings: Settings  # the ftserve server's own (its data dir, its DB)

    def register(self, base: str, suffix: str) -> str:
        """Register the test adapter as a fine-tuned model of `base` (what a finished job does)."""
        name = f"ft:{base}:personal:{suffix}:{JOB.removeprefix('ftjob-')}"
        with Session(make_engine(self.settings.resolved_database_url())) as s:
            catalog.register(s, name, "personal", base, JOB, None)
            s.commit()
        return name


@pytest.fixture(scope="session")
def smol_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("smol-bases")
    return prepare_base(Settings(data_dir=d, bases_dir=d), BUILTIN)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, smol_dir: Path, bases_dir: Path) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("vllm")
    started = [start_vllm(smol_dir, work / f"vllm-{i}.log") for i in range(2)]
    procs = dict(started)
    adapter_dir = work / "adapters"
    adapter_dir.mkdir()
    registry = {
        "ftserve-tiny": {"source": "tiny", "dtype": "float32", "max_seq_len": 512},
        BUILTIN: {"source": str(smol_dir), "dtype": "float32", "max_seq_len": 2048},
        VLLM: {
            "source": str(smol_dir),
            "dtype": "float32",
            "max_seq_len": 2048,
            "backend": "vllm",
            "vllm_urls": list(procs),
            "vllm_adapter_dir": str(adapter_dir),
        },
    }
    data = work / "ftserve"
    data.mkdir()
    service = None
    try:
        for url, proc in started:
            wait_http(f"{url}/health", [proc], timeout=600)
        service = start_embedded(
            data, bases_dir, FTSERVE_BASE_MODELS=json.dumps(registry), FTSERVE_VLLM_RETRY_SECONDS="2"
        )
        settings = Settings(data_dir=data, bases_dir=bases_dir, base_models=registry)  # type: ignore[arg-type]
        write_random_adapter(smol_dir, Storage(settings).adapter_dir(JOB, None), seed=1)
        client = OpenAI(base_url=f"{service.base_url}/v1", api_key="anything", max_retries=0, timeout=300)
        yield Stack(service, client, procs, adapter_dir, settings)
    finally:
        if service is not None:
            service.stop()
        for proc in procs.values():
            proc.stop()
