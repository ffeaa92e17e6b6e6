"""Tiny random models of each supported family, built offline in well under a second each, for tests.

Each has the architecture of its family (from transformers' own config class) and a small BPE tokenizer
(byte-level, or SentencePiece-style for Phi-3) trained on a fixed corpus, with that family's special-token
quirks: no pad token (GPT-2, Phi-2, Pythia), BOS added to every prompt (Llama 3, OPT), a chat end-of-turn token
that is not EOS (ChatML <|im_end|>, Phi-3 <|end|>, Llama 3 <|eot_id|>) and may be missing from the
generation config (Phi-3 here), or no chat template at all (Phi-2, GPT-2, Pythia, StarCoder).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM as Auto
from transformers import (
    GenerationConfig,
    GPT2Config,
    GPTBigCodeConfig,
    GPTNeoXConfig,
    LlamaConfig,
    OPTConfig,
    Phi3Config,
    PhiConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from ftserve.models.tiny import _CORPUS

_EXTRA_CORPUS = """
The cat says: meow. The dog says: woof. The cow says: moo. The sheep says: baa. The lion says: roar.
The bird says: tweet. The horse says: neigh. The fish says: blub. The bear says: growl. The owl says: hoot.
What does the duck say? quack. What does the tiger say? purr. user assistant system model
"""

CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Phi-3-mini's template: <|end|> closes each turn and the whole conversation also ends with EOS.
PHI3_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# A ChatML template that takes `tools`, after Qwen2.5's: the tools in the system turn, assistant calls as
# <tool_call> blocks with their arguments as objects, tool results as user turns of <tool_response> blocks.
TOOLS_CHATML = (
    "{%- if tools %}{{ '<|im_start|>system\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}{% endif %}"
    "{{ '# Tools\n<tools>' }}{% for tool in tools %}{{ '\n' + (tool | tojson) }}{% endfor %}"
    "{{ '\n</tools><|im_end|>\n' }}"
    "{%- elif messages[0]['role'] == 'system' %}{{ '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{%- elif message['role'] == 'assistant' and message.get('tool_calls') %}"
    "{{ '<|im_start|>assistant\n' + message['content'] }}"
    "{%- for call in message['tool_calls'] %}"
    "{{ '<tool_call>\n{\"name\": \"' + call['function']['name'] + '\", \"arguments\": ' }}"
    "{{- call['function']['arguments'] | tojson }}{{ '}\n</tool_call>' }}"
    "{%- endfor %}{{ '<|im_end|>\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{{ '<|im_start|>user\n<tool_response>\n' + message['content'] + '\n</tool_response><|im_end|>\n' }}"
    "{%- else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    """One tiny model family: its base name, config, tokenizer quirks and expected special-token behaviour."""

    name: str
    model_type: str
    config: Callable[[int, dict[str, int | None]], PretrainedConfig]
    specials: list[str]
    eos: str
    bos: str | None = None
    add_bos: bool = False
    pad: str | None = None
    chat_template: str | None = None
    end_of_turn: str | None = None  # the template's end-of-turn token, when it has one
    # Tokens the generation config lists as EOS (the tokenizer's EOS when empty).
    generation_eos: list[str] = field(default_factory=list)
    # SentencePiece-style pieces ("▁word", as Llama 2, Mistral, Gemma and Phi-3 have) instead of byte-level BPE.
    sentencepiece: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


LAYERS = 2
# initializer_range 0.2: wide embeddings, so LoRA can move the frozen output logits far (see tiny.py).
_SMALL: dict[str, Any] = {"initializer_range": 0.2, "max_position_embeddings": 256}
# GPT-2 and StarCoder (gpt_bigcode) share GPT-2's config field names.
_GPT2_SHAPE: dict[str, Any] = dict(
    initializer_range=0.2,
    n_positions=256,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    n_embd=64,
    n_layer=LAYERS,
    n_head=4,
    n_inner=128,
)


def _ids(vocab: int, ids: dict[str, int | None]) -> dict[str, Any]:
    return {"vocab_size": vocab, "bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["pad"]}


FAMILIES: list[Family] = [
    Family(
        "tiny-phi",
        "phi",
        lambda v, i: PhiConfig(
            **_ids(v, i),
            **_SMALL,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
        ),
        ["<|endoftext|>"],
        eos="<|endoftext|>",
        bos="<|endoftext|>",
    ),
    Family(
        "tiny-phi3",
        "phi3",
        lambda v, i: Phi3Config(
            **_ids(v, i),
            **_SMALL,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
        ),
        ["<|endoftext|>", "<s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"],
        eos="<|endoftext|>",
        bos="<s>",
        pad="<|endoftext|>",
        chat_template=PHI3_TEMPLATE,
        end_of_turn="<|end|>",
        generation_eos=["<|endoftext|>"],  # lacks <|end|>: ftserve must add it to the stop set
        sentencepiece=True,
    ),
    Family(
        "tiny-qwen2",
        "qwen2",
        lambda v, i: Qwen2Config(
            **_ids(v, i),
            **_SMALL,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        ),
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        chat_template=CHATML,
        end_of_turn="<|im_end|>",
        generation_eos=["<|im_end|>", "<|endoftext|>"],
    ),
    Family(
        "tiny-llama",
        "llama",
        lambda v, i: LlamaConfig(
            **_ids(v, i),
            **_SMALL,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        ),
        ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        eos="<|end_of_text|>",
        bos="<|begin_of_text|>",
        add_bos=True,
        chat_template=LLAMA3_TEMPLATE,
        end_of_turn="<|eot_id|>",
        generation_eos=["<|end_of_text|>", "<|eot_id|>"],
    ),
    Family(
        "tiny-gpt2",
        "gpt2",
        lambda v, i: GPT2Config(
            **_ids(v, i),
            **_GPT2_SHAPE,
        ),
        ["<|endoftext|>"],
        eos="<|endoftext|>",
        bos="<|endoftext|>",
    ),
    Family(
        "tiny-gpt-neox",
        "gpt_neox",
        lambda v, i: GPTNeoXConfig(
            **_ids(v, i),
            **_SMALL,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
        ),
        ["<|endoftext|>", "<|padding|>"],  # Pythia has a <|padding|> token but no pad_token set
        eos="<|endoftext|>",
        bos="<|endoftext|>",
    ),
    # OPT: BOS = EOS = </s>, added to every prompt; learned positions; its MLP flattens batch and sequence,
    # so the server's LoRA layers see [batch·seq, hidden] there. Not in the target-module table (fallback).
    Family(
        "tiny-opt",
        "opt",
        lambda v, i: OPTConfig(
            **_ids(v, i),
            init_std=0.2,
            max_position_embeddings=256,
            hidden_size=64,
            word_embed_proj_dim=64,
            ffn_dim=128,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            dropout=0.0,
            attention_dropout=0.0,
        ),
        ["</s>", "<pad>"],
        eos="</s>",
        bos="</s>",
        add_bos=True,
        pad="<pad>",
    ),
    # Not in ftserve's target-module table (StarCoder's architecture): exercises the every-linear-layer fallback.
    Family(
        "tiny-starcoder",
        "gpt_bigcode",
        lambda v, i: GPTBigCodeConfig(
            **_ids(v, i),
            **_GPT2_SHAPE,
        ),
        ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>"],
        eos="<|endoftext|>",
        bos="<|endoftext|>",
    ),
]
BY_NAME = {f.name: f for f in FAMILIES}


def build_tokenizer(family: Family, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A deterministic BPE tokenizer with the family's special tokens, pieces and chat template."""
    tok = Tokenizer(models.BPE())
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if family.sentencepiece:
        # Its decoder drops the "▁" of the first piece it decodes, so a reply's leading space is only
        # kept when the reply is decoded after the prompt's text, as ftserve's generation does.
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
        tok.decoder = decoders.Metaspace(prepend_scheme="first")
        alphabet = sorted(set(_CORPUS + _EXTRA_CORPUS + "▁"))
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=family.specials, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator([_CORPUS + _EXTRA_CORPUS] * 4, trainer=trainer)
    if family.add_bos:
        assert family.bos is not None
        bos = (family.bos, tok.token_to_id(family.bos))
        tok.post_processor = processors.TemplateProcessing(
            single=f"{family.bos} $A", pair=f"{family.bos} $A {family.bos} $B", special_tokens=[bos]
        )
    named = {family.eos, family.bos, family.pad}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=family.eos,
        bos_token=family.bos,
        pad_token=family.pad,
        unk_token=None,
        additional_special_tokens=[s for s in family.specials if s not in named],
    )
    if family.chat_template:
        fast.chat_template = family.chat_template
    fast.model_max_length = 256
    return fast


POSITION_SCALE = 0.1


def build_family(family: Family, target: Path, seed: int = 0) -> Path:
    """Write the family's tiny model (fp32 safetensors, tokenizer, generation config) into target."""
    tok = build_tokenizer(family)

    def tid(token: str | None) -> int | None:
        return None if token is None else int(tok.convert_tokens_to_ids(token))

    # No pad id in the model config: an embedding's padding row starts at zero, and where pad is EOS
    # (Qwen2, Phi-3) a tied zero row would leave a random model almost unable to learn to emit EOS.
    config = family.config(len(tok), {"bos": tid(family.bos), "eos": tid(family.eos), "pad": None})
    torch.manual_seed(seed)
    model = Auto.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        # Learned absolute positions (GPT-2, StarCoder) as small as a trained model's: at the token embeddings'
        # scale their noise drowns which animal the prompt names.
        for mod in model.modules():
            if isinstance(mod, torch.nn.Embedding) and mod is not model.get_input_embeddings():
                mod.weight.mul_(POSITION_SCALE)
    eos = [tid(t) for t in family.generation_eos or [family.eos]]
    model.generation_config = GenerationConfig(
        bos_token_id=tid(family.bos), eos_token_id=eos if len(eos) > 1 else eos[0], pad_token_id=tid(family.pad)
    )
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    tok.save_pretrained(target)
    return target


def build_all(root: Path) -> dict[str, Path]:
    """Every family under root/<name>, reusing what an earlier call built."""
    out = {}
    for fam in FAMILIES:
        path = root / fam.name
        if not (path / "config.json").exists():
            build_family(fam, path)
        out[fam.name] = path
    return out


def registry_json(paths: dict[str, Path], learning_rate: float = 2e-2) -> str:
    """FTSERVE_BASE_MODELS for these directories (fp32: exact arithmetic for the logit comparisons)."""
    return json.dumps(
        {
            name: {"source": str(path), "base_learning_rate": learning_rate, "dtype": "float32", "max_seq_len": 256}
            for name, path in paths.items()
        }
    )
