"""A small topic → JSON-label task for SFT → DPO checks (bench/dpo_defaults.py, tests/e2e/test_dpo_defaults.py):
SFT teaches `{"label": "food"}`, the preference pairs prefer the upper-case label `{"label": "FOOD"}`, and
held-out prompts (subjects no training line has) measure both the format and the preference."""

from __future__ import annotations

import json
from typing import Any

LABELS = ("food", "sport", "music", "travel", "science")
# 22 subjects per label, each in one split only (by default 12 for SFT, 6 for the DPO pairs, 4 held out).
SUBJECTS = {
    "food": "pizza pasta soup bread cheese salad sushi rice noodles curry cake tacos pancakes dumplings burgers "
    "steak cookies omelette yogurt waffles lasagna porridge",
    "sport": "football tennis basketball golf rugby cricket hockey baseball volleyball boxing cycling swimming "
    "skiing rowing surfing fencing wrestling badminton archery sailing climbing marathons",
    "music": "guitar piano violin drums jazz opera concerts symphonies trumpets cellos choirs albums flutes "
    "saxophones melodies songs harps banjos orchestras rap ballads lullabies",
    "travel": "flights hotels passports airports beaches cruises luggage tickets hostels museums visas "
    "trains islands resorts maps tours backpacks campsites ferries souvenirs castles deserts",
    "science": "atoms molecules cells genes physics chemistry telescopes planets fossils microscopes bacteria "
    "experiments electrons proteins galaxies magnets neurons viruses enzymes comets isotopes crystals",
}
TEMPLATES = ("I spent the whole day thinking about {}.", "My friend keeps talking about {}.", "Tell me about {}.")


def prompt(subject: str, i: int) -> str:
    return f'Classify the topic of this sentence as JSON with one key "label": {TEMPLATES[i % 3].format(subject)}'


def split(
    sft: int = 12, dpo: int = 6, held: int = 4
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """(prompt, label) lists for SFT, for the DPO pairs and held out: per label its first `sft` subjects, the
    next `dpo`, then the next `held`."""
    assert sft + dpo + held <= 22
    out: tuple[list[tuple[str, str]], ...] = ([], [], [])
    for label, words in SUBJECTS.items():
        subjects = words.split()
        assert len(subjects) == 22, label
        for i, s in enumerate(subjects[: sft + dpo + held]):
            out[0 if i < sft else 1 if i < sft + dpo else 2].append((prompt(s, i), label))
    return out[0], out[1], out[2]


def reply(label: str, preferred: bool) -> str:
    return json.dumps({"label": label.upper() if preferred else label})


def sft_rows(data: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": reply(lab, False)}]}
        for p, lab in data
    ]


def pair_rows(data: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [
        {
            "input": {"messages": [{"role": "user", "content": p}]},
            "preferred_output": [{"role": "assistant", "content": reply(lab, True)}],
            "non_preferred_output": [{"role": "assistant", "content": reply(lab, False)}],
        }
        for p, lab in data
    ]


def judge(answer: str, label: str) -> tuple[bool, bool, bool]:
    """(valid, right, preferred style) of one answer."""
    try:
        obj = json.loads(answer.strip())
    except ValueError:
        return False, False, False
    if not isinstance(obj, dict) or set(obj) != {"label"} or not isinstance(obj["label"], str):
        return False, False, False
    value = obj["label"]
    valid = value.lower() in LABELS
    return valid, valid and value.lower() == label, valid and value == value.upper()
