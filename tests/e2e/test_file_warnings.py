"""Training files whose lines carry keys their format does not read (a hyperparameter on the line, a typo beside
the real key) are accepted, as OpenAI accepts them, and never silently: the File's status_details names each
key, the first line it is on and how many lines carry it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from tests.e2e.conftest import client_for
from tests.servers import Service

# Files only: nothing trains, no artifact kept.
pytestmark = pytest.mark.local_storage

CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
PREFERENCE = {
    "input": {"messages": [{"role": "user", "content": "Hi"}], "tools": [], "parallel_tool_calls": True},
    "preferred_output": [{"role": "assistant", "content": "Hello"}],
    "non_preferred_output": [{"role": "assistant", "content": "Go away"}],
}


@pytest.fixture(scope="module")
def client(embedded: Service) -> OpenAI:
    return client_for(embedded)


def _upload(client: OpenAI, path: Path, lines: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    f = client.files.create(file=path.open("rb"), purpose="fine-tune")
    assert f.status == "processed", f.status_details  # accepted: OpenAI accepts such files too
    return f.id


def test_unknown_keys_are_named_in_status_details(client: OpenAI, tmp_path: Path) -> None:
    lines = [CHAT | {"weight_decay": 1} if i % 2 else dict(CHAT) for i in range(12)]
    lines[4] |= {"mesages": CHAT["messages"]}  # a typo next to the real key
    file_id = _upload(client, tmp_path / "chat.jsonl", lines)
    for f in (client.files.retrieve(file_id), next(f for f in client.files.list() if f.id == file_id)):
        assert f.status == "processed" and f.status_details is not None
        assert '"weight_decay" (first on line 2, 6 lines)' in f.status_details, f.status_details
        assert '"mesages" (first on line 5, 1 line)' in f.status_details, f.status_details
        assert "messages, parallel_tool_calls, tools" in f.status_details  # what chat lines are read for

    pairs = [PREFERENCE | {"score": 0.5} if i == 9 else PREFERENCE for i in range(10)]
    pairs[3] = pairs[3] | {"input": {**PREFERENCE["input"], "temperature": 0.2}}  # type: ignore[dict-item]
    f = client.files.retrieve(_upload(client, tmp_path / "pairs.jsonl", pairs))
    assert f.status_details is not None
    assert '"input.temperature" (first on line 4, 1 line); "score" (first on line 10, 1 line)' in f.status_details


def test_files_in_openai_formats_have_no_details(client: OpenAI, tmp_path: Path) -> None:
    tools = [{"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}}]
    lines = [CHAT | {"tools": tools, "parallel_tool_calls": False}] * 5 + [CHAT] * 5
    assert client.files.retrieve(_upload(client, tmp_path / "chat.jsonl", lines)).status_details is None
    pc = [{"prompt": "a", "completion": " b"}] * 10
    assert client.files.retrieve(_upload(client, tmp_path / "pc.jsonl", pc)).status_details is None
