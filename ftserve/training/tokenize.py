"""Turn examples into token ids with per-token loss weights that match what the model sees at inference."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from ftserve.core.datasets.formats import Chat, Example, Preference, Prompt, PromptCompletion
from ftserve.core.errors import TrainingError
from ftserve.models.chat import render_chat
from ftserve.models.special_tokens import end_of_turn_token

Segment = tuple[str, float, bool]  # (text, loss weight, counts as completion)


@dataclass
class TokenizedExample:
    """input_ids and, per position t, the weight of predicting input_ids[t] (position 0 predicts nothing)."""

    input_ids: list[int]
    weights: list[float]
    completion: list[bool]
    boundary_fixed: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class TokenizeStats:
    examples: int = 0
    truncated: int = 0
    dropped: int = 0
    boundary_fixed: int = 0
    tokens: int = 0
    dropped_lines: list[int] = field(default_factory=list)


def encode_segments(
    tok: PreTrainedTokenizerBase, segments: list[Segment], add_special_tokens: bool
) -> TokenizedExample:
    """Tokenize segment by segment so each token's weight is exact.

    Each prefix is tokenized whole; when a segment boundary merges into one token (the whole text's
    tokens do not start with the prefix's tokens), the segment is encoded on its own instead, because
    at inference the model sees the prompt's own tokens and then generates the rest.
    """
    ids: list[int] = []
    weights: list[float] = []
    completion: list[bool] = []
    text = ""
    fixed = False
    for seg_text, weight, is_completion in segments:
        if not seg_text:
            continue
        whole = tok(text + seg_text, add_special_tokens=add_special_tokens)["input_ids"]
        if whole[: len(ids)] == ids:
            new = whole[len(ids) :]
        else:
            new = tok(seg_text, add_special_tokens=False)["input_ids"]
            fixed = True
        ids.extend(new)
        weights.extend([weight] * len(new))
        completion.extend([is_completion] * len(new))
        text += seg_text
    return TokenizedExample(ids, weights, completion, fixed)


def chat_segments(tok: PreTrainedTokenizerBase, example: Chat, prompt_loss_weight: float) -> list[Segment]:
    """Split the rendered chat into spans: assistant turns (weight 1, or prompt weight if weight=0) and the rest.

    Assistant turns include their tool calls, rendered as serving renders and parses them (models/chat.py); tool
    results, like the user's messages, are prompt. A trained turn ends with the template's end-of-turn token (the
    one inference stops at); a template without one gets the EOS token appended after each assistant turn instead.
    """
    if not tok.chat_template:
        raise TrainingError(
            "invalid_training_file",
            "This base model has no chat template; use prompt/completion examples or register a chat model",
            "training_file",
        )
    msgs = [m.as_openai() for m in example.messages]
    tools = list(example.tools) or None
    full = render_chat(tok, msgs, tools=tools)
    eot = end_of_turn_token(tok)
    segments: list[Segment] = []
    pos = 0
    for i, m in enumerate(example.messages):
        if m.role != "assistant":
            continue
        prefix = render_chat(tok, msgs[:i], add_generation_prompt=True, tools=tools) if i else ""
        start = len(prefix)
        end = _turn_end(tok, full, msgs, i, start, eot, tools)
        if not full.startswith(prefix) or start < pos or end is None or start > end:
            raise TrainingError(
                "unsupported_chat_template", "The chat template does not render conversations prefix by prefix", "model"
            )
        segments.append((full[pos:start], prompt_loss_weight, False))
        trained = m.weight == 1
        weight = 1.0 if trained else prompt_loss_weight
        segments.append((full[start:end], weight, trained))
        if eot is None and tok.eos_token:
            segments.append((str(tok.eos_token), weight, trained))
        pos = end
    segments.append((full[pos:], prompt_loss_weight, False))
    return segments


def _turn_end(
    tok: PreTrainedTokenizerBase,
    full: str,
    msgs: list[dict[str, Any]],
    i: int,
    start: int,
    eot: str | None,
    tools: list[dict[str, Any]] | None = None,
) -> int | None:
    """Where assistant turn i ends in the rendered chat: just after its end-of-turn token."""
    if eot is not None:
        # Not "render msgs[:i+1]": templates such as Phi-3's close the whole conversation with EOS as well.
        at = full.find(eot, start)
        return None if at == -1 else at + len(eot)
    end_text = render_chat(tok, msgs[: i + 1], tools=tools)
    # Whitespace after the turn is never generated (generation stops at the end token).
    return len(end_text.rstrip()) if full.startswith(end_text) else None


def tokenize_example(tok: PreTrainedTokenizerBase, example: Example, prompt_loss_weight: float) -> TokenizedExample:
    """Token ids and weights for one example; prompt/completion ends with the trained EOS token."""
    if isinstance(example, PromptCompletion):
        segs: list[Segment] = [(example.prompt, prompt_loss_weight, False), (example.completion, 1.0, True)]
        out = encode_segments(tok, segs, add_special_tokens=True)
        if tok.eos_token_id is None:
            raise TrainingError("model_not_supported", "The base model's tokenizer has no EOS token", "model")
        out.input_ids.append(int(tok.eos_token_id))
        out.weights.append(1.0)
        out.completion.append(True)
        return out
    if isinstance(example, Preference | Prompt):  # job creation refuses these; the check keeps the types honest
        what = (
            "Preference pairs train with method.type 'dpo'"
            if isinstance(example, Preference)
            else ("Prompts without answers train with method.type 'reinforcement'")
        )
        raise TrainingError("invalid_training_file", f"{what}, not 'supervised'", "training_file")
    return encode_segments(tok, chat_segments(tok, example, prompt_loss_weight), add_special_tokens=False)


def fit_to_length(ex: TokenizedExample, max_len: int) -> TokenizedExample | None:
    """Truncate to max_len tokens; None when no completion token survives (the example is dropped)."""
    if len(ex) > max_len:
        ex = TokenizedExample(ex.input_ids[:max_len], ex.weights[:max_len], ex.completion[:max_len], ex.boundary_fixed)
    # Position 0 predicts nothing, so a completion token there carries no loss either.
    if not any(ex.completion[1:]):
        return None
    return ex
