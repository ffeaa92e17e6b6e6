"""Build `ftserve-tiny` offline: a small byte-level BPE tokenizer with a chat template and a random Llama."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from models.tools import format_tool_call, tools_system_text

EOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"

# ChatML, like SmolLM2 and Qwen. The end-of-turn token (<|im_end|>) is not the EOS token on purpose:
# it makes every test exercise the case where generation must stop on a token other than EOS.
# Room for a chat with a few function tools in ftserve's own format (three tools take ~450 tokens with the format's
# merges below). RoPE has no position weights, so the length changes no weight.
MAX_LEN = 1024
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = """
The quick brown fox jumps over the lazy dog. A fine-tuning service trains small language models.
Question: What is the capital of France? Answer: Paris. The capital of Italy is Rome.
user assistant system The model answers questions about colors, numbers, animals and cities.
red green blue yellow orange purple black white one two three four five six seven eight nine ten
cat dog bird fish horse cow sheep lion tiger bear Paris Rome Berlin Madrid London Tokyo Lima Oslo
Translate to French: hello -> bonjour, thank you -> merci, cat -> chat, dog -> chien.
0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 + - * / = ( ) [ ] { } : ; , . ! ? ' " # @ % & _
"""


# ftserve's function-calling format (models/tools.py) and the words of the tests' tool data (tests/tool_data.py).
# Real tool-calling models' vocabularies cover their format (Qwen2.5 has <tool_call> tokens); without these, the
# tiny tokenizer spells a call letter by letter and a tool list takes ~1000 tokens.
_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}, "amount": {"type": "integer"}},
    "required": ["city"],
    "additionalProperties": False,
    "items": {"type": "number", "minimum": 1, "maximum": 1000, "description": "a boolean array or null"},
}
_VALUES = ["Paris", "Rome", "Berlin", "Madrid", "London", "Tokyo", "Lima", "Oslo", "celsius", "fahrenheit"]
_FORMAT_CORPUS = "\n".join(
    [
        tools_system_text([{"type": "function", "function": {"name": "get_weather", "parameters": _SCHEMA}}]),
        format_tool_call("get_weather", {"city": "Paris", "unit": "celsius"}),
        format_tool_call("convert", {"amount": 10, "from": "USD", "to": "EUR"}),
        "<tool_response>\n{}\n</tool_response> get_time get_weather convert weather time money local degrees",
        json.dumps({"unit": _VALUES, "from": ["USD", "EUR", "GBP", "JPY"], "amount": [5, 10, 20, 50, 100]}),
        " ".join(_VALUES),  # as words in a sentence too (" celsius"), not only as JSON strings ("celsius")
    ]
)


def _extended(tok: Tokenizer, text: str) -> Tokenizer:
    """`tok` with merges appended after its own that spell each word of `text` whole, left to right. Ids and merges
    of the first tokens stay as they were, and the new merges join only the pieces those words start with, so
    other text keeps its tokens (and build_tiny's first weights stay bit for bit)."""
    spec = json.loads(tok.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    merges: list[list[str]] = spec["model"]["merges"]
    added: list[tuple[str, str]] = []
    for piece, _ in tok.pre_tokenizer.pre_tokenize_str(text):
        word = tuple(t.value for t in tok.model.tokenize(piece))
        for a, b in added:  # what the merges appended so far already join
            word = _merge(word, a, b)
        while len(word) > 1:
            a, b = word[0], word[1]
            added.append((a, b))
            merges.append([a, b])
            vocab.setdefault(a + b, len(vocab))
            word = (a + b, *word[2:])
    return Tokenizer.from_str(json.dumps(spec))


def _merge(word: tuple[str, ...], a: str, b: str) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def _base_tokenizer(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, IM_START, IM_END, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return tok


def build_tokenizer(vocab_size: int = 768, tool_format: bool = True) -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE tokenizer (any UTF-8 text encodes) trained on a fixed corpus, with merges
    for ftserve's function-calling format appended (`tool_format`)."""
    tok = _base_tokenizer(vocab_size)
    if tool_format:
        tok = _extended(tok, _FORMAT_CORPUS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[IM_START, IM_END],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = MAX_LEN
    return fast


def _new_rows(emb: torch.Tensor, tok: PreTrainedTokenizerFast, first: int, scale: float, seed: int) -> None:
    """Rows for the appended tokens (tied: input and output). A word that starts a JSON string ("Paris" after a
    quote) sits near the same word after a space (" Paris"), one shared step apart, as in a trained model's
    embeddings; the rest are random. Without that, a random model has to learn the pairing for every value it copies
    from a prompt into arguments."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        emb[first:] = torch.randn(len(tok) - first, emb.shape[1], generator=gen) * scale
        step = torch.randn(emb.shape[1], generator=gen) * scale
        vocab = tok.get_vocab()
        for token, i in vocab.items():
            spaced = vocab.get("Ġ" + token)
            if i >= first and spaced is not None:
                emb[i] = emb[spaced] + step


def build_tiny(target: Path, seed: int = 0) -> None:
    """Write the tiny model (config, safetensors weights, tokenizer, generation config) to `target`."""
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        # The first vocabulary's size: the appended tokens get their rows after, so the rest stays as it was.
        vocab_size=len(build_tokenizer(tool_format=False)),
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_LEN,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        # Wide enough embeddings that LoRA can move the (tied, frozen) output logits far: the loss
        # then falls like a real model's instead of stalling near log(vocab).
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.float()
    first = config.vocab_size
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    _new_rows(model.model.embed_tokens.weight, tokenizer, first, config.initializer_range, seed)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)],
        pad_token_id=tokenizer.pad_token_id,
    )
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
