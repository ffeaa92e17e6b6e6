"""The tokens that end a generated turn, shared by training (what the loss teaches) and inference (where it stops)."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

_PROBE = "ftserve-probe-reply"


def end_of_turn_token(tok: PreTrainedTokenizerBase) -> str | None:
    """The added token the chat template closes an assistant turn with (<|im_end|>, <|end|>, <|eot_id|>, </s>).

    Found by rendering a probe conversation and reading the first token after the reply; None when the
    template has none (or no template): chat training then appends the EOS token after each trained turn.
    """
    if not tok.chat_template:
        return None
    msgs = [{"role": "user", "content": "ftserve-probe"}, {"role": "assistant", "content": _PROBE}]
    try:
        text = tok.apply_chat_template(msgs, tokenize=False)
    except Exception:  # a template that refuses the probe (odd role rules) tells us nothing
        return None
    if not isinstance(text, str) or _PROBE not in text:
        return None
    after = text[text.rindex(_PROBE) + len(_PROBE) :].lstrip()
    if not after:
        return None
    ids = tok(after, add_special_tokens=False)["input_ids"]
    added = set(tok.all_special_ids) | set(getattr(tok, "added_tokens_decoder", {}))
    if not ids or ids[0] not in added:
        return None
    token = tok.convert_ids_to_tokens(ids[0])
    return token if isinstance(token, str) else None


def end_of_turn_id(tok: PreTrainedTokenizerBase) -> int | None:
    token = end_of_turn_token(tok)
    if token is None:
        return None
    found = tok.convert_tokens_to_ids(token)
    return found if isinstance(found, int) else None


def stop_token_ids(generation_config: Any, tok: PreTrainedTokenizerBase) -> set[int]:
    """Every token that ends generation: the generation config's EOS ids, the tokenizer's EOS and the
    chat template's end-of-turn token (added when the generation config lacks it)."""
    ids: set[int] = set()
    eos = generation_config.eos_token_id if generation_config is not None else None
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(int(i) for i in eos)
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    eot = end_of_turn_id(tok)
    if eot is not None:
        ids.add(eot)
    return ids
