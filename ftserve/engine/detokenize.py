"""Turn generated token ids into the reply's text exactly as it continues the prompt."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


def decode_reply(tok: PreTrainedTokenizerBase, prompt_ids: list[int], ids: list[int]) -> str:
    """The text `ids` add after the prompt (special tokens skipped).

    SentencePiece-style decoders (Llama 2, Mistral, Gemma, Phi-3) drop the leading space of the first
    piece they decode, so " meow" alone decodes to "meow": decode the reply after the prompt's last
    token and keep what it adds.
    """
    tail = prompt_ids[-1:]
    prefix = str(tok.decode(tail, skip_special_tokens=True))
    if prefix:
        text = str(tok.decode(tail + ids, skip_special_tokens=True))
        if text.startswith(prefix):
            return text[len(prefix) :]
    return str(tok.decode(ids, skip_special_tokens=True))
