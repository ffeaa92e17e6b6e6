"""Load a stored JSONL file (revalidating it) and tokenize it for training."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from ftserve.core.config import Settings
from ftserve.core.datasets.validate import iter_examples
from ftserve.core.storage import Storage
from ftserve.training.tokenize import TokenizedExample, TokenizeStats, fit_to_length, tokenize_example


def load_tokenized(
    settings: Settings, file_id: str, tok: PreTrainedTokenizerBase, prompt_loss_weight: float, max_len: int
) -> tuple[list[TokenizedExample], TokenizeStats]:
    """Every example of the file as tokens and weights, over-long ones truncated or dropped."""
    stats = TokenizeStats()
    out: list[TokenizedExample] = []
    path = Storage(settings).local_file(file_id)
    for lineno, _fmt, example in iter_examples(path, settings.max_line_bytes):
        stats.examples += 1
        ex = tokenize_example(tok, example, prompt_loss_weight)
        stats.boundary_fixed += int(ex.boundary_fixed)
        fitted = fit_to_length(ex, max_len)
        if fitted is None:
            stats.dropped += 1
            stats.dropped_lines.append(lineno)
            continue
        stats.truncated += int(len(fitted) < len(ex))
        stats.tokens += len(fitted)
        out.append(fitted)
    return out, stats
