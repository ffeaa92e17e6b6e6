"""A small deterministic function-calling dataset: three tools over closed argument sets, OpenAI-format training
lines, and held-out prompts (argument combinations and phrasings no training line has) with the call each needs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import product
from typing import Any

CITIES = ("Paris", "Rome", "Berlin", "Madrid", "London", "Tokyo", "Lima", "Oslo")
UNITS = ("celsius", "fahrenheit")
CURRENCIES = ("USD", "EUR", "GBP", "JPY")
AMOUNTS = (5, 10, 20, 50, 100)


def _tool(name: str, description: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": list(properties),
                "additionalProperties": False,
            },
        },
    }


# The values are closed sets in the data, not enums in the schema: an enum would list every value in the prompt, and
# the model is to take the value from the user's words.
TOOLS: list[dict[str, Any]] = [
    _tool("get_weather", "Current weather in a city", {"city": {"type": "string"}, "unit": {"type": "string"}}),
    _tool("get_time", "Local time in a city", {"city": {"type": "string"}}),
    _tool(
        "convert",
        "Convert an amount of money",
        {
            "amount": {"type": "integer", "minimum": 1, "maximum": 1000},
            "from": {"type": "string"},
            "to": {"type": "string"},
        },
    ),
]

# Phrasings per function: the training lines use the first three; the last is only ever held out.
PHRASINGS: dict[str, tuple[str, ...]] = {
    "get_weather": (
        "What is the weather in {city} in {unit}?",
        "Weather for {city}, in {unit} please.",
        "How warm is it in {city}? Answer in {unit}.",
        "Tell me the {city} weather in {unit}.",
    ),
    "get_time": (
        "What time is it in {city}?",
        "Tell me the time in {city}.",
        "Current time in {city}, please.",
        "What is the local time in {city}?",
    ),
    "convert": (
        "Convert {amount} {src} to {dst}.",
        "How much is {amount} {src} in {dst}?",
        "Change {amount} {src} into {dst}, please.",
        "What are {amount} {src} worth in {dst}?",
    ),
}
TRAINED_PHRASINGS = 3


@dataclass(frozen=True)
class ToolPrompt:
    """A user prompt and the one call that answers it."""

    text: str
    name: str
    arguments: dict[str, Any]

    def is_answered_by(self, name: str, arguments: str) -> bool:
        """True when a call (its name and JSON arguments text) is exactly the one this prompt needs."""
        try:
            return name == self.name and json.loads(arguments) == self.arguments
        except ValueError:
            return False


def _cases() -> list[tuple[str, dict[str, Any], bool]]:
    """(function, arguments, held out) for every argument combination; held-out ones never appear in training."""
    cases: list[tuple[str, dict[str, Any], bool]] = []
    for (c, city), (u, unit) in product(enumerate(CITIES), enumerate(UNITS)):
        cases.append(("get_weather", {"city": city, "unit": unit}, (c + u) % 4 == 0))
    for c, city in enumerate(CITIES):
        cases.append(("get_time", {"city": city}, c % 4 == 1))
    pairs = [(s, d) for s, d in product(CURRENCIES, CURRENCIES) if s != d]
    for (a, amount), (p, (src, dst)) in product(enumerate(AMOUNTS), enumerate(pairs)):
        if (a + p) % 3 == 0:  # a third of the 60 combinations, so the set stays small
            cases.append(("convert", {"amount": amount, "from": src, "to": dst}, (a + 2 * p) % 5 == 0))
    return cases


def _text(name: str, phrasing: int, args: dict[str, Any]) -> str:
    fill = {"city": args.get("city"), "unit": args.get("unit"), "amount": args.get("amount")}
    return PHRASINGS[name][phrasing].format(**fill, src=args.get("from"), dst=args.get("to"))


def train_prompts() -> list[ToolPrompt]:
    """Each training combination in each trained phrasing."""
    return [
        ToolPrompt(_text(name, p, args), name, args)
        for name, args, held in _cases()
        if not held
        for p in range(TRAINED_PHRASINGS)
    ]


def held_out_prompts() -> list[ToolPrompt]:
    """Prompts no training line has: held-out combinations (one trained phrasing each, in turn) and every
    combination in the phrasing training never uses."""
    out: list[ToolPrompt] = []
    for i, (name, args, held) in enumerate(_cases()):
        if held:
            out.append(ToolPrompt(_text(name, i % TRAINED_PHRASINGS, args), name, args))
        if held or i % 3 == 0:
            out.append(ToolPrompt(_text(name, TRAINED_PHRASINGS, args), name, args))
    return out


def _result(prompt: ToolPrompt) -> tuple[str, str]:
    """A made-up tool result and the assistant's answer from it (deterministic)."""
    args = prompt.arguments
    if prompt.name == "get_weather":
        degrees = 10 + len(args["city"]) * (2 if args["unit"] == "celsius" else 5)
        return json.dumps({"temperature": degrees}), f"It is {degrees} degrees in {args['city']}."
    if prompt.name == "get_time":
        hour = len(args["city"]) + 3
        return json.dumps({"time": f"{hour}:00"}), f"It is {hour}:00 in {args['city']}."
    value = args["amount"] * 2
    return json.dumps({"amount": value}), f"{args['amount']} {args['from']} is {value} {args['to']}."


def training_lines() -> list[dict[str, Any]]:
    """OpenAI function-calling lines: every training prompt answered with its call; one line in four goes on with
    the tool's result and a trained answer, and one in eight has an earlier turn at weight 0."""
    lines = []
    for i, prompt in enumerate(train_prompts()):
        call_id = f"call_{i}"
        call = {
            "id": call_id,
            "type": "function",
            "function": {"name": prompt.name, "arguments": json.dumps(prompt.arguments)},
        }
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": prompt.text},
            {"role": "assistant", "content": None, "tool_calls": [call]},
        ]
        if i % 4 == 1:
            result, answer = _result(prompt)
            messages += [
                {"role": "tool", "tool_call_id": call_id, "content": result},
                {"role": "assistant", "content": answer},
            ]
        if i % 8 == 3:
            messages = [
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi! Ask me about weather, time or money.", "weight": 0},
                *messages,
            ]
        lines.append({"messages": messages, "tools": TOOLS, "parallel_tool_calls": False})
    return lines


def training_jsonl() -> bytes:
    return "".join(json.dumps(line) + "\n" for line in training_lines()).encode()


# --- A compact set for the fine-tune acceptance test on ftserve-tiny ---
# ftserve-tiny's 768-token vocabulary spells most words letter by letter, so the tools section above is ~1070 tokens
# and a 2-layer, 64-wide model fine-tuned with LoRA does not learn to carry an argument across it (issue-15c's log:
# 0/31 held-out arguments). This set keeps the rendered tools section small (two one-parameter functions, no
# descriptions) and its held-out prompts are unseen *wordings*: a core request and an opening that training never
# puts together (each part occurs in training, every (function, city) pair too). It
# tests that the model reads the function and the city from the request whatever surrounds it, not that it
# generalises to cities, functions or words it never saw.

FT_CITIES = ("Paris", "Rome", "Oslo", "Tokyo")


def _city_tool(name: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }


FT_TOOLS: list[dict[str, Any]] = [_city_tool("weather"), _city_tool("time")]
FT_CORES: dict[str, tuple[str, ...]] = {
    "weather": ("What is the weather in {city}?", "Is it raining in {city}?"),
    "time": ("What time is it in {city}?", "What hour is it in {city}?"),
}
FT_PREFIXES = ("", "Hi! ", "Please: ", "Quick question. ", "Hello. ", "Tell me: ")
# Indexes into product(cores, prefixes): (first core, "Quick question. "), (second core, "Tell me: ").
FT_HELD_OUT_WORDINGS = (3, 11)


def _ft_cases() -> list[tuple[ToolPrompt, bool]]:
    """Every (function, city) in every wording (core x opening); two of the twelve wordings per function are held
    out for every city, so no training line has them and each city is held out alike."""
    cases = []
    for name, cores in FT_CORES.items():
        for city in FT_CITIES:
            for k, (core, prefix) in enumerate(product(cores, FT_PREFIXES)):
                text = prefix + core.format(city=city)
                cases.append((ToolPrompt(text, name, {"city": city}), k in FT_HELD_OUT_WORDINGS))
    return cases


def ft_train_prompts() -> list[ToolPrompt]:
    return [p for p, held in _ft_cases() if not held]


def ft_held_out_prompts() -> list[ToolPrompt]:
    return [p for p, held in _ft_cases() if held]


def ft_training_jsonl() -> bytes:
    """One OpenAI function-calling line per training prompt: the user's request answered by its call."""
    lines = []
    for i, prompt in enumerate(ft_train_prompts()):
        call = {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": prompt.name, "arguments": json.dumps(prompt.arguments)},
        }
        messages = [
            {"role": "user", "content": prompt.text},
            {"role": "assistant", "content": None, "tool_calls": [call]},
        ]
        lines.append({"messages": messages, "tools": FT_TOOLS, "parallel_tool_calls": False})
    return "".join(json.dumps(line) + "\n" for line in lines).encode()
