"""The Responses API's stream assembler: chat deltas in, OpenAI's numbered semantic events out, in order."""

from __future__ import annotations

from ftserve.core.schemas.completions import ChatDelta, DeltaFunctionCall, DeltaToolCall
from ftserve.core.schemas.responses import OutputFunctionCall, OutputMessage, Response
from ftserve.serving.response_events import ResponseEvents


def _events() -> ResponseEvents:
    return ResponseEvents(Response(id="resp_x", created_at=0, status="in_progress", model="m", output=[]))


def test_text_then_a_call_opens_and_closes_each_item_in_order() -> None:
    ev = _events()
    out = ev.start()
    out += ev.feed([ChatDelta(content="Hi"), ChatDelta(content=" there")])
    call = DeltaToolCall(index=0, id="call_1", type="function", function=DeltaFunctionCall(name="f", arguments=""))
    out += ev.feed([ChatDelta(tool_calls=[call])])
    out += ev.feed([ChatDelta(tool_calls=[DeltaToolCall(index=0, function=DeltaFunctionCall(arguments='{"a":'))])])
    out += ev.feed([ChatDelta(tool_calls=[DeltaToolCall(index=0, function=DeltaFunctionCall(arguments="1}"))])])
    out += ev.finish("stop")
    assert [e.type for e in out] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    assert [e.sequence_number for e in out] == list(range(len(out)))
    message, fn = ev.items
    assert isinstance(message, OutputMessage) and message.content[0].text == "Hi there"
    assert message.status == "completed"
    assert isinstance(fn, OutputFunctionCall) and fn.arguments == '{"a":1}' and fn.call_id == "call_1"
    # Items in the events are snapshots: the added item was empty when it was sent.
    added = out[2].model_dump()
    assert added["item"]["content"] == [] and added["item"]["status"] == "in_progress"
    done = out[-1].model_dump()
    assert done["item"]["arguments"] == '{"a":1}' and done["output_index"] == 1


def test_no_output_is_an_empty_message_and_length_is_incomplete() -> None:
    ev = _events()
    out = ev.finish("length")
    assert [e.type for e in out] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert ev.items[0].status == "incomplete"
