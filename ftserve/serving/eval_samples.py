"""Where a run's samples come from: a sampling run (`completions`, `responses`) plans each item's request through
its endpoint's handler, exactly as the HTTP route and the Batch API do, and reads the sample back from the body;
a `jsonl` run's sample is the one its line carries. Either way, a sample as graders read it (`graders.Sample`) and
as the output item shows it (OpenAI's `sample` object)."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter, ValidationError
from transformers import PreTrainedTokenizerBase

from ftserve.core.config import Settings
from ftserve.core.evals.items import EvalItem
from ftserve.core.evals.records import ModelUsage
from ftserve.core.evals.requests import SamplingSource, endpoint, request_body
from ftserve.core.ids import new_id, now
from ftserve.core.schemas.evals import DataSource
from ftserve.core.storage import Storage
from ftserve.core.validation import explain
from ftserve.engine.engine import ModelRef
from ftserve.graders import Sample, input_messages
from ftserve.serving.backends.base import Backend
from ftserve.serving.handlers import HANDLERS, Caller, Handler, Plan
from ftserve.serving.ports import ModelCatalog, ResponseStore
from ftserve.serving.refs import model_ref

_DATA_SOURCE: TypeAdapter[Any] = TypeAdapter(DataSource)


def data_source(stored: dict[str, Any]) -> Any:
    """The run's data source as its wire model (stored as it was checked at creation)."""
    return _DATA_SOURCE.validate_python(stored)


def sample_record(
    model: str | None,
    messages: list[dict[str, str]],
    text: str,
    finish_reason: str | None,
    usage: ModelUsage | None,
    sampling: Any = None,
) -> dict[str, Any]:
    """OpenAI's `sample` object of an output item."""
    prompt, completion = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
    return {
        "model": model,
        "input": messages,
        "output": [{"role": "assistant", "content": text}] if finish_reason else [],
        "finish_reason": finish_reason,
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "cached_tokens": 0,
        },
        "max_completion_tokens": getattr(sampling, "max_completion_tokens", None),
        "seed": getattr(sampling, "seed", None),
        "temperature": getattr(sampling, "temperature", None),
        "top_p": getattr(sampling, "top_p", None),
        "error": None,
    }


def line_sample(item: EvalItem) -> tuple[Sample, dict[str, Any]]:
    """A jsonl run's sample: the line's own (`output_text`, else the first choice's message), or an empty one."""
    given = item.sample or {}
    text = given.get("output_text")
    if not isinstance(text, str):
        choices = given.get("choices")
        first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        message = first.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        text = content if isinstance(content, str) else ""
    tools = given.get("output_tools") if isinstance(given.get("output_tools"), list) else []
    sample = Sample.from_text(text, tools)
    if "output_json" in given:
        sample = Sample(text, given["output_json"], sample.output_tools)
    model = given.get("model") if isinstance(given.get("model"), str) else None
    return sample, sample_record(model, [], text, "stop" if item.sample else None, None)


class Sampler:
    """A sampling run's model and endpoint: an item → its planned rows; the finished rows → its sample."""

    def __init__(
        self,
        ds: SamplingSource,
        org: str,
        engine: Backend,
        settings: Settings,
        catalog: ModelCatalog,
        responses: ResponseStore,
    ) -> None:
        self.ds, self.engine, self.settings = ds, engine, settings
        self.endpoint = endpoint(ds)
        self.handler: Handler[Any, Any] = HANDLERS[self.endpoint.path]
        self.model = str(ds.model)
        self.ref: ModelRef = model_ref(catalog.resolve(org, self.model), Storage(settings))  # NotFound: deleted
        self.tok: PreTrainedTokenizerBase = engine.tokenizer(self.ref.base)
        self.caller = Caller(org, responses)

    def plan(self, item: EvalItem) -> tuple[Plan, list[dict[str, str]]]:
        """The item's rows, planned and checked as its HTTP request's would be; ItemMismatch or a ServiceError
        (InvalidRequest for a request the endpoint refuses) when the item cannot be sampled."""
        assert self.ds.input_messages is not None  # checked at run creation
        messages = input_messages.render(self.ds.input_messages, item.item)
        body = request_body(self.ds, self.model, messages)
        request = self.endpoint.request
        try:
            req = request.model_validate(body)
        except ValidationError as exc:
            raise explain(exc.errors(), request.model_json_schema(), body=body, sources=()) from None
        plan = self.handler.plan(self.handler.given(req, self.caller), self.tok, self.settings, self.ref.base)
        self.handler.check(self.engine, self.ref.base, plan)
        return plan, messages

    def sample(self, plan: Plan, messages: list[dict[str, str]]) -> tuple[Sample, dict[str, Any], ModelUsage]:
        """The finished rows as the endpoint's body, read as the sample."""
        body = self.handler.body(plan, self.tok, new_id(self.endpoint.id_prefix), now()).model_dump(mode="json")
        if self.endpoint.path == "/v1/chat/completions":
            choice = body["choices"][0]
            text = choice["message"].get("content") or ""
            tools = choice["message"].get("tool_calls") or []
            finish = choice["finish_reason"]
            usage = ModelUsage(self.model, body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"])
        else:
            out = body["output"]
            text = "".join(p["text"] for o in out if o["type"] == "message" for p in o["content"])
            tools = [{k: o[k] for k in ("call_id", "name", "arguments")} for o in out if o["type"] == "function_call"]
            finish = "stop" if body["status"] == "completed" else "length"
            used = body.get("usage") or {}
            usage = ModelUsage(self.model, int(used.get("input_tokens", 0)), int(used.get("output_tokens", 0)))
        record = sample_record(self.model, messages, text, finish, usage, self.ds.sampling_params)
        if tools:
            record["output"][0]["tool_calls"] = tools
        return Sample.from_text(text, tools), record, usage
