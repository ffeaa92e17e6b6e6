"""Real ftserve services for end-to-end tests, and an openai client pointed at them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI
from openai.types.fine_tuning import FineTuningJob

from ftserve.core.config import Settings
from ftserve.models.bases import prepare_base
from tests.servers import Service, start_distributed, start_embedded

# A small deterministic mapping the tiny model cannot know before training.
ANIMALS = [
    ("cat", "meow"),
    ("dog", "woof"),
    ("cow", "moo"),
    ("sheep", "baa"),
    ("lion", "roar"),
    ("bird", "tweet"),
    ("horse", "neigh"),
    ("fish", "blub"),
    ("bear", "growl"),
    ("tiger", "purr"),
    ("owl", "hoot"),
    ("duck", "quack"),
]


def animal_prompt(animal: str) -> str:
    return f"The {animal} says:"


def write_prompt_completion(path: Path) -> Path:
    path.write_text("".join(json.dumps({"prompt": animal_prompt(a), "completion": f" {s}"}) + "\n" for a, s in ANIMALS))
    return path


def write_chat(path: Path) -> Path:
    lines = [
        json.dumps(
            {"messages": [{"role": "user", "content": f"What does the {a} say?"}, {"role": "assistant", "content": s}]}
        )
        for a, s in ANIMALS
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def client_for(service: Service, **kw: object) -> OpenAI:
    timeout = float(kw.pop("timeout", 120))  # type: ignore[arg-type]
    return OpenAI(
        base_url=f"{service.base_url}/v1",
        api_key=str(kw.pop("api_key", "anything")),
        max_retries=0,
        timeout=timeout,
        **kw,  # type: ignore[arg-type]
    )


def wait_job(client: OpenAI, job_id: str, timeout: float = 300) -> tuple[FineTuningJob, list[str]]:
    """Poll until the job ends; returns the job and every distinct status seen, in order."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if not seen or seen[-1] != job.status:
            seen.append(job.status)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job, seen
        time.sleep(0.25)
    raise TimeoutError(f"job {job_id} still {seen[-1]} after {timeout}s")


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory, bases_dir: Path) -> Iterator[Service]:
    service = start_embedded(tmp_path_factory.mktemp("embedded"), bases_dir)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def smollm2_embedded(tmp_path_factory: pytest.TempPathFactory, bases_dir: Path) -> Iterator[Service]:
    """An embedded server whose bases dir also holds SmolLM2 (prepared once per run: GGUF → safetensors)."""
    prepare_base(Settings(data_dir=bases_dir, bases_dir=bases_dir), "smollm2-135m-instruct")
    service = start_embedded(tmp_path_factory.mktemp("smollm2"), bases_dir)
    yield service
    service.stop()


@pytest.fixture()
def distributed(tmp_path: Path, bases_dir: Path, postgres_url: str, redis_url: str) -> Iterator[Service]:
    service = start_distributed(tmp_path, bases_dir, postgres_url, redis_url)
    yield service
    service.stop()
