"""Line-by-line validation: each failure has a stable code and names its line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftserve.core.datasets.formats import Chat, DatasetError, Preference, PromptCompletion
from ftserve.core.datasets.validate import iter_examples, validate_file

GOOD_PC = json.dumps({"prompt": "a", "completion": " b"})
GOOD_CHAT = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})


def _write(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "f.jsonl"
    p.write_bytes(data)
    return p


def _lines(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize(
    ("data", "code", "line"),
    [
        (b"", "empty_file", 1),
        (b"\n\n", "empty_file", 1),
        (_lines(GOOD_PC, "{not json"), "invalid_json", 2),
        (_lines(GOOD_PC, "[1, 2]"), "invalid_example", 2),
        (_lines(json.dumps({"prompt": "a"})), "missing_key", 1),
        (_lines(json.dumps({"prompt": 1, "completion": "b"})), "invalid_type", 1),
        (_lines(json.dumps({"prompt": "a", "completion": ""})), "empty_completion", 1),
        (_lines(json.dumps({"text": "a"})), "unknown_format", 1),
        (_lines(GOOD_PC, GOOD_CHAT), "mixed_formats", 2),
        (_lines(json.dumps({"messages": []})), "invalid_messages", 1),
        (_lines(json.dumps({"messages": [{"role": "robot", "content": "x"}]})), "invalid_role", 1),
        (_lines(json.dumps({"messages": [{"role": "user", "content": 3}]})), "invalid_message", 1),
        (
            _lines(GOOD_CHAT, json.dumps({"messages": [{"role": "user", "content": "only a question"}]})),
            "no_assistant_message",
            2,
        ),
        (
            _lines(json.dumps({"messages": [{"role": "user", "content": "q"}]}), GOOD_CHAT),
            "invalid_prompt",
            2,
        ),
        (
            _lines(
                json.dumps(
                    {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 2}]}
                )
            ),
            "invalid_weight",
            1,
        ),
        (_lines(GOOD_PC) + b"\xff\xfe bad utf8\n", "invalid_encoding", 2),
        ('{"prompt": "a", "completion": "b"}\n'.encode("utf-16"), "invalid_encoding", 1),
        # json.loads accepts a lone surrogate escape; the tokenizer later cannot encode it
        (_lines(GOOD_PC, '{"prompt": "a\\ud800", "completion": "b"}'), "invalid_encoding", 2),
        (_lines(GOOD_CHAT.replace('"q"', '"\\udfff"')), "invalid_encoding", 1),
    ],
)
def test_bad_files_have_code_and_line(tmp_path: Path, data: bytes, code: str, line: int) -> None:
    with pytest.raises(DatasetError) as err:
        validate_file(_write(tmp_path, data), max_line_bytes=1 << 20, min_examples=1)
    assert (err.value.code, err.value.line) == (code, line)
    assert f"line {line}" in err.value.describe()


def test_too_few_examples(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        validate_file(_write(tmp_path, _lines(GOOD_PC, GOOD_PC)), max_line_bytes=1 << 20, min_examples=10)
    assert err.value.code == "too_few_examples"


def test_line_too_long(tmp_path: Path) -> None:
    long = json.dumps({"prompt": "x" * 5000, "completion": "y"})
    with pytest.raises(DatasetError) as err:
        validate_file(_write(tmp_path, _lines(GOOD_PC, long)), max_line_bytes=1000, min_examples=1)
    assert (err.value.code, err.value.line) == ("line_too_long", 2)


def test_good_files_parse(tmp_path: Path) -> None:
    summary = validate_file(_write(tmp_path, b"\xef\xbb\xbf" + _lines(GOOD_PC, "", GOOD_PC)), 1 << 20, 2)
    assert (summary.format, summary.n_examples) == ("prompt_completion", 2)
    examples = list(iter_examples(_write(tmp_path, _lines(GOOD_CHAT)), 1 << 20))
    assert examples[0][1] == "chat" and isinstance(examples[0][2], Chat)
    pc = next(iter(iter_examples(_write(tmp_path, _lines(GOOD_PC)), 1 << 20)))[2]
    assert pc == PromptCompletion("a", " b")


def _pref(**over: object) -> str:
    row: dict[str, object] = {
        "input": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]},
        "preferred_output": [{"role": "assistant", "content": "Hello!"}],
        "non_preferred_output": [{"role": "assistant", "content": "What do you want."}],
    }
    row.update(over)
    return json.dumps({k: v for k, v in row.items() if v is not None})


GOOD_PREF = _pref()
ASSISTANT = {"role": "assistant", "content": "x"}


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (_pref(input=None), "missing_input"),
        (_pref(input="Hi?"), "invalid_input"),
        (_pref(input={"messages": []}), "invalid_messages"),
        (_pref(input={"messages": [{"role": "user", "content": "q"}, ASSISTANT]}), "invalid_messages"),
        (_pref(input={"messages": [{"role": "robot", "content": "q"}]}), "invalid_role"),
        (_pref(input={"messages": [{"role": "user", "content": 3}]}), "invalid_message"),
        (_pref(input={"messages": [{"role": "user", "content": "q", "weight": 1}]}), "invalid_weight"),
        (_pref(preferred_output=None), "missing_output"),
        (_pref(non_preferred_output=None), "missing_output"),
        (_pref(preferred_output=[]), "invalid_output"),
        (_pref(preferred_output=ASSISTANT), "invalid_output"),
        (_pref(preferred_output="Hello!"), "invalid_output"),
        (_pref(non_preferred_output=[ASSISTANT, ASSISTANT]), "too_many_output_messages"),
        (_pref(preferred_output=[{"role": "user", "content": "x"}]), "invalid_output_role"),
        (_pref(preferred_output=[{"role": "assistant", "content": None}]), "invalid_message"),
        (_pref(preferred_output=[{"role": "assistant", "content": ""}]), "empty_output"),
        (_pref(preferred_output=[{"role": "assistant", "content": "x", "weight": 1}]), "invalid_weight"),
        (
            _pref(preferred_output=[{"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}]),
            "unsupported_tool_calls",
        ),
        (_pref(non_preferred_output=[{"role": "assistant", "content": "Hello!"}]), "identical_outputs"),
        (_pref(input={"messages": [{"role": "user", "content": "q"}], "tools": {"a": 1}}), "invalid_tools"),
        (_pref(input={"messages": [{"role": "user", "content": "q"}], "tools": [{"type": "x"}]}), "invalid_tools"),
        (
            _pref(
                input={"messages": [{"role": "user", "content": "q"}], "tools": [{"type": "function", "function": {}}]}
            ),
            "invalid_tools",
        ),
        (_pref(input={"messages": [{"role": "user", "content": "q"}], "parallel_tool_calls": "yes"}), "invalid_tools"),
    ],
)
def test_bad_preference_lines_have_code_and_line(tmp_path: Path, line: str, code: str) -> None:
    with pytest.raises(DatasetError) as err:
        validate_file(_write(tmp_path, _lines(GOOD_PREF, line)), max_line_bytes=1 << 20, min_examples=1)
    assert (err.value.code, err.value.line) == (code, 2), err.value.message


def test_preference_files_parse_and_do_not_mix(tmp_path: Path) -> None:
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    with_tools = _pref(
        input={"messages": [{"role": "user", "content": "q"}], "tools": tools, "parallel_tool_calls": True}
    )
    summary = validate_file(_write(tmp_path, _lines(GOOD_PREF, with_tools)), 1 << 20, 2)
    assert (summary.format, summary.n_examples) == ("preference", 2)
    examples = [e for _, _, e in iter_examples(_write(tmp_path, _lines(GOOD_PREF, with_tools)), 1 << 20)]
    first, second = examples
    assert isinstance(first, Preference) and isinstance(second, Preference)
    assert [m.role for m in first.messages] == ["system", "user"]
    assert (first.preferred, first.non_preferred, first.tools) == ("Hello!", "What do you want.", ())
    assert second.tools == tuple(tools) and second.parallel_tool_calls is True
    for other in (GOOD_CHAT, GOOD_PC):
        with pytest.raises(DatasetError) as err:
            validate_file(_write(tmp_path, _lines(GOOD_PREF, other)), 1 << 20, 1)
        assert (err.value.code, err.value.line) == ("mixed_formats", 2)
    # A line that only looks like input/output data is not taken for a preference pair.
    with pytest.raises(DatasetError) as err:
        validate_file(_write(tmp_path, _lines(json.dumps({"input": "a", "output": "b"}))), 1 << 20, 1)
    assert err.value.code == "unknown_format" and "preferred_output" in err.value.message


def test_batch_files_get_the_same_line_checks_as_training_files(tmp_path: Path) -> None:
    """One JSONL reader (datasets/jsonl) for every purpose: a lone surrogate in a batch line's body is refused with
    the training files' code and line, before the body reaches its request model."""
    from ftserve.core.datasets.batch import validate_batch_file

    body = {"model": "m", "prompt": "x"}
    good = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": body})
    bad = good.replace('"a"', '"b"').replace('"x"', '"x\\ud800"')
    with pytest.raises(DatasetError) as err:
        validate_batch_file(_write(tmp_path, _lines(good, bad)), max_line_bytes=1 << 20, max_requests=10)
    assert (err.value.code, err.value.line) == ("invalid_encoding", 2)


def test_unknown_keys_are_accepted_and_named_with_their_first_line_and_count(tmp_path: Path) -> None:
    chat = json.loads(GOOD_CHAT)
    lines = [chat | {"weight_decay": 1}, chat, chat | {"mesages": [], "weight_decay": 2}, chat | {"mesages": []}]
    summary = validate_file(_write(tmp_path, _lines(*map(json.dumps, lines))), 65_536, 1)
    assert (summary.format, summary.n_examples) == ("chat", 4), "accepted, every line trained on"
    assert summary.warning is not None
    assert '"weight_decay" (first on line 1, 2 lines); "mesages" (first on line 3, 2 lines)' in summary.warning
    # What each format reads: OpenAI's keys pass without a word.
    tools = {"tools": [], "parallel_tool_calls": False}
    assert validate_file(_write(tmp_path, _lines(json.dumps(chat | tools))), 65_536, 1).warning is None
    assert validate_file(_write(tmp_path, _lines(GOOD_PC)), 65_536, 1).warning is None
    pref = {
        "input": {"messages": [{"role": "user", "content": "q"}], "tools": [], "temperature": 0},
        "preferred_output": [{"role": "assistant", "content": "a"}],
        "non_preferred_output": [{"role": "assistant", "content": "b"}],
        "score": 1,
    }
    warning = validate_file(_write(tmp_path, _lines(GOOD_PC.replace("}", ', "id": 7}'))), 65_536, 1).warning
    assert warning is not None and warning.startswith('warning: unknown keys ignored: "id" (first on line 1, 1 line)')
    warning = validate_file(_write(tmp_path, _lines(json.dumps(pref))), 65_536, 1).warning
    assert warning is not None and '"score" (first on line 1, 1 line); "input.temperature"' in warning
