"""xgrammar against llguidance on this machine: JSON-schema coverage, compile time and per-token mask time.

    python bench/grammar_libraries.py --bases-dir DIR [--base smollm2-135m-instruct]

Each schema is compiled by both libraries (a schema a library refuses counts against its coverage); then a
valid instance of it is walked token by token with the base's tokenizer, timing the next-token mask at every
position (the cost a constrained row adds to each decode step). Figures go to docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import llguidance
import llguidance.hf
import llguidance.torch
import torch
import xgrammar as xgr
from transformers import AutoTokenizer, PreTrainedTokenizerBase

# (name, schema, a valid instance) — the features clients' schemas use (pydantic, zod, instructor, LangChain).
SCHEMAS: list[tuple[str, dict[str, Any], Any]] = [
    (
        "object",
        {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
        },
        {"name": "Ada", "age": 36},
    ),
    ("enum", {"type": "string", "enum": ["red", "green", "blue"]}, "green"),
    (
        "integer bounds",
        {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 12}}, "required": ["n"]},
        {"n": 7},
    ),
    ("string maxLength", {"type": "string", "maxLength": 8}, "abc"),
    ("pattern", {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}, "ABC-12"),
    ("array bounds", {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3}, [1, 2]),
    ("anyOf", {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 4}]}, "hi"),
    (
        "$defs + $ref",
        {
            "$defs": {
                "Pet": {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}}, "required": ["kind"]}
            },
            "type": "object",
            "properties": {"pets": {"type": "array", "items": {"$ref": "#/$defs/Pet"}}},
            "required": ["pets"],
        },
        {"pets": [{"kind": "cat"}]},
    ),
    (
        "recursive $ref",
        {
            "$defs": {
                "Node": {
                    "type": "object",
                    "properties": {
                        "v": {"type": "integer"},
                        "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                    },
                    "required": ["v", "children"],
                }
            },
            "$ref": "#/$defs/Node",
        },
        {"v": 1, "children": [{"v": 2, "children": []}]},
    ),
    (
        "additionalProperties false",
        {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"], "additionalProperties": False},
        {"a": True},
    ),
    ("const", {"type": "object", "properties": {"kind": {"const": "point"}}, "required": ["kind"]}, {"kind": "point"}),
    ("number exclusiveMinimum", {"type": "number", "exclusiveMinimum": 0}, 2.5),
    ("format date-time", {"type": "string", "format": "date-time"}, "2026-11-30T07:00:00Z"),
    ("nullable (type list)", {"type": ["string", "null"]}, None),
    (
        "allOf",
        {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}]},
        {"a": 1},
    ),
    ("uniqueItems", {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, [1, 2]),
    (
        "oneOf objects",
        {
            "oneOf": [
                {"type": "object", "properties": {"t": {"const": "a"}}, "required": ["t"]},
                {
                    "type": "object",
                    "properties": {"t": {"const": "b"}, "x": {"type": "integer"}},
                    "required": ["t", "x"],
                },
            ]
        },
        {"t": "b", "x": 3},
    ),
    ("minLength", {"type": "string", "minLength": 2, "maxLength": 5}, "abcd"),
    (
        "patternProperties",
        {"type": "object", "patternProperties": {"^x_": {"type": "integer"}}, "additionalProperties": False},
        {"x_a": 1},
    ),
]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


class XGrammar:
    name = "xgrammar"

    def __init__(self, tok: PreTrainedTokenizerBase, vocab: int) -> None:
        info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab)
        self.compiler = xgr.GrammarCompiler(info, max_threads=1)
        self.vocab = vocab

    def compile(self, schema: dict[str, Any]) -> Any:
        return self.compiler.compile_json_schema(json.dumps(schema), strict_mode=True)

    def walk(self, compiled: Any, ids: list[int], eos: int) -> list[float]:
        start = time.perf_counter()
        matcher = xgr.GrammarMatcher(compiled)
        mask = xgr.allocate_token_bitmask(1, self.vocab)
        times = [time.perf_counter() - start]
        for token in [*ids, eos]:
            _, t = _timed(lambda: matcher.fill_next_token_bitmask(mask, 0))
            times.append(t)
            if not matcher.accept_token(token):
                raise ValueError(f"xgrammar refused token {token} of a valid instance")
        return times


class LLGuidance:
    name = "llguidance"

    def __init__(self, tok: PreTrainedTokenizerBase, vocab: int) -> None:
        self.tokenizer = llguidance.hf.from_tokenizer(tok, n_vocab=vocab)
        self.vocab = vocab

    def compile(self, schema: dict[str, Any]) -> Any:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
        error = llguidance.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error:
            raise ValueError(error)
        return grammar

    def walk(self, compiled: Any, ids: list[int], eos: int) -> list[float]:
        start = time.perf_counter()
        matcher = llguidance.LLMatcher(self.tokenizer, compiled)
        mask = llguidance.torch.allocate_token_bitmask(1, self.vocab)
        times = [time.perf_counter() - start]
        for token in [*ids, eos]:
            _, t = _timed(lambda: llguidance.torch.fill_next_token_bitmask(matcher, mask, 0))
            times.append(t)
            if not matcher.consume_token(token):
                raise ValueError(f"llguidance refused token {token} of a valid instance: {matcher.get_error()}")
        return times


def run(tok: PreTrainedTokenizerBase) -> dict[str, dict[str, Any]]:
    vocab = max(len(tok), int(getattr(tok, "vocab_size", 0)))
    eos = int(tok.eos_token_id)
    results: dict[str, dict[str, Any]] = {}
    for lib in (XGrammar(tok, vocab), LLGuidance(tok, vocab)):
        compiled_ok, compile_s, mask_s, failures = 0, [], [], []
        for name, schema, instance in SCHEMAS:
            try:
                compiled, t = _timed(partial(lib.compile, schema))
                ids = tok(json.dumps(instance), add_special_tokens=False)["input_ids"]
                setup, first, *rest = lib.walk(compiled, ids, eos)
                mask_s.extend(rest)
            except Exception as exc:  # a refusal or a wrong mask both count against the library
                failures.append(f"{name}: {type(exc).__name__}: {str(exc)[:80]}")
                continue
            compiled_ok += 1
            compile_s.append(t + setup + first)  # until the first mask is ready
        results[lib.name] = {
            "schemas": f"{compiled_ok}/{len(SCHEMAS)}",
            "first_mask_ms_median": 1000 * statistics.median(compile_s) if compile_s else None,
            "first_mask_ms_max": 1000 * max(compile_s) if compile_s else None,
            "mask_us_median": 1e6 * statistics.median(mask_s) if mask_s else None,
            "mask_us_p90": 1e6 * statistics.quantiles(mask_s, n=10)[-1] if len(mask_s) > 10 else None,
            "failures": failures,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bases-dir", type=Path, required=True)
    parser.add_argument("--base", default="smollm2-135m-instruct")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(str(args.bases_dir / args.base))
    print(f"CPU: {platform.processor() or platform.machine()}; base {args.base}; vocab {len(tok)}")
    for name, r in run(tok).items():
        print(
            f"{name:11s} schemas {r['schemas']}  compile→first mask median {r['first_mask_ms_median']:.1f} ms "
            f"(max {r['first_mask_ms_max']:.1f})  next masks median {r['mask_us_median']:.0f} µs, "
            f"p90 {r['mask_us_p90']:.0f} µs"
        )
        for failure in r["failures"]:
            print(f"    refused/failed: {failure}")


if __name__ == "__main__":
    main()
