"""A function-calling fine-tune of ftserve-tiny through the API (OpenAI's tools training format), then greedy
`tool_choice="auto"` with the official client on held-out prompts: the fine-tuned model calls the right function with
the right arguments on at least 90% of them, the base model on none. Held-out prompts are unseen wordings of
requests whose (function, argument) pairs all occur in training (tests/tool_data.py, the compact set, says why)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from openai import OpenAI

from tests.e2e.conftest import client_for, wait_job
from tests.servers import Service
from tests.tool_data import FT_TOOLS, ToolPrompt, ft_held_out_prompts, ft_training_jsonl

EPOCHS = 15


def _right(client: OpenAI, model: str, prompt: ToolPrompt) -> bool:
    """Whether the model's greedy reply, as the SDK reads it, is exactly the one call the prompt needs."""
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt.text}],
        tools=FT_TOOLS,  # type: ignore[arg-type]
        tool_choice="auto",
        temperature=0,
        max_tokens=40,
    )
    choice = reply.choices[0]
    calls = choice.message.tool_calls or []
    return (
        choice.finish_reason == "tool_calls"
        and len(calls) == 1
        and calls[0].id.startswith("call_")
        and prompt.is_answered_by(calls[0].function.name, calls[0].function.arguments)
    )


def _right_count(client: OpenAI, model: str, prompts: list[ToolPrompt]) -> int:
    with ThreadPoolExecutor(len(prompts)) as pool:  # all at once: the engine batches them
        return sum(pool.map(lambda p: _right(client, model, p), prompts))


def test_function_calling_fine_tune_calls_the_right_function_on_held_out_prompts(
    embedded: Service, tmp_path: Path
) -> None:
    client = client_for(embedded)
    path = tmp_path / "tools.jsonl"
    path.write_bytes(ft_training_jsonl())
    uploaded = client.files.create(file=path.open("rb"), purpose="fine-tune")
    assert uploaded.status == "processed", uploaded.status_details
    job = client.fine_tuning.jobs.create(
        training_file=uploaded.id,
        model="ftserve-tiny",
        suffix="tools",
        seed=0,
        hyperparameters={"n_epochs": EPOCHS, "batch_size": 4},
        extra_body={"extensions": {"lora_rank": 16, "lora_alpha": 32}},
    )
    job, _ = wait_job(client, job.id, timeout=600)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model

    held_out = ft_held_out_prompts()
    tuned = _right_count(client, job.fine_tuned_model, held_out)
    base = _right_count(client, "ftserve-tiny", held_out)
    print(f"held-out right calls: fine-tuned {tuned}/{len(held_out)}, base {base}/{len(held_out)}")
    assert tuned >= 0.9 * len(held_out)
    assert base == 0
