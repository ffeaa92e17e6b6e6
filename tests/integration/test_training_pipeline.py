"""The worker's pipeline run in-process on a real SQLite DB and storage: truncation counts in the job's events,
and the same job with the same seed gives the same loss curve and the same adapter bytes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from ftserve.control.db.session import session_scope
from ftserve.control.db.tables import Job, JobEvent
from ftserve.control.services.files import create_upload
from ftserve.control.services.jobs import create_job
from ftserve.core.config import Settings
from ftserve.core.schemas.jobs import FtserveExtensions, Hyperparameters, JobCreate
from ftserve.core.storage import Storage
from ftserve.training import pipeline
from ftserve.worker.gang import run_job
from tests.jobrows import job_and_events

ORG = "personal"


def _upload(settings: Settings, rows: list[dict[str, str]]) -> str:
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    async def go() -> str:
        with session_scope(settings) as s:
            return (await create_upload(s, settings, ORG, "train.jsonl", "fine-tune", chunks())).id

    return asyncio.run(go())


def _run(settings: Settings, file_id: str, seed: int, **ext: Any) -> tuple[Job, list[JobEvent]]:
    req = JobCreate(
        model="ftserve-tiny",
        training_file=file_id,
        seed=seed,
        hyperparameters=Hyperparameters(n_epochs=2, batch_size=4),
        extensions=FtserveExtensions(**ext) if ext else None,
    )
    with session_scope(settings) as s:
        job_id = create_job(s, settings, ORG, req).id
    run_job(job_id, settings)
    return job_and_events(settings, job_id)


ANIMALS = ["cat meow", "dog woof", "cow moo", "sheep baa", "lion roar", "bird tweet", "owl hoot", "duck quack"]


def _rows() -> list[dict[str, str]]:
    rows = [{"prompt": f"The {a.split()[0]} says:", "completion": f" {a.split()[1]}"} for a in ANIMALS]
    # 40 tokens budget (set below): one with a long completion is truncated, one with a long prompt is dropped.
    rows.append({"prompt": "Answer:", "completion": " one two three four five six seven eight nine ten" * 8})
    rows.append({"prompt": "red green blue yellow orange purple black white " * 8, "completion": " Paris"})
    return rows


def test_truncation_counts_are_in_the_events(settings: Settings) -> None:
    settings.base_models["ftserve-tiny"].max_seq_len = 40
    job, events = _run(settings, _upload(settings, _rows()), seed=3)
    assert job.status == "succeeded", job.error
    tokenized = next(e for e in events if e.message.startswith("Tokenized"))
    assert tokenized.data is not None
    assert (tokenized.data["examples"], tokenized.data["truncated"], tokenized.data["dropped"]) == (10, 1, 1)
    assert tokenized.data["dropped_lines"] == [10]
    assert "1 truncated to 40 tokens, 1 dropped" in tokenized.message


def test_same_job_and_seed_give_the_same_curve_and_adapter(settings: Settings) -> None:
    file_id = _upload(settings, _rows())
    runs = [_run(settings, file_id, seed=11, prompt_loss_weight=0.1) for _ in range(2)]
    other = _run(settings, file_id, seed=12, prompt_loss_weight=0.1)
    curves = [[e.data["train_loss"] for e in ev if e.type == "metrics" and e.data] for _, ev in (*runs, other)]
    assert len(curves[0]) == 6  # 9 kept examples / batch 4 = 3 steps per epoch, 2 epochs
    assert curves[0] == curves[1]
    assert curves[2] != curves[0]
    storage = Storage(settings)
    blobs = [(storage.adapter_dir(job.id, None) / "adapter_model.safetensors").read_bytes() for job, _ in runs]
    assert blobs[0] == blobs[1]
    other_blob = (storage.adapter_dir(other[0].id, None) / "adapter_model.safetensors").read_bytes()
    assert other_blob != blobs[0]


def test_a_bf16_base_trains_and_saves_fp32_master_weights(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "_BASES", {})  # load a bf16 copy, not the cached fp32 base
    settings.base_models["ftserve-tiny"].dtype = "bfloat16"
    job, events = _run(settings, _upload(settings, _rows()), seed=11)
    assert job.status == "succeeded", job.error
    curve = [e.data["train_loss"] for e in events if e.type == "metrics" and e.data]
    assert curve[-1] < curve[0]
    tensors = load_file(str(Storage(settings).adapter_dir(job.id, None) / "adapter_model.safetensors"))
    assert tensors and {t.dtype for t in tensors.values()} == {torch.float32}
    # The masters' precision, not bf16 values widened to fp32.
    assert any(not torch.equal(t, t.to(torch.bfloat16).float()) for t in tensors.values())


def test_the_attention_kernel_is_a_setting_and_packed_rows_agree_across_kernels(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.packing = "on"  # packed rows: the kernel must keep examples apart from position_ids alone
    file_id = _upload(settings, _rows())
    curves = {}
    for kernel in ("ftserve_sdpa", "sdpa", "eager"):
        monkeypatch.setattr(pipeline, "_BASES", {})
        settings.train_attn_implementation = kernel  # type: ignore[assignment]
        job, events = _run(settings, file_id, seed=11)
        assert job.status == "succeeded", job.error
        assert pipeline._BASES["ftserve-tiny"][0].config._attn_implementation == kernel
        curves[kernel] = [e.data["train_loss"] for e in events if e.type == "metrics" and e.data]
    assert curves["eager"] == pytest.approx(curves["sdpa"], abs=1e-4)
    assert curves["ftserve_sdpa"] == pytest.approx(curves["sdpa"], abs=1e-4)


def test_auto_attention_is_ftserve_sdpa_without_cuda_and_flash_attn() -> None:
    from ftserve.models.bases import training_attention

    assert training_attention("auto", torch.device("cpu")) == "ftserve_sdpa"
    assert training_attention("eager", torch.device("cpu")) == "eager"
    assert training_attention("flash_attention_2", torch.device("cuda")) == "flash_attention_2"


def test_a_function_calling_file_trains_its_calls(settings: Settings) -> None:
    """OpenAI function-calling lines (tools, tool calls, tool results) go through upload, tokenization with the
    serving renderer and training; the trained tokens are exactly the assistant turns, calls included."""
    from ftserve.core.datasets.chat import parse_chat
    from ftserve.models.bases import base_path
    from ftserve.training.tokenize import tokenize_example
    from tests.tool_data import training_lines

    lines = training_lines()[:12]
    job, events = _run(settings, _upload(settings, lines), seed=5)
    assert job.status == "succeeded", job.error
    tokenized = next(e for e in events if e.message.startswith("Tokenized"))
    assert tokenized.data is not None and (tokenized.data["examples"], tokenized.data["dropped"]) == (12, 0)
    tok = AutoTokenizer.from_pretrained(str(base_path(settings, "ftserve-tiny")))
    examples = [tokenize_example(tok, parse_chat(line, i + 1), 0.0) for i, line in enumerate(lines)]
    assert tokenized.data["tokens"] == sum(len(ex) for ex in examples)
    assert job.trained_tokens == 2 * tokenized.data["tokens"]  # 2 epochs
    for ex in examples:  # the loss is on the call (what serving parses back), never on the tools or results
        weighted = tok.decode([t for t, w in zip(ex.input_ids, ex.weights, strict=True) if w])
        assert weighted.startswith("<tool_call>\n") and "<tools>" not in weighted and "tool_response" not in weighted
    curve = [e.data["train_loss"] for e in events if e.type == "metrics" and e.data]
    assert curve[-1] < curve[0]
