"""DPO's reference log-probs: computed once per pair from the starting model, kept beside the job's
checkpoints so a resumed job reuses them, and recomputed from the starting model only if they are lost."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file

from ftserve.core.errors import TrainingError
from ftserve.core.storage import ADAPTER_WEIGHTS
from ftserve.training.methods.dpo_rows import build_rows, row_logps
from ftserve.training.preference import PreferencePair

REFERENCE_FILE = "dpo_reference.pt"
# Pairs per reference batch: bounds the rows (and their masks) alive at once.
CHUNK = 256


def fingerprint(*datasets: list[PreferencePair]) -> str:
    """Identifies the tokenized data the saved log-probs belong to."""
    digest = hashlib.sha256()
    for pairs in datasets:
        digest.update(str(len(pairs)).encode())
        for pair in pairs:
            digest.update(repr((pair.prompt, pair.chosen, pair.rejected)).encode())
    return digest.hexdigest()


@torch.no_grad()
def compute(
    model: PeftModel,
    pairs: list[PreferencePair],
    cap: int,
    device: torch.device,
    groups: list[list[int]] | None = None,
) -> torch.Tensor:
    """[pairs, 2]: each pair's summed log-prob of its chosen and rejected reply under the model as it is now.

    `groups` (default: chunks of CHUNK pairs) are packed into rows group by group. Given the first epoch's
    step groups, the rows are exactly those of the first epoch's steps, so in bf16 too the first step's
    policy log-probs equal the reference bit for bit (a pair's numerics depend slightly on its row's
    neighbours)."""
    model.eval()
    out = torch.zeros((len(pairs), 2), dtype=torch.float32)
    chunks = groups or [list(range(b, min(b + CHUNK, len(pairs)))) for b in range(0, len(pairs), CHUNK)]
    for chunk in chunks:
        for row in build_rows(pairs, chunk, cap):
            logps = row_logps(model, row, device)
            out[row.pairs, 0] = logps.chosen.cpu()
            out[row.pairs, 1] = logps.rejected.cpu()
    return out


def save(path: Path, key: str, train: torch.Tensor, valid: torch.Tensor) -> None:
    """Write the reference log-probs atomically (a resumed job must never read half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({"fingerprint": key, "train": train, "valid": valid}, tmp)
    os.replace(tmp, path)


def load(path: Path, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The saved log-probs if they belong to this data, else None."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError):
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != key:
        return None
    return state["train"], state["valid"]


@contextmanager
def starting_model(model: PeftModel, start: Path | None) -> Iterator[None]:
    """While inside, the model computes as the job's starting model: the base (adapter disabled), or the
    fine-tuned model it started from (its adapter weights swapped in, then the trained ones put back)."""
    if start is None:
        with model.disable_adapter():
            yield
        return
    weights = start / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise TrainingError(
            "model_not_found",
            "The fine-tuned model this job started from was deleted, and DPO's reference log-probs must be "
            "recomputed from it after a restart",
            "model",
        )
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    set_peft_model_state_dict(model, load_file(str(weights)))
    try:
        yield
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in trained:
                    p.copy_(trained[n])
