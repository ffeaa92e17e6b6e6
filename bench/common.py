"""Shared by the training benchmarks: a prepared base, a generated dataset, and a held-out completion loss."""

from __future__ import annotations

import random
import resource
import sys
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from ftserve.core.config import Settings
from ftserve.core.datasets.formats import PromptCompletion
from ftserve.models.bases import prepare_base, resolve_dtype
from ftserve.training.batching import padded_microbatches
from ftserve.training.tokenize import TokenizedExample, tokenize_example
from ftserve.training.trainer import loss_sums

DEFAULT_DATA = Path("data/bench")
WORDS = (  # noqa: SIM905 - a word list reads better as text
    "time year people way day man thing woman life child world school state family student group country "
    "problem hand part place case week company system program question work government number night point "
    "home water room mother area money story fact month lot right study book eye job word business issue "
    "side kind head house service friend father power hour game line end member law car city community name "
    "president team minute idea kid body information back parent face others level office door health person "
    "art war history party result change morning reason research girl guy moment air teacher force education "
    "river garden window letter music table paper summer winter market energy animal island doctor picture"
).split()


def settings_for(data_dir: Path) -> Settings:
    """Settings whose bases live under the benchmark's data dir (prepared once, offline)."""
    return Settings(data_dir=data_dir, bases_dir=data_dir / "bases")


def load_model(
    data_dir: Path, name: str, device: torch.device, dtype: torch.dtype | None = None
) -> tuple[Any, PreTrainedTokenizerBase]:
    """The prepared base in ftserve's dtype for this device (bf16 where supported) or `dtype`, with sdpa attention."""
    settings = settings_for(data_dir)
    path = prepare_base(settings, name, lambda m: print(m, file=sys.stderr))
    dtype = dtype or resolve_dtype(settings.base_models[name], device)
    model: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, attn_implementation="sdpa")
    model.to(device)
    if getattr(model, "hf_quantizer", None) is not None:
        # The built-in SmolLM2 directory keeps the GGUF source's quantization_config although its weights
        # are plain bf16; Trainer would refuse to train a "GGUF-quantized" model.
        model.hf_quantizer = None
        model.is_quantized = False
        model.config.quantization_config = None
        del model.config.quantization_config
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


def add_lora(model: Any, seed: int, rank: int = 8) -> PeftModel:
    """The same LoRA for every method: rank 8, alpha 16, all linear layers, A initialised from `seed`."""
    torch.manual_seed(seed)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)  # type: ignore[return-value]


def make_example(kind: float, words: list[str]) -> PromptCompletion:
    """One instruction-style example on these words, with a completion the prompt determines.

    Three tasks with the spread real SFT data has: long answers (rewrite in upper case), short answers from
    long prompts (count the words, first and last word).
    """
    text = " ".join(words)
    if kind < 0.5:
        return PromptCompletion(f"Rewrite in upper case: {text}\nAnswer:", " " + text.upper())
    if kind < 0.75:
        return PromptCompletion(f"How many words are in: {text}\nAnswer:", f" {len(words)}")
    return PromptCompletion(f"First and last word of: {text}\nAnswer:", f" {words[0]} {words[-1]}")


def make_dataset(
    n: int, seed: int, tok: PreTrainedTokenizerBase, low: int = 20, high: int = 600
) -> list[PromptCompletion]:
    """n examples whose token lengths (with this tokenizer) spread log-uniformly between about low and high."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        target = round(low * (high / low) ** rng.random())
        kind = rng.random()
        words = [rng.choice(WORDS) for _ in range(max(2, target))]
        guess = max(2, target // 3)
        length = len(tok(_text(make_example(kind, words[:guess])))["input_ids"])
        fitted = max(2, min(len(words), round(guess * target / max(length, 1))))
        out.append(make_example(kind, words[:fitted]))
    return out


def _text(ex: PromptCompletion) -> str:
    return ex.prompt + ex.completion


def tokenize_all(
    tok: PreTrainedTokenizerBase, examples: list[PromptCompletion], plw: float = 0.0
) -> list[TokenizedExample]:
    return [tokenize_example(tok, ex, plw) for ex in examples]


@torch.no_grad()
def completion_loss(model: Any, tok: PreTrainedTokenizerBase, examples: list[TokenizedExample]) -> float:
    """Mean cross-entropy over completion tokens (and EOS) of held-out examples: what every method is for."""
    model.eval()
    device = next(model.parameters()).device
    masked = [TokenizedExample(e.input_ids, [float(c) for c in e.completion], e.completion) for e in examples]
    ce = weight = 0.0
    for mb in padded_microbatches(masked, int(tok.pad_token_id or 0), 2048):
        sums = loss_sums(model, mb, device)
        ce += float(sums.weighted_ce)
        weight += sums.weight
    return ce / weight


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on CUDA; this process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
