"""The Judge over HTTP: `POST {base_url}/v1/chat/completions` on ftserve's serving path, with the Authorization
header of whoever the grader runs for (the api forwards its caller's; reinforcement fine-tuning will hand a
job-scoped key), so a judge sees exactly the models that caller may use: another org's `ft:` model is "model
not found", as it is on the caller's own requests."""

from __future__ import annotations

import ipaddress
from typing import Any

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ftserve.core.config import Settings
from ftserve.core.schemas.graders import SamplingParams
from ftserve.graders.base import TokenUsage
from ftserve.graders.judge import JudgeRejected, JudgeReply, JudgeUnavailable

# A request parameter the serving path refuses → the grader's field that set it.
_FIELDS = {
    "model": "model",
    "messages": "input",
    "max_completion_tokens": "sampling_params.max_completions_tokens",
    "temperature": "sampling_params.temperature",
    "top_p": "sampling_params.top_p",
    "seed": "sampling_params.seed",
}
# Statuses that mean the grader asked for something the serving path will not do (a 400 to the grader's caller);
# any other failure is the judge's, not the grader's (a reward of 0 with model_grader_server_error).
_REJECTED = {400, 404, 413, 422}


def request_body(
    model: str, messages: list[dict[str, str]], sampling: SamplingParams | None, schema: dict[str, Any]
) -> dict[str, Any]:
    """The chat completion request: the messages, the reply constrained to `schema`, the grader's sampling.
    `reasoning_effort` is never sent: graders accept only "none", which the served models already are."""
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "response_format": {"type": "json_schema", "json_schema": {"name": "grade", "schema": schema, "strict": True}},
    }
    if sampling is not None:
        for name in ("temperature", "top_p", "seed"):
            value = getattr(sampling, name)
            if value is not None:
                body[name] = value
        if sampling.max_completions_tokens is not None:
            body["max_completion_tokens"] = sampling.max_completions_tokens
    return body


class HttpJudge:
    """A Judge that asks ftserve's serving path at `base_url`, as the holder of `authorization`."""

    def __init__(
        self, base_url: str, authorization: str | None, *, timeout: float = 600.0, connect_attempts: int = 3
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": authorization} if authorization else {}
        self._timeout = httpx.Timeout(timeout, connect=5.0)
        self._client: httpx.Client | None = None  # made when first asked: most grader runs ask no judge
        # Only a connection that never opened is retried: a request that reached the server may be generating.
        self._retrying = Retrying(
            retry=retry_if_exception_type((httpx.ConnectError, httpx.ConnectTimeout)),
            stop=stop_after_attempt(connect_attempts),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            reraise=True,
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> HttpJudge:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def complete(
        self, model: str, messages: list[dict[str, str]], sampling: SamplingParams | None, schema: dict[str, Any]
    ) -> JudgeReply:
        """The reply; JudgeRejected for a request the serving path refuses, JudgeUnavailable for any other failure."""
        body = request_body(model, messages, sampling, schema)
        if self._client is None:
            self._client = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=self._timeout)
        try:
            response = self._retrying(self._client.post, "/v1/chat/completions", json=body)
        except httpx.HTTPError as exc:
            raise JudgeUnavailable(f"the judge at {self.base_url} could not be reached: {exc!r}") from None
        if response.status_code != 200:
            raise _failure(response)
        return _reply(response)


def _failure(response: httpx.Response) -> Exception:
    """The serving path's refusal as the grader's 400, or a server error with its words."""
    try:
        error = response.json()["error"]
        message, param, code = str(error["message"]), error.get("param"), error.get("code")
    except (ValueError, KeyError, TypeError):
        message, param, code = response.text[:500], None, None
    if response.status_code in _REJECTED:
        field = _FIELDS.get(str(param).split("[")[0].split(".")[0]) if param else None
        # A name no one serves, or another org's ft: model: the grader's model, whatever the serving path calls it.
        if response.status_code == 404:
            field = "model"
        return JudgeRejected(f"The judge could not be asked: {message}", field, code)
    return JudgeUnavailable(f"the judge answered HTTP {response.status_code}: {message}")


def _reply(response: httpx.Response) -> JudgeReply:
    try:
        data = response.json()
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        return JudgeReply(
            text=choice["message"].get("content") or "",
            usage=TokenUsage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))),
            model=str(data["model"]),
            truncated=choice.get("finish_reason") == "length",
        )
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise JudgeUnavailable(f"the judge's reply is not a chat completion: {exc!r}") from None


def judge_url(settings: Settings, serves_inference: bool) -> str | None:
    """Where a judge's chat completions go: the inference role this process forwards to (`inference_url`), else
    the server's own address when it serves inference (`ftserve up`, whose worker shares its settings;
    `api --with-inference`), else nowhere."""
    if settings.inference_url:
        return settings.inference_url
    if not serves_inference:
        return None
    return f"http://{_connectable(settings.host)}:{settings.port}"


def _connectable(host: str) -> str:
    """The address to call a server bound to `host`: loopback for a wildcard bind, IPv6 literals bracketed."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host  # a host name
