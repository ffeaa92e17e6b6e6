"""A streamed response's semantic events: the row's chat deltas (serving/tools.ChoiceStream: content, tool-call
pieces) in, OpenAI's numbered Responses API events out (output_item.added, content_part.added, output_text.delta,
function_call_arguments.delta, the .done events), the output items it opens being those of the final response."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from ftserve.core.ids import new_id
from ftserve.core.schemas.completions import ChatDelta
from ftserve.core.schemas.responses import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    ContentPartEvent,
    OutputFunctionCall,
    OutputItem,
    OutputItemEvent,
    OutputMessage,
    OutputText,
    Response,
    ResponseEvent,
    ResponseLifecycleEvent,
    TextDeltaEvent,
    TextDoneEvent,
)


@dataclass
class ResponseEvents:
    """One streamed response's semantic events, numbered: chat deltas in (serving/tools.ChoiceStream), events out;
    the output items it opens are those of the final response."""

    response: Response
    seq: int = 0
    items: list[OutputItem] = field(default_factory=list)
    open: OutputItem | None = None

    def event(self, cls: type[ResponseEvent], **kw: Any) -> ResponseEvent:
        event = cls(sequence_number=self.seq, **kw)
        self.seq += 1
        return event

    def lifecycle(self, kind: str, response: Response) -> ResponseEvent:
        return self.event(ResponseLifecycleEvent, type=kind, response=response)

    def start(self) -> list[ResponseEvent]:
        created = self.lifecycle("response.created", self.response)
        return [created, self.lifecycle("response.in_progress", self.response)]

    def _added(self, item: OutputItem) -> ResponseEvent:
        self.items.append(item)
        self.open = item
        index = len(self.items) - 1
        return self.event(
            OutputItemEvent, type="response.output_item.added", output_index=index, item=copy.deepcopy(item)
        )

    def feed(self, deltas: list[ChatDelta]) -> list[ResponseEvent]:
        out: list[ResponseEvent] = []
        for d in deltas:
            if d.content:
                if not isinstance(self.open, OutputMessage):
                    out += self.close("completed")
                    message = OutputMessage(id=new_id("msg_"), status="in_progress", content=[])
                    out.append(self._added(message))
                    message.content.append(OutputText(text=""))
                    out.append(self._part("response.content_part.added", message))
                assert isinstance(self.open, OutputMessage)
                self.open.content[0].text += d.content
                at = {"item_id": self.open.id, "output_index": len(self.items) - 1, "content_index": 0}
                out.append(self.event(TextDeltaEvent, **at, delta=d.content))
            for call in d.tool_calls or []:
                if call.id is not None:
                    out += self.close("completed")
                    name = call.function.name if call.function is not None else None
                    item = OutputFunctionCall(
                        id=new_id("fc_"), call_id=call.id, name=name or "", arguments="", status="in_progress"
                    )
                    out.append(self._added(item))
                args = call.function.arguments if call.function is not None else None
                if args and isinstance(self.open, OutputFunctionCall):
                    self.open.arguments += args
                    index = len(self.items) - 1
                    out.append(self.event(ArgumentsDeltaEvent, item_id=self.open.id, output_index=index, delta=args))
        return out

    def _part(self, kind: str, message: OutputMessage) -> ResponseEvent:
        return self.event(
            ContentPartEvent,
            type=kind,
            item_id=message.id,
            output_index=len(self.items) - 1,
            content_index=0,
            part=copy.deepcopy(message.content[0]),
        )

    def close(self, status: str) -> list[ResponseEvent]:
        """The open item's closing events (its status as given)."""
        item, self.open = self.open, None
        if item is None:
            return []
        index = len(self.items) - 1
        out = []
        if isinstance(item, OutputMessage):
            text = item.content[0].text
            out.append(self.event(TextDoneEvent, item_id=item.id, output_index=index, content_index=0, text=text))
            out.append(self._part("response.content_part.done", item))
        else:
            done = {"name": item.name, "arguments": item.arguments}
            out.append(self.event(ArgumentsDoneEvent, item_id=item.id, output_index=index, **done))
        item.status = status  # type: ignore[assignment]
        kind = "response.output_item.done"
        out.append(self.event(OutputItemEvent, type=kind, output_index=index, item=copy.deepcopy(item)))
        return out

    def finish(self, finish: str | None) -> list[ResponseEvent]:
        """Close the output: a reply with no output at all is an empty message."""
        status = "incomplete" if finish == "length" else "completed"
        out: list[ResponseEvent] = []
        if not self.items:
            out += self.feed([])
            message = OutputMessage(id=new_id("msg_"), status="in_progress", content=[])
            out.append(self._added(message))
            message.content.append(OutputText(text=""))
            out.append(self._part("response.content_part.added", message))
        out += self.close(status)
        return out
