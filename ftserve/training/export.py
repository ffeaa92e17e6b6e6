"""Write adapters atomically (a half-written checkpoint is never used) and the result CSV."""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from ftserve.core.storage import COMPLETE

STATE_FILE = "trainer_state.pt"
RESULT_COLUMNS = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]


def write_adapter(model: PeftModel, folder: Path, state: dict[str, Any] | None = None) -> None:
    """Write the PEFT adapter (adapter_config.json + adapter_model.safetensors) and the trainer state to
    resume from into folder (a staging directory), the completion marker last."""
    model.save_pretrained(str(folder), safe_serialization=True)
    if state is not None:
        torch.save(state, folder / STATE_FILE)
    (folder / COMPLETE).write_text("ok\n")


def save_adapter(model: PeftModel, target: Path, state: dict[str, Any] | None = None) -> None:
    """write_adapter into target atomically (written aside, then renamed into place), for adapters written
    outside a job's lease (tests, benchmarks); a job's own adapters are promoted by its training store."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write_adapter(model, tmp, state)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def results_csv(rows: list[dict[str, Any]], columns: list[str] = RESULT_COLUMNS) -> bytes:
    """OpenAI's fine-tune-results CSV: one row per step (a DPO job adds its reward columns)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buf.getvalue().encode()
