"""load_base hands the LM head a contiguous input, so prefill's last-position view avoids torch's slow path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ftserve.core.config import Settings
from ftserve.models.bases import load_base


def test_lm_head_sees_a_contiguous_last_position(bases_dir: Path) -> None:
    settings = Settings(data_dir=bases_dir, bases_dir=bases_dir)
    model, _ = load_base(settings, "ftserve-tiny", torch.device("cpu"))
    seen: list[tuple[tuple[int, ...], bool]] = []

    def record(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        seen.append((tuple(args[0].shape), args[0].is_contiguous()))

    model.get_output_embeddings().register_forward_pre_hook(record)
    ids = torch.randint(5, 100, (3, 7))
    with torch.inference_mode():
        out = model(input_ids=ids, logits_to_keep=1, use_cache=False)
    assert out.logits.shape[:2] == (3, 1)
    assert seen == [((3, 1, model.config.hidden_size), True)]
