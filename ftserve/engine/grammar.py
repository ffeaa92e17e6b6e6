"""Grammar-constrained decoding with llguidance: each distinct constraint compiled once per base (a bounded
LRU, off the batcher thread), a matcher per row, and the row's next-token mask over the logits.

A constrained row's mask changes only that row's logits; the row finishes when its grammar is complete and
allows nothing but an end token. JSON is generated compactly (", " and ": " separators, no free whitespace),
so a grammar whose values are bounded always ends, whatever the model's weights.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

import llguidance
import llguidance.hf
import llguidance.torch
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from ftserve.engine.constraint import Constraint
from ftserve.engine.errors import InvalidConstraint

# JSON as json.dumps writes it: a model writes the separators it has seen most, and with no optional
# whitespace a random model cannot stall in it.
JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}


def strict_schema(schema: Any, close: bool = True) -> Any:
    """The schema with OpenAI's strict-mode objects: those that do not say otherwise take no properties beyond
    those they declare (what a client means by a schema; a model must not invent keys).

    The branches of an `allOf` are left open themselves (`close` False): each sees only its own properties, so
    closing two of them would refuse every object either one declares."""
    if isinstance(schema, list):
        return [strict_schema(s, close) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas"):
        if isinstance(out.get(key), dict):
            out[key] = {name: strict_schema(sub) for name, sub in out[key].items()}
    for key in ("items", "additionalItems", "contains", "not", "if", "then", "else", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = strict_schema(out[key])
    for key in ("prefixItems", "anyOf", "oneOf", "items"):
        if isinstance(out.get(key), list):
            out[key] = strict_schema(out[key])
    if isinstance(out.get("allOf"), list):
        out["allOf"] = strict_schema(out["allOf"], close=False)
    is_object = out.get("type") == "object" or "properties" in out
    if close and is_object and "additionalProperties" not in out and "patternProperties" not in out:
        out["additionalProperties"] = False
    return out


def grammar_text(c: Constraint) -> str:
    """The constraint as an llguidance grammar; InvalidConstraint when its source is not even well-formed."""
    if c.kind == "lark":
        return str(llguidance.LLMatcher.grammar_from_lark(c.source))
    if c.kind == "json_object":
        schema: Any = {"type": "object"}
    else:
        try:
            schema = json.loads(c.source)
        except ValueError as exc:
            raise InvalidConstraint(f"The JSON schema is not valid JSON: {exc}", kind=c.kind) from None
        if not isinstance(schema, dict):
            raise InvalidConstraint("The JSON schema must be a JSON object", kind=c.kind)
    try:
        return str(llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS))  # type: ignore[arg-type]
    except ValueError as exc:
        raise InvalidConstraint(f"The JSON schema cannot be used: {exc}", kind=c.kind) from None


class RowGrammar:
    """One row's position in its grammar: the mask of tokens it may take next, and the tokens it took."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab: int) -> None:
        self.matcher = matcher
        self.vocab = vocab
        self.bits = llguidance.torch.allocate_token_bitmask(1, vocab)

    def allowed(self) -> np.ndarray:
        """The tokens the grammar allows next, as a bool vector over the model's logits."""
        llguidance.torch.fill_next_token_bitmask(self.matcher, self.bits, 0)
        if self.matcher.is_error():
            raise RuntimeError(f"grammar error: {self.matcher.get_error()}")
        # numpy, not torch: unpacking and masking one row this way costs a fraction of torch's CPU kernels.
        allowed = np.unpackbits(self.bits[0].numpy().view(np.uint8), bitorder="little")[: self.vocab].view(np.bool_)
        if not allowed.any():
            raise RuntimeError("the grammar allows no token of this model's vocabulary here")
        return allowed

    def mask(self, logits: torch.Tensor, allowed: np.ndarray | None = None) -> torch.Tensor:
        """The row's logits (float32) with every token the grammar forbids at -inf."""
        if allowed is None:
            allowed = self.allowed()
        x = logits.float().numpy()
        if allowed.shape[0] < x.shape[0]:  # logits past the tokenizer's vocabulary (padding) are never allowed
            allowed = np.concatenate([allowed, np.zeros(x.shape[0] - allowed.shape[0], dtype=np.bool_)])
        return torch.from_numpy(np.where(allowed[: x.shape[0]], x, np.float32(-np.inf)))

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused token {token}: {self.matcher.get_error()}")

    @property
    def complete(self) -> bool:
        """The grammar is satisfied and allows nothing more but an end token."""
        return bool(self.matcher.is_stopped())


class Grammars:
    """One base's compiled constraints: a bounded LRU keyed by (kind, source); thread-safe."""

    def __init__(self, tok: PreTrainedTokenizerBase, vocab: int, stop_ids: set[int], size: int) -> None:
        self.tok, self.vocab, self.stop_ids, self.size = tok, vocab, sorted(stop_ids), size
        self._lock = threading.Lock()
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._compiled: OrderedDict[Constraint, llguidance.LLMatcher] = OrderedDict()

    def tokenizer(self) -> llguidance.LLTokenizer:
        """llguidance's view of the vocabulary (built once: it costs up to a second on a large vocabulary)."""
        with self._lock:
            if self._tokenizer is None:
                # Every stop token ends a grammar: the chat end-of-turn token as well as EOS.
                self._tokenizer = llguidance.hf.from_tokenizer(
                    self.tok,  # type: ignore[arg-type]
                    n_vocab=self.vocab,
                    eos_token=self.stop_ids,
                )
            return self._tokenizer

    def compile(self, c: Constraint) -> llguidance.LLMatcher:
        """The constraint's matcher at its start (cached); InvalidConstraint when the library refuses it."""
        with self._lock:
            found = self._compiled.get(c)
            if found is not None:
                self._compiled.move_to_end(c)
                return found
        matcher = llguidance.LLMatcher(self.tokenizer(), grammar_text(c), log_level=0)
        if matcher.is_error():
            raise InvalidConstraint(matcher.get_error(), kind=c.kind)
        try:  # a grammar whose first token this vocabulary cannot write would fail its rows: refuse it now
            RowGrammar(matcher.deep_copy(), self.vocab).allowed()
        except RuntimeError as exc:
            raise InvalidConstraint(str(exc), kind=c.kind) from None
        with self._lock:
            self._compiled[c] = matcher
            while len(self._compiled) > self.size:
                self._compiled.popitem(last=False)
        return matcher

    def row(self, c: Constraint) -> RowGrammar:
        """A fresh matcher for one row (a copy of the compiled one)."""
        return RowGrammar(self.compile(c).deep_copy(), self.vocab)

    def __len__(self) -> int:
        return len(self._compiled)
