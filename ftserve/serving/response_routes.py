"""/v1/responses: create (a chat plan through the Responses handler, streamed as OpenAI's semantic events), and
the org's stored responses (retrieve, delete, input_items), read and written through the ResponseStore port;
a response is stored after its body is built, never while its tokens are generated."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from ftserve.core.envelope import envelope
from ftserve.core.ids import new_id, now
from ftserve.core.schemas.errors import ERROR_RESPONSES
from ftserve.core.schemas.responses import (
    DeletedResponse,
    ErrorEvent,
    InputItemsPage,
    Response,
    ResponseCreateRequest,
    ResponseError,
    ResponseEvent,
)
from ftserve.serving.handlers import RESPONSE_HANDLER, Caller
from ftserve.serving.ports import ResponseStore
from ftserve.serving.response_events import ResponseEvents
from ftserve.serving.responses import finished, response_body, skeleton
from ftserve.serving.routes import OrgDep, SettingsDep, _engine, _resolve
from ftserve.serving.streaming import stream
from ftserve.serving.tools import ChoiceStream

router = APIRouter(tags=["inference"], responses=ERROR_RESPONSES)
PATH = RESPONSE_HANDLER.endpoint.path


def _store(request: Request) -> ResponseStore:
    store: ResponseStore = request.app.state.responses
    return store


def _caller(request: Request, org: str) -> Caller:
    return Caller(org, _store(request))


# What a created response's id is for (OpenAPI links: schemathesis' stateful phase follows them).
_ID = {"response_id": "$response.body#/id"}
_LINKS = {
    "200": {
        "description": "Successful Response",
        "links": {
            "RetrieveResponse": {"operationId": "retrieve_response", "parameters": _ID},
            "ListInputItems": {"operationId": "list_input_items", "parameters": _ID},
            "DeleteResponse": {"operationId": "delete_response", "parameters": _ID},
        },
    }
}


@router.post(PATH, response_model=RESPONSE_HANDLER.endpoint.response, openapi_extra={"responses": _LINKS})
async def create_response(req: ResponseCreateRequest, request: Request, settings: SettingsDep, org: OrgDep) -> Any:
    caller = _caller(request, org)
    # Only a previous_response_id reads the DB (off the event loop); a first turn needs no thread.
    if req.previous_response_id is None:
        given = RESPONSE_HANDLER.given(req, caller)
    else:
        given = await run_in_threadpool(RESPONSE_HANDLER.given, req, caller)
    ref = await run_in_threadpool(_resolve, request, org, req.model)
    engine = _engine(request)
    tok = await run_in_threadpool(engine.tokenizer, ref.base)
    plan = RESPONSE_HANDLER.plan(given, tok, settings, ref.base)
    await run_in_threadpool(RESPONSE_HANDLER.check, engine, ref.base, plan)
    rid, created = new_id(RESPONSE_HANDLER.endpoint.id_prefix), now()
    if req.stream:
        events = ResponseEvents(skeleton(req, rid, created))
        choice = ChoiceStream(plan.chat.tools)
        started = False

        def chunk(i: int, text: str, finish: str | None) -> list[ResponseEvent]:
            nonlocal started
            out = [] if started else events.start()
            started = True
            if finish is None:
                return out + events.feed(choice.feed(text))
            deltas, _ = choice.finish(finish)
            return out + events.feed(deltas) + events.finish(finish)

        async def final() -> list[ResponseEvent]:
            response = finished(events.response, plan, events.items)
            await run_in_threadpool(RESPONSE_HANDLER.keep, caller, plan, response)
            kind = "response.incomplete" if response.status == "incomplete" else "response.completed"
            return [events.lifecycle(kind, response)]

        def failed(exc: BaseException) -> list[ResponseEvent]:
            error = envelope(exc)[1]["error"]
            code = error.get("code") or "server_error"
            why = ResponseError(code=code, message=error["message"])
            response = events.response.model_copy(update={"status": "failed", "output": events.items, "error": why})
            return [
                events.event(ErrorEvent, code=code, message=error["message"], param=error.get("param")),
                events.lifecycle("response.failed", response),
            ]

        return await stream(engine, ref, plan.rows, chunk, final, failed)
    await engine.generate(ref, plan.rows)
    response = response_body(plan, tok, rid, created)
    # Written before the reply goes out, so a returned id is retrievable at once (from any replica).
    await run_in_threadpool(RESPONSE_HANDLER.keep, caller, plan, response)
    return response


@router.get(PATH + "/{response_id}", response_model=Response, operation_id="retrieve_response")
def retrieve_response(response_id: str, request: Request, org: OrgDep) -> Any:
    return _store(request).get(org, response_id).body


@router.delete(PATH + "/{response_id}", response_model=DeletedResponse, operation_id="delete_response")
def delete_response(response_id: str, request: Request, org: OrgDep) -> DeletedResponse:
    _store(request).delete(org, response_id)
    return DeletedResponse(id=response_id)


@router.get(PATH + "/{response_id}/input_items", response_model=InputItemsPage, operation_id="list_input_items")
def list_input_items(
    response_id: str,
    request: Request,
    org: OrgDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
    include: Annotated[list[str] | None, Query()] = None,
) -> InputItemsPage:
    items, has_more = _store(request).input_items(org, response_id, after, limit, order)
    first = items[0].get("id") if items else None
    last = items[-1].get("id") if items else None
    return InputItemsPage(data=items, has_more=has_more, first_id=first, last_id=last)
