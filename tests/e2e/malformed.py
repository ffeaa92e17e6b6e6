"""A generated corpus of malformed training uploads, each with the error code(s) and line it must get."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

GOOD = {"prompt": "The cat says:", "completion": " meow"}
GOOD_CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
GOOD_PREF = {
    "input": {"messages": [{"role": "user", "content": "Hi"}]},
    "preferred_output": [{"role": "assistant", "content": "Hello!"}],
    "non_preferred_output": [{"role": "assistant", "content": "What."}],
}
_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "convert", "parameters": {"type": "object"}}},
]
_Q = {"role": "user", "content": "Weather in Oslo?"}


def _call(id_: str = "c1", name: str = "get_weather", arguments: object = '{"city": "Oslo"}') -> dict[str, object]:
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}


def _calls(*calls: dict[str, object]) -> dict[str, object]:
    return {"role": "assistant", "content": None, "tool_calls": list(calls)}


def _result(id_: str = "c1") -> dict[str, object]:
    return {"role": "tool", "tool_call_id": id_, "content": "-3"}


GOOD_TOOLS = {"tools": _TOOLS, "messages": [_Q, _calls(_call()), _result(), {"role": "assistant", "content": "Cold."}]}
# Function-calling lines (OpenAI's tools, legacy functions) and the code each must get.
TOOL_BAD: list[tuple[dict[str, object], str]] = [
    ({"tools": [{"type": "function"}], "messages": [_Q, _calls(_call())]}, "invalid_tools"),
    ({"tools": [*_TOOLS, _TOOLS[0]], "messages": [_Q, _calls(_call())]}, "invalid_tools"),
    ({"tools": _TOOLS, "messages": [_Q, _calls(_call())], "parallel_tool_calls": 1}, "invalid_tools"),
    ({"tools": _TOOLS, "functions": [_TOOLS[0]["function"]], "messages": [_Q, _calls(_call())]}, "functions_and_tools"),
    ({"tools": _TOOLS, "messages": [_Q, _calls(_call(name="get_time"))]}, "unknown_tool"),
    ({"messages": [_Q, _calls(_call())]}, "unknown_tool"),
    ({"tools": _TOOLS, "messages": [_Q, _calls(_call(arguments="{city: Oslo}"))]}, "invalid_tool_arguments"),
    ({"tools": _TOOLS, "messages": [_Q, _calls(_call(arguments='"Oslo"'))]}, "invalid_tool_arguments"),
    ({"tools": _TOOLS, "messages": [_Q, _calls(_call(arguments={"city": "Oslo"}))]}, "invalid_tool_arguments"),
    ({"tools": _TOOLS, "messages": [_Q, _calls(_call(), _call())]}, "duplicate_tool_call_id"),
    ({"tools": _TOOLS, "messages": [_Q, _calls(_call()), _result("c2")]}, "unmatched_tool_message"),
    ({"tools": _TOOLS, "messages": [_Q, _result(), {"role": "assistant", "content": "x"}]}, "unmatched_tool_message"),
    ({"tools": _TOOLS, "messages": [_Q, _calls(_call()), {"role": "tool", "content": "-3"}]}, "invalid_tool_message"),
    ({"tools": _TOOLS, "messages": [_Q, _calls({"type": "function"})]}, "invalid_tool_calls"),
    ({"tools": _TOOLS, "messages": [_Q, {"role": "assistant", "content": None}]}, "invalid_message"),
    (
        {"tools": _TOOLS, "messages": [_Q, _calls(_call(), _call("c2"))], "parallel_tool_calls": False},
        "parallel_tool_calls_disabled",
    ),
]


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    codes: frozenset[str]
    line: int | None  # None: no line applies (e.g. over the size limit)
    status: int = 400


def _file(good: dict[str, object], n_good: int, bad: bytes, after: int = 0) -> bytes:
    lines = [json.dumps(good).encode()] * n_good + [bad] + [json.dumps(good).encode()] * after
    return b"\n".join(lines) + b"\n"


def corpus(max_line_bytes: int, max_upload_bytes: int, min_examples: int, seed: int = 0) -> list[Case]:
    """At least 200 malformed files; every one must be rejected with its code and line."""
    rnd = random.Random(seed)
    cases: list[Case] = []

    def add(name: str, bad: bytes, codes: set[str], n_good: int | None = None, good: dict[str, object] = GOOD) -> None:
        n = rnd.randint(0, 12) if n_good is None else n_good
        cases.append(Case(name, _file(good, n, bad, after=min_examples), frozenset(codes), n + 1))

    valid = json.dumps(GOOD).encode()
    for cut in range(1, len(valid) - 1, 2):  # broken JSON: every truncation of a valid line
        add(f"truncated-{cut}", valid[:cut], {"invalid_json"})
    for i, junk in enumerate(
        [
            b"{",
            b"}",
            b"{'prompt': 'a'}",
            b'{"prompt": "a",}',
            b"NaN",
            b"prompt=a",
            b'{"a" 1}',
            b"[",
            b'"unterminated',
            b"{{}}",
            b"<xml/>",
            b"undefined",
        ]
    ):
        add(f"junk-{i}", junk, {"invalid_json"})
    for i, value in enumerate([1, "text", [1, 2], None, True, 3.5, []]):  # valid JSON, not an object
        add(f"not-object-{i}", json.dumps(value).encode(), {"invalid_example", "invalid_json"})
    wrong_types: list[object] = [1, 2.5, None, True, ["a"], {"a": 1}]
    for key in ("prompt", "completion"):
        for i, v in enumerate(wrong_types):
            add(f"type-{key}-{i}", json.dumps({**GOOD, key: v}).encode(), {"invalid_type"})
        add(f"missing-{key}", json.dumps({k: v for k, v in GOOD.items() if k != key}).encode(), {"missing_key"})
    add("empty-completion", json.dumps({**GOOD, "completion": ""}).encode(), {"empty_completion"})
    for i, obj in enumerate([{"text": "a"}, {"input": "a", "output": "b"}, {}, {"Prompt": "a", "Completion": "b"}]):
        add(f"unknown-format-{i}", json.dumps(obj).encode(), {"unknown_format"})
    chat_bad: list[tuple[object, str]] = [
        ("not a list", "invalid_messages"),
        ([], "invalid_messages"),
        ({"role": "user"}, "invalid_messages"),
        (["hi"], "invalid_message"),
        ([{"role": "robot", "content": "x"}], "invalid_role"),
        ([{"content": "x"}], "invalid_role"),
        ([{"role": "user", "content": 5}], "invalid_message"),
        ([{"role": "user", "content": None}], "invalid_message"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 2}], "invalid_weight"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": "1"}], "invalid_weight"),
        ([{"role": "user", "content": "q", "weight": 1}, {"role": "assistant", "content": "a"}], "invalid_weight"),
    ]
    for i, (msgs, code) in enumerate(chat_bad):
        add(f"chat-{i}", json.dumps({"messages": msgs}).encode(), {code}, good=GOOD_CHAT)
    no_assistant = [
        [{"role": "user", "content": "q"}],
        [{"role": "system", "content": "s"}],
        [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}],
    ]
    for i, msgs in enumerate(no_assistant):
        for j in range(4):
            add(
                f"no-assistant-{i}-{j}",
                json.dumps({"messages": msgs}).encode(),
                {"no_assistant_message"},
                good=GOOD_CHAT,
            )
    for i, (row, code) in enumerate(TOOL_BAD):
        for j in range(2):  # after plain chat lines and after good function-calling lines
            add(f"tools-{i}-{j}", json.dumps(row).encode(), {code}, good=GOOD_TOOLS if j else GOOD_CHAT)
    reply = {"role": "assistant", "content": "x"}
    pref_bad: list[tuple[dict[str, object], str]] = [
        ({"input": None}, "missing_input"),
        ({"input": {"messages": "Hi"}}, "invalid_messages"),
        ({"input": {"messages": [{"role": "user", "content": "q"}, reply]}}, "invalid_messages"),
        ({"preferred_output": None}, "missing_output"),
        ({"non_preferred_output": reply}, "invalid_output"),
        ({"preferred_output": [reply, reply]}, "too_many_output_messages"),
        ({"preferred_output": [{"role": "user", "content": "x"}]}, "invalid_output_role"),
        ({"preferred_output": [{"role": "assistant", "content": ""}]}, "empty_output"),
        ({"non_preferred_output": [{"role": "assistant", "content": "Hello!"}]}, "identical_outputs"),
        ({"input": {"messages": [{"role": "user", "content": "q"}], "tools": "none"}}, "invalid_tools"),
    ]
    for i, (change, code) in enumerate(pref_bad):
        row = {k: v for k, v in {**GOOD_PREF, **change}.items() if v is not None}
        add(f"preference-{i}", json.dumps(row).encode(), {code}, good=GOOD_PREF)
    for i in range(10):  # mixed formats, both ways round
        n = rnd.randint(1, 8)
        add(f"mixed-pc-chat-{i}", json.dumps(GOOD_CHAT).encode(), {"mixed_formats"}, n_good=n)
        add(f"mixed-chat-pc-{i}", json.dumps(GOOD).encode(), {"mixed_formats"}, n_good=n, good=GOOD_CHAT)
    for i in range(3):  # preference pairs and supervised examples do not mix
        add(f"mixed-pref-chat-{i}", json.dumps(GOOD_CHAT).encode(), {"mixed_formats"}, n_good=i + 1, good=GOOD_PREF)
        add(f"mixed-pc-pref-{i}", json.dumps(GOOD_PREF).encode(), {"mixed_formats"}, n_good=i + 1)
    for i in range(30):  # binary
        blob = bytes(rnd.randrange(256) for _ in range(rnd.randint(16, 400)))
        cases.append(
            Case(
                f"binary-{i}",
                blob,
                frozenset({"invalid_encoding", "invalid_json", "invalid_example", "unknown_format", "line_too_long"}),
                None,
            )
        )
    for name, magic in [
        ("png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
        ("gzip", b"\x1f\x8b\x08\x00\x00\x00\x00"),
        ("zip", b"PK\x03\x04\x14\x00\x00\x00"),
        ("pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"),
    ]:
        cases.append(
            Case(f"magic-{name}", magic + bytes(range(256)), frozenset({"invalid_encoding", "invalid_json"}), 1)
        )
    text = _file(GOOD, 12, json.dumps({"prompt": "café ☕", "completion": " naïve"}, ensure_ascii=False).encode())
    for enc in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"):
        cases.append(Case(f"encoding-{enc}", text.decode().encode(enc), frozenset({"invalid_encoding"}), 1))
    for enc in ("latin-1", "cp1252"):
        for j in range(3):
            add(
                f"encoding-{enc}-{j}",
                json.dumps({"prompt": "café", "completion": " naïve"}, ensure_ascii=False).encode(enc),
                {"invalid_encoding"},
            )
    for i in range(30):  # one invalid UTF-8 byte dropped into an otherwise valid line
        at = rnd.randrange(1, len(valid) - 1)
        add(
            f"bad-byte-{i}",
            valid[:at] + bytes([rnd.choice([0x80, 0xC3, 0xFF, 0xFE, 0xC0])]) + valid[at:],
            {"invalid_encoding", "invalid_json"},
        )
    # Lone surrogate escapes: json.loads accepts them, the tokenizer cannot encode them.
    for i, lone in enumerate(["\\ud800", "\\udfff", "x\\uDBFF", "\\ude00\\ud83d"]):
        prompt = b'{"prompt": "' + lone.encode() + b'", "completion": " y"}'
        add(f"lone-surrogate-prompt-{i}", prompt, {"invalid_encoding"})
        chat = b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "' + lone.encode()
        add(f"lone-surrogate-chat-{i}", chat + b'"}]}', {"invalid_encoding"}, good=GOOD_CHAT)
    for i in range(4):  # huge lines
        add(
            f"huge-line-{i}",
            json.dumps({"prompt": "x" * (max_line_bytes + 10 + i), "completion": "y"}).encode(),
            {"line_too_long"},
        )
    for i, body in enumerate([b"", b"\n", b"\n\n\n", b"   \n\t\n", b"\r\n"]):  # empty
        cases.append(Case(f"empty-{i}", body, frozenset({"empty_file"}), 1))
    for n in range(1, min_examples):
        body = (json.dumps(GOOD) + "\n").encode() * n
        cases.append(Case(f"too-few-{n}", body, frozenset({"too_few_examples"}), n))
    for i in range(3):  # over the size limit
        line = (json.dumps(GOOD) + "\n").encode()
        cases.append(
            Case(
                f"too-large-{i}",
                line * (max_upload_bytes // len(line) + 50 * (i + 1)),
                frozenset({"file_too_large"}),
                None,
                status=413,
            )
        )
    return cases
