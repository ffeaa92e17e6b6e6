"""The request a sampling run sends for an item: a `completions` data source becomes a /v1/chat/completions request,
a `responses` one a /v1/responses request (not stored), with the run's model and sampling_params. Checked once at
run creation (a 400 naming `data_source.sampling_params.<field>`), built per item by the eval runner, which then
answers it through the endpoint's own handler, as the Batch API does."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ftserve.core.endpoints import CHAT_COMPLETIONS, RESPONSES, Endpoint
from ftserve.core.errors import bad_request
from ftserve.core.schemas.evals import CompletionsDataSource, ResponsesDataSource
from ftserve.core.validation import explain

SamplingSource = CompletionsDataSource | ResponsesDataSource
# A request field → the sampling_params field that set it (for the 400's param).
_FROM = {"max_output_tokens": "max_completion_tokens", "max_completion_tokens": "max_completion_tokens"}


def endpoint(ds: SamplingSource) -> Endpoint:
    return CHAT_COMPLETIONS if isinstance(ds, CompletionsDataSource) else RESPONSES


def request_body(ds: SamplingSource, model: str, messages: list[dict[str, str]]) -> dict[str, Any]:
    """The endpoint's request body for one item's messages."""
    sp = ds.sampling_params
    given = {} if sp is None else sp.model_dump(exclude_none=True, exclude={"reasoning_effort", "seed"})
    if isinstance(ds, CompletionsDataSource):
        seed = {} if sp is None or sp.seed is None else {"seed": sp.seed}
        return {"model": model, "messages": messages, **given, **seed}
    # The Responses API takes no seed (docs/api.md: a responses run's seed is not honoured).
    if "max_completion_tokens" in given:
        given["max_output_tokens"] = given.pop("max_completion_tokens")
    return {"model": model, "input": messages, "store": False, **given}


def check_sampling(ds: SamplingSource, model: str) -> None:
    """InvalidRequest naming the sampling_params field the endpoint would refuse for every item."""
    sp = ds.sampling_params
    if sp is not None and sp.reasoning_effort not in (None, "none"):
        raise bad_request(
            f"reasoning_effort '{sp.reasoning_effort}' cannot be honoured: the models ftserve serves do not reason; "
            "leave it out",
            param="data_source.sampling_params.reasoning_effort",
            code="unsupported_reasoning_effort",
        )
    request = endpoint(ds).request
    body = request_body(ds, model, [{"role": "user", "content": "x"}])
    try:
        request.model_validate(body)
    except ValidationError as exc:
        err = explain(exc.errors(), request.model_json_schema(), body=body, sources=())
        field = str(err.param or "").split(".")[0].split("[")[0]
        param = f"data_source.sampling_params.{_FROM.get(field, field)}" if field else "data_source.sampling_params"
        raise bad_request(f"sampling_params: {err.message}", param=param, code=err.code) from None
