"""A function-calling fine-tune of ftserve-tiny through the API (OpenAI's tools training format), then greedy
`tool_choice="auto"` with the official client on held-out prompts: the fine-tuned model calls the right function with
the right arguments on at least 90% of them, the base model on none. Held-out prompts are unseen wordings (an opening
and a core request training never puts together) of requests whose (function, argument) pairs all occur in training:
tests/tool_data.py's compact set and docs/training.md say why and what this does not test."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from openai import OpenAI

from tests.e2e.conftest import client_for, wait_job
from tests.servers import Service
from tests.tool_data import FT_TOOLS, ToolPrompt, ft_held_out_prompts, ft_training_jsonl

EPOCHS = 30


def _right(client: OpenAI, model: str, prompt: ToolPrompt) -> tuple[bool, bool]:
    """(one call of the right function, exactly the call the prompt needs) for the model's greedy reply, as the SDK
    reads it."""
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt.text}],
        tools=FT_TOOLS,  # type: ignore[arg-type]
        tool_choice="auto",
        temperature=0,
        max_tokens=80,  # ftserve-tiny spells a call in ~50 tokens
    )
    choice = reply.choices[0]
    calls = choice.message.tool_calls or []
    if choice.finish_reason != "tool_calls" or len(calls) != 1 or not calls[0].id.startswith("call_"):
        return False, False
    name, arguments = calls[0].function.name, calls[0].function.arguments
    return name == prompt.name, prompt.is_answered_by(name, arguments)


def _counts(client: OpenAI, model: str, prompts: list[ToolPrompt]) -> tuple[int, int]:
    with ThreadPoolExecutor(len(prompts)) as pool:  # all at once: the engine batches them
        results = list(pool.map(lambda p: _right(client, model, p), prompts))
    return sum(f for f, _ in results), sum(r for _, r in results)


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
        hyperparameters={"n_epochs": EPOCHS, "batch_size": 4, "learning_rate_multiplier": 0.5},
        extra_body={"extensions": {"lora_rank": 16, "lora_alpha": 32}},
    )
    job, _ = wait_job(client, job.id, timeout=600)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model

    held_out = ft_held_out_prompts()
    tuned_function, tuned_right = _counts(client, job.fine_tuned_model, held_out)
    base_function, base_right = _counts(client, "ftserve-tiny", held_out)
    print(f"held-out of {len(held_out)}: fine-tuned {tuned_function} right function, {tuned_right} right call; "
          f"base {base_function}, {base_right}")  # fmt: skip
    assert tuned_function >= 0.9 * len(held_out)
    assert tuned_right >= 0.9 * len(held_out)
    assert base_function == base_right == 0
