"""Reinforcement fine-tuning data for tests: prompt lines ("say the word X", with X as the grader's `answer`), a
`multi` grader (string_check + text_similarity) over them, the job's `method` block, and a tiny job on
ftserve-tiny that runs in seconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from openai import OpenAI

WORDS = [
    "apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "candle", "garden", "rocket", "silver", "window",
    "orange", "forest", "pepper", "bottle", "yellow", "button", "castle", "dragon", "pencil", "meadow", "harbor",
    "jacket",
]  # fmt: skip

MULTI: dict[str, Any] = {
    "type": "multi",
    "name": "word",
    "graders": {
        "has_e": {
            "type": "string_check",
            "name": "has_e",
            "input": "{{sample.output_text}}",
            "reference": "%e%",
            "operation": "ilike",
        },
        "close": {
            "type": "text_similarity",
            "name": "close",
            "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}",
            "evaluation_metric": "fuzzy_match",
        },
    },
    "calculate_output": "0.5 * has_e + 0.5 * close",
}
# What a tiny job's answers are cut to: enough to grade, few enough that a step takes a fraction of a second.
TINY_EXTENSIONS = {"extensions": {"max_completion_tokens": 4}}


def write_prompts(path: Path, words: list[str], drop_answer_on: int | None = None) -> Path:
    """One prompt line per word; line `drop_answer_on` (1-based) without its `answer`."""
    lines = []
    for i, word in enumerate(words, start=1):
        line: dict[str, Any] = {"messages": [{"role": "user", "content": f"Say the word {word}."}], "answer": word}
        if i == drop_answer_on:
            del line["answer"]
        lines.append(json.dumps(line))
    path.write_text("\n".join(lines) + "\n")
    return path


def upload_prompts(client: OpenAI, path: Path, words: list[str]) -> str:
    """The id of a processed prompts file of these words."""
    return client.files.create(file=write_prompts(path, words).open("rb"), purpose="fine-tune").id


def rft(grader: dict[str, Any], **hp: Any) -> Any:
    """A `method` block of type reinforcement with this grader and these hyperparameters."""
    return {"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": hp}}


def metrics(client: OpenAI, job_id: str) -> list[dict[str, Any]]:
    """The job's metrics events' data, by step."""
    found = [e.data for e in client.fine_tuning.jobs.list_events(job_id, limit=100) if e.type == "metrics" and e.data]
    return sorted(found, key=lambda d: d["step"])  # type: ignore[no-any-return]
