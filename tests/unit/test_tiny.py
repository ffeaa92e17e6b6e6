"""ftserve-tiny's tokenizer: merges for the function-calling format appended after the first ones, which keep
their ids, so text the first merges spelled keeps its tokens."""

from __future__ import annotations

from models.tiny import _CORPUS, build_tokenizer
from models.tools import format_tool_call, tools_system_text
from tests.tool_data import TOOLS


def test_format_merges_are_appended_and_the_first_tokens_keep_their_ids() -> None:
    first, tok = build_tokenizer(tool_format=False), build_tokenizer()
    assert len(tok) > len(first)
    assert all(tok.convert_tokens_to_ids(t) == i for t, i in first.get_vocab().items())
    assert tok(_CORPUS)["input_ids"] == first(_CORPUS)["input_ids"]
    call = format_tool_call("get_weather", {"city": "Tokyo", "unit": "fahrenheit"})
    assert tok.tokenize(call)[:9] == ["<", "tool", "_", "call", ">", "Ċ", '{"', "name", '":']
    assert len(tok(call)["input_ids"]) < len(first(call)["input_ids"]) / 2
    assert len(tok(tools_system_text(TOOLS))["input_ids"]) < 500
    assert tok.decode(tok(call)["input_ids"]) == call
