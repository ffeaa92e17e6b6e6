"""Which vLLM replica a request goes to: adapter affinity by rendezvous hashing, the least loaded as the
fallback, replicas marked down skipped; and what the vllm backend refuses rather than drop."""

from __future__ import annotations

import json
import re

from ftserve.core.schemas.completions import ChatCompletionRequest
from ftserve.engine.constraint import Constraint
from ftserve.engine.generation import Row
from ftserve.engine.sampling import Sampling
from ftserve.serving.backends.replicas import Replica, order
from ftserve.serving.backends.vllm import check_servable, request_body, structured_outputs
from ftserve.serving.tools import tool_plan

URLS = [f"http://vllm-{i}:8000" for i in range(4)]


def replicas() -> list[Replica]:
    return [Replica(u) for u in URLS]


def test_an_adapter_goes_to_the_same_replica_whatever_the_order_of_the_list() -> None:
    reps = replicas()
    for key in ("ftjob-a-final", "ftjob-b-final", "ftjob-c-3"):
        first = order(reps, key, slack=16, now=0)[0].url
        assert order(list(reversed(reps)), key, slack=16, now=0)[0].url == first
    # Adapters spread over the replicas rather than all landing on one.
    firsts = {order(reps, f"ftjob-{i}-final", slack=16, now=0)[0].url for i in range(40)}
    assert len(firsts) >= 3


def test_removing_a_replica_moves_only_the_adapters_it_held() -> None:
    reps = replicas()
    keys = [f"ftjob-{i}-final" for i in range(60)]
    before = {k: order(reps, k, slack=16, now=0)[0].url for k in keys}
    after = {k: order(reps[:3], k, slack=16, now=0)[0].url for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert moved and all(before[k] == URLS[3] for k in moved)


def test_the_replica_holding_an_adapter_wins_unless_it_is_much_busier() -> None:
    reps = replicas()
    key = "ftjob-x-final"
    holder = next(r for r in reps if r is not order(reps, key, slack=16, now=0)[0])
    holder.adapters.add(key)
    assert order(reps, key, slack=16, now=0)[0] is holder
    holder.rows = 17  # 17 rows beyond the least loaded (0): past the slack
    assert order(reps, key, slack=16, now=0)[0].rows == 0
    holder.rows = 16
    assert order(reps, key, slack=16, now=0)[0] is holder


def test_base_requests_go_to_the_least_loaded_and_down_replicas_are_skipped() -> None:
    reps = replicas()
    for r, load in zip(reps, [5, 2, 9, 3], strict=True):
        r.rows = load
    assert [r.url for r in order(reps, None, slack=16, now=0)] == [URLS[1], URLS[3], URLS[0], URLS[2]]
    reps[1].down_until = 10.0
    assert [r.url for r in order(reps, None, slack=16, now=5)] == [URLS[3], URLS[0], URLS[2]]
    assert order(reps, None, slack=16, now=10)[0].url == URLS[1]  # tried again once its time is up
    for r in reps:
        r.down_until = 10.0
    assert order(reps, "k", slack=16, now=5) == []


def test_refused_features_name_their_parameter() -> None:
    logprobs = Row([1, 2], Sampling(logprobs=2))
    refused = check_servable("b", [Row([1], Sampling()), logprobs])
    assert refused is not None and refused.param == "logprobs" and refused.code == "unsupported_on_backend"
    assert check_servable("b", [Row([1], Sampling(prompt_logprobs=True))]) is not None
    assert check_servable("b", [Row([1], Sampling(temperature=0.7, seed=3))]) is None


def test_a_row_that_moves_replica_continues_where_it_was() -> None:
    row = Row([1, 2, 3], Sampling(max_tokens=10, temperature=0.0, logit_bias=((7, 2.0),), seed=4))
    row.token_ids = [9, 8]
    body = request_body("m", row, {0, 2})
    assert body["prompt"] == [1, 2, 3, 9, 8] and body["max_tokens"] == 8
    assert body["stop_token_ids"] == [0, 2] and body["logit_bias"] == {"7": 2.0} and body["seed"] == 4
    assert "structured_outputs" not in body


def test_constraints_are_forwarded_as_vllms_structured_outputs() -> None:
    def sent(c: Constraint) -> object:
        return request_body("m", Row([1], Sampling(constraint=c)), {2})["structured_outputs"]

    assert sent(Constraint("json_object")) == {"json_object": True}
    assert sent(Constraint("json_schema", '{"type": "object"}')) == {"json": {"type": "object"}}
    assert sent(Constraint("lark", 'start: "yes" | "no"')) == {"grammar": 'start: "yes" | "no"'}


def test_a_forced_call_on_a_non_strict_schema_reaches_vllm_closed() -> None:
    """vLLM gets the same closed schema as the builtin engine: it is in the grammar's text, not an option."""
    params = {"type": "object", "properties": {"city": {"type": "string"}, "opts": {"type": "object"}}}
    for open_to in (None, True):
        parameters = params if open_to is None else params | {"additionalProperties": open_to}
        tool = {"type": "function", "function": {"name": "get_weather", "parameters": parameters}}
        req = ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [tool], "tool_choice": "required"}
        )
        plan = tool_plan(req)
        assert plan is not None and plan.constraint is not None
        grammar = structured_outputs(plan.constraint)["grammar"]
        body = json.loads(re.search(r"%json (.*)", grammar).group(1))  # type: ignore[union-attr]
        args = body["properties"]["arguments"]
        assert args["additionalProperties"] is (open_to is True)
        assert args["properties"]["opts"]["additionalProperties"] is False, "nested objects close too"
