"""The judge a model grader asks, as a port: a served model's name, the rendered chat messages, the grader's
`sampling_params` and a JSON schema the reply must follow go in; the reply's text, its token usage and the model
that answered come out. Graders never know how the judge is reached (`http_judge.HttpJudge` reaches ftserve's
serving path over HTTP); `JudgeConfig` is what model graders get from where they run: the judge and the
setting that maps OpenAI model names to served ones."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ftserve.core.errors import bad_request, quote
from ftserve.core.schemas.graders import SamplingParams
from ftserve.graders.base import TokenUsage

# OpenAI's model families, and OpenAI fine-tunes of them (ft:gpt-4o-…): names ftserve cannot call.
_OPENAI_MODEL = re.compile(
    r"^(?:ft:)?(?:gpt-|chatgpt-|o[1-9]\d*(?:-|$)|text-|davinci|babbage|codex-|computer-use-|omni-)", re.IGNORECASE
)


@dataclass(frozen=True)
class JudgeReply:
    """The judge's answer: its text, the tokens it cost, the model that answered, and whether the token budget
    cut it (then it does not parse)."""

    text: str
    usage: TokenUsage
    model: str
    truncated: bool = False


class JudgeUnavailable(Exception):
    """The judge could not answer (unreachable, failed, an unexpected reply): a reward of 0 with
    `model_grader_server_error`, the message its details."""


class JudgeRejected(Exception):
    """The serving path refused the request for a reason in the grader: a 400 naming `field` under the grader
    (`model`, `input`, `sampling_params.<name>`; None: the grader itself)."""

    def __init__(self, message: str, field: str | None, code: str | None) -> None:
        super().__init__(message)
        self.message, self.field, self.code = message, field, code


class Judge(Protocol):
    """Answers chat messages with a served model, its reply following `schema` (structured outputs)."""

    def complete(
        self, model: str, messages: list[dict[str, str]], sampling: SamplingParams | None, schema: dict[str, Any]
    ) -> JudgeReply: ...


@dataclass(frozen=True)
class JudgeConfig:
    """What model graders get from where they run: the judge (None where no serving path can be reached) and
    `FTSERVE_GRADER_MODEL_MAP` (a grader's model name → the served model that judges in its place)."""

    judge: Judge | None = None
    model_map: Mapping[str, str] = field(default_factory=dict)

    def served_model(self, name: str, param: str) -> str:
        """The model that judges for `name` (mapped, or as it is); an OpenAI model's name is a 400 naming `param`."""
        served = self.model_map.get(name, name)
        if _OPENAI_MODEL.match(served):
            raise bad_request(
                f"{param} {quote(name)} is an OpenAI model, which ftserve cannot call: name a model this server "
                "serves (a base such as smollm2-135m-instruct, or an ft: model), or map the name to one with "
                "FTSERVE_GRADER_MODEL_MAP",
                param=param,
                code="unsupported_model",
            )
        return served
