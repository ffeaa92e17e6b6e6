"""Build `ftserve-tiny` offline: a small byte-level BPE tokenizer with a chat template and a random Llama."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

EOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"

# ChatML, like SmolLM2 and Qwen. The end-of-turn token (<|im_end|>) is not the EOS token on purpose:
# it makes every test exercise the case where generation must stop on a token other than EOS.
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


def build_tokenizer(vocab_size: int = 768) -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE tokenizer (any UTF-8 text encodes) trained on a fixed corpus."""
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
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[IM_START, IM_END],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 1024
    return fast


def build_tiny(target: Path, seed: int = 0) -> None:
    """Write the tiny model (config, safetensors weights, tokenizer, generation config) to `target`."""
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
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
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)],
        pad_token_id=tokenizer.pad_token_id,
    )
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
