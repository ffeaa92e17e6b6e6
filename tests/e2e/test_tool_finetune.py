"""A function-calling fine-tune of ftserve-tiny through the API (OpenAI's tools training format), then greedy
`tool_choice="auto"` with the official client on held-out prompts: the calls the fine-tuned model learned come back
as the SDK's tool calls (training renders them as serving parses them), where the base model's never do."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from openai import OpenAI

from tests.e2e.conftest import client_for, wait_job
from tests.servers import Service
from tests.tool_data import TOOLS, ToolPrompt, held_out_prompts, training_jsonl

EPOCHS = 12
PARAMETERS = {t["function"]["name"]: set(t["function"]["parameters"]["properties"]) for t in TOOLS}


def _ask(client: OpenAI, model: str, prompt: ToolPrompt) -> tuple[bool, bool]:
    """(a well-formed call: one call of a declared tool with exactly its parameters, the right call) for the
    model's greedy reply, as the SDK reads it."""
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt.text}],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="auto",
        temperature=0,
        max_tokens=48,
    )
    choice = reply.choices[0]
    calls = choice.message.tool_calls or []
    if choice.finish_reason != "tool_calls" or len(calls) != 1 or calls[0].function.name not in PARAMETERS:
        return False, False
    name, arguments = calls[0].function.name, calls[0].function.arguments
    well_formed = set(json.loads(arguments)) == PARAMETERS[name] and calls[0].id.startswith("call_")
    return well_formed, well_formed and prompt.is_answered_by(name, arguments)


def _score(client: OpenAI, model: str, prompts: list[ToolPrompt]) -> tuple[int, int]:
    with ThreadPoolExecutor(len(prompts)) as pool:  # all at once: the engine batches them
        results = list(pool.map(lambda p: _ask(client, model, p), prompts))
    return sum(w for w, _ in results), sum(r for _, r in results)


def test_function_calling_fine_tune_replies_with_tool_calls(embedded: Service, tmp_path: Path) -> None:
    client = client_for(embedded)
    path = tmp_path / "tools.jsonl"
    path.write_bytes(training_jsonl())
    uploaded = client.files.create(file=path.open("rb"), purpose="fine-tune")
    assert uploaded.status == "processed", uploaded.status_details
    job = client.fine_tuning.jobs.create(
        training_file=uploaded.id,
        model="ftserve-tiny",
        suffix="tools",
        seed=3,
        hyperparameters={"n_epochs": EPOCHS, "batch_size": 4},
        extra_body={"extensions": {"lora_rank": 16, "lora_alpha": 32}},
    )
    job, _ = wait_job(client, job.id, timeout=900)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model

    held_out = held_out_prompts()
    tuned, tuned_right = _score(client, job.fine_tuned_model, held_out)
    base, base_right = _score(client, "ftserve-tiny", held_out)
    print(f"held-out: fine-tuned {tuned} well-formed, {tuned_right} right; base {base}, {base_right}")
    assert tuned >= 0.9 * len(held_out), f"{tuned}/{len(held_out)} held-out replies were a well-formed call"
    assert base == base_right == 0
