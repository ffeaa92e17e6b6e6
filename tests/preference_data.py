"""Preference pairs for tests: a fixed answer style (preferred) against a plain one, on prompts that
share a template, so a model can learn the style and show it on prompts it never saw."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = [
    "red", "blue", "green", "cat", "dog", "bird", "fish", "one", "two", "three", "four", "five",
    "Paris", "Rome", "Berlin", "Madrid", "London", "Tokyo", "Lima", "Oslo", "yellow", "orange", "purple",
    "black", "white", "horse", "cow", "sheep", "lion", "tiger", "bear", "six", "seven", "eight", "nine", "ten",
]  # fmt: skip
# The preferred style: every answer opens with this marker; the other style answers bare.
STYLE = "Sure!"


def question(word: str) -> str:
    return f"Please repeat the word {word}."


def pair_row(word: str) -> dict[str, object]:
    return {
        "input": {"messages": [{"role": "user", "content": question(word)}]},
        "preferred_output": [{"role": "assistant", "content": f"{STYLE} {word}"}],
        "non_preferred_output": [{"role": "assistant", "content": word}],
    }


def write_pairs(path: Path, words: list[str]) -> Path:
    path.write_text("".join(json.dumps(pair_row(w)) + "\n" for w in words))
    return path


def follows_style(answer: str) -> bool:
    return answer.strip().startswith(STYLE)
