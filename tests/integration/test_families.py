"""Every supported family (Phi-2, Phi-3, Qwen2, Llama, GPT-2, GPT-NeoX, and StarCoder via the fallback) trains
through the real pipeline, changes only LoRA weights, reloads in plain peft, serves through a real server,
and stops generating exactly where its training data stopped."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import torch
from openai import OpenAI
from openai.types.fine_tuning import FineTuningJob
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from ftserve.core.config import Settings, get_settings
from ftserve.core.datasets.formats import Chat, Message, PromptCompletion
from ftserve.core.storage import Storage
from ftserve.engine.detokenize import decode_reply
from ftserve.models.families import TARGET_MODULES
from ftserve.models.special_tokens import stop_token_ids
from ftserve.training import pipeline
from ftserve.training.tokenize import tokenize_example
from ftserve.worker import gang
from tests.e2e.conftest import ANIMALS, animal_prompt
from tests.family_models import BY_NAME, FAMILIES, Family, build_all, registry_json
from tests.servers import FTSERVE, Proc, Service, base_env, free_port, wait_http

CHAT_FAMILIES = [f for f in FAMILIES if f.chat_template]
# Six mappings, each ten times: five 12-example steps per epoch, and 6 epochs (30 steps) are enough for each
# tiny random model to memorise them (more epochs would spend the time on per-epoch checkpoints).
PAIRS = ANIMALS[:6]
CHAT_PAIRS = ANIMALS[:4]  # chat prompts are longer (template markup): fewer mappings to learn in as many steps
COPIES = 10


@dataclass
class FamilyStack:
    """Settings shared by this process (which trains) and the server (which creates jobs and serves)."""

    settings: Settings
    service: Service
    client: OpenAI
    paths: dict[str, Path]


@pytest.fixture(scope="module")
def family_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FamilyStack]:
    """`ftserve api --with-inference` (no worker: the test runs the worker's run_job itself)."""
    from ftserve.control.db.migrate import upgrade_head

    root = tmp_path_factory.mktemp("families")
    paths = build_all(root / "models")
    data = root / "data"
    data.mkdir()
    env = base_env(data, root / "bases", FTSERVE_BASE_MODELS=registry_json(paths), FTSERVE_PREPARE_BASES="[]")
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith("FTSERVE_"):
                mp.delenv(key)
        for key, value in env.items():
            if key.startswith("FTSERVE_"):
                mp.setenv(key, value)
        get_settings.cache_clear()
        settings = get_settings()
        upgrade_head(settings.resolved_database_url())
        port = free_port()
        api = Proc([*FTSERVE, "api", "--with-inference", "--port", str(port)], env, data / "api.log")
        service = Service(f"http://127.0.0.1:{port}", [api], env)
        try:
            wait_http(f"{service.base_url}/health", [api])
            client = OpenAI(base_url=f"{service.base_url}/v1", api_key="anything", max_retries=0, timeout=120)
            yield FamilyStack(settings, service, client, paths)
        finally:
            service.stop()
    get_settings.cache_clear()


def _tokenizer(path: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(path))


def _write(path: Path, lines: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines * COPIES))
    return path


def _train(stack: FamilyStack, family: Family, training_file: str, suffix: str, epochs: int = 6) -> FineTuningJob:
    """Create the job through the api, run the real pipeline on it here, return the finished job."""
    job = stack.client.fine_tuning.jobs.create(
        training_file=training_file,
        model=family.name,
        suffix=suffix,
        seed=3,
        hyperparameters={"n_epochs": epochs, "batch_size": 12},
    )
    gang.run_job(job.id, stack.settings)
    done = stack.client.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded", done.error
    return done


# Architectures deliberately absent from the table, and every linear layer but the head they fall back to.
_FALLBACK = {
    "gpt_bigcode": ("c_attn", "c_proj", "c_fc"),
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
}


def _expected_targets(family: Family) -> set[str]:
    return set(TARGET_MODULES.get(family.model_type) or _FALLBACK[family.model_type])


def _trained_spans(ex_ids: list[int], weights: list[float]) -> list[list[int]]:
    spans: list[list[int]] = []
    for i, (t, w) in enumerate(zip(ex_ids, weights, strict=True)):
        if w:
            if not i or not weights[i - 1]:
                spans.append([])
            spans[-1].append(t)
    return spans


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_prompt_completion_mask_ends_with_a_stop_token(family_stack: FamilyStack, family: Family) -> None:
    from ftserve.models.bases import load_base

    model, tok = load_base(family_stack.settings, family.name, torch.device("cpu"))
    assert tok.pad_token_id is not None  # families without a pad token get one for batching
    ex = tokenize_example(tok, PromptCompletion("The cat says:", " meow"), prompt_loss_weight=0.0)
    prompt_ids = tok("The cat says:")["input_ids"]
    completion_ids = tok(" meow", add_special_tokens=False)["input_ids"]
    assert ex.input_ids == prompt_ids + completion_ids + [tok.eos_token_id]
    assert ex.weights == [0.0] * len(prompt_ids) + [1.0] * (len(completion_ids) + 1)
    # BOS where the family adds one (Llama 3), and never a stray one where it does not (GPT-2, Phi-2).
    assert (ex.input_ids[0] == tok.bos_token_id) == family.add_bos
    assert ex.input_ids[-1] in stop_token_ids(model.generation_config, tok)


@pytest.mark.parametrize("family", CHAT_FAMILIES, ids=lambda f: f.name)
def test_chat_mask_ends_each_turn_with_the_end_of_turn_token(family_stack: FamilyStack, family: Family) -> None:
    from ftserve.models.bases import load_base

    model, tok = load_base(family_stack.settings, family.name, torch.device("cpu"))
    chat = Chat(
        (
            Message("user", "What does the cat say?"),
            Message("assistant", "meow"),
            Message("user", "What does the dog say?"),
            Message("assistant", "woof"),
        )
    )
    ex = tokenize_example(tok, chat, prompt_loss_weight=0.0)
    msgs = [{"role": m.role, "content": m.content} for m in chat.messages]
    # The tokens are the rendered conversation's own tokens (Phi-3's closing EOS included, untrained).
    assert ex.input_ids == tok(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"]
    assert family.end_of_turn is not None
    eot = tok.convert_tokens_to_ids(family.end_of_turn)
    spans = _trained_spans(ex.input_ids, ex.weights)
    assert [tok.decode(s) for s in spans] == [f"meow{family.end_of_turn}", f"woof{family.end_of_turn}"]
    assert all(s[-1] == eot for s in spans)
    # The generation config may lack the end-of-turn token (tiny-phi3's does): the stop set has it anyway.
    assert eot in stop_token_ids(model.generation_config, tok)


def test_template_without_end_of_turn_token_trains_eos_after_each_turn(family_stack: FamilyStack) -> None:
    tok = _tokenizer(family_stack.paths["tiny-gpt2"])
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    chat = Chat((Message("user", "What does the cat say?"), Message("assistant", "meow")))
    ex = tokenize_example(tok, chat, prompt_loss_weight=0.0)
    assert [tok.decode(s) for s in _trained_spans(ex.input_ids, ex.weights)] == ["meow<|endoftext|>"]


def test_chat_file_on_a_base_without_chat_template_is_refused_at_creation(
    family_stack: FamilyStack, tmp_path: Path
) -> None:
    client = family_stack.client
    lines = [
        {"messages": [{"role": "user", "content": animal_prompt(a)}, {"role": "assistant", "content": s}]}
        for a, s in ANIMALS
    ]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    f = client.files.create(file=(tmp_path / "chat.jsonl").open("rb"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(training_file=f.id, model="tiny-phi")
    body = err.value.body
    assert isinstance(body, dict) and body["code"] == "chat_not_supported" and body["param"] == "training_file"
    assert "tiny-phi" in body["message"] and "chat template" in body["message"]
    # The same file trains a base that has one.
    assert client.fine_tuning.jobs.create(training_file=f.id, model="tiny-qwen2").status == "queued"


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_family_trains_only_lora_reloads_in_peft_and_stops_where_training_stopped(
    family_stack: FamilyStack, family: Family, tmp_path: Path
) -> None:
    stack, path = family_stack, family_stack.paths[family.name]
    client = stack.client
    uploaded = client.files.create(
        file=_write(
            tmp_path / "train.jsonl", [{"prompt": animal_prompt(a), "completion": f" {s}"} for a, s in PAIRS]
        ).open("rb"),
        purpose="fine-tune",
    )
    job = _train(stack, family, uploaded.id, "animals")
    name = job.fine_tuned_model
    assert name is not None

    # The job says which layers LoRA wrapped, and warns when the architecture was not in the table.
    events = {e.message: e for e in client.fine_tuning.jobs.list_events(job.id, limit=100)}
    [target_event] = [e for m, e in events.items() if m.startswith(("LoRA target modules", "Architecture"))]
    assert set(target_event.data["target_modules"]) == _expected_targets(family)  # type: ignore[index]
    assert target_event.level == ("info" if family.model_type in TARGET_MODULES else "warn")

    # Only LoRA weights changed: the base left in the worker's cache is bit-identical to the one on disk,
    # and the adapter holds nothing but LoRA A/B matrices of the expected layers, all B matrices trained.
    cached, _ = pipeline._BASES[family.name]
    fresh = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    before, after = fresh.state_dict(), cached.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    adapter_dir = Storage(stack.settings).adapter_dir(job.id, None)
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    assert tensors and all(".lora_A." in k or ".lora_B." in k for k in tensors)
    assert {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in tensors} == _expected_targets(family)
    assert all(bool(t.abs().sum() > 0) for k, t in tensors.items() if ".lora_B." in k)

    # The adapter reloads in plain peft and gives the logits the server serves.
    tok = _tokenizer(path)
    tuned = PeftModel.from_pretrained(fresh, str(adapter_dir)).eval()
    prompt = animal_prompt(PAIRS[0][0])
    with torch.no_grad():
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        logprobs = torch.log_softmax(tuned(input_ids=ids).logits[0, -1].float(), -1)
        with tuned.disable_adapter():
            base_logprobs = torch.log_softmax(tuned(input_ids=ids).logits[0, -1].float(), -1)
    served = client.completions.create(model=name, prompt=prompt, max_tokens=1, temperature=0, logprobs=5)
    lp = served.choices[0].logprobs
    assert lp is not None and lp.top_logprobs is not None
    top = logprobs.topk(5)
    ours = {tok.decode([int(i)]): float(v) for v, i in zip(top.values, top.indices, strict=True)}
    assert set(lp.top_logprobs[0]) == set(ours)
    assert all(abs(lp.top_logprobs[0][t] - ours[t]) < 1e-4 for t in ours)
    assert float((logprobs - base_logprobs).abs().max()) > 1.0  # the adapter is not a no-op

    # Greedy generation gives each trained completion and stops at the trained end token, not at max_tokens.
    prompts = [animal_prompt(a) for a, _ in PAIRS]
    out = client.completions.create(model=name, prompt=prompts, max_tokens=8, temperature=0)
    got = sorted(out.choices, key=lambda c: c.index)
    assert [c.text for c in got] == [f" {s}" for _, s in PAIRS]
    assert [c.finish_reason for c in got] == ["stop"] * len(PAIRS)


# Phi-3's <|end|> is missing from its generation config; Llama 3's <|eot_id|> follows a BOS-led template.
# (ChatML's <|im_end|> is served the same way by the ftserve-tiny end-to-end tests.)
@pytest.mark.parametrize("family", [BY_NAME["tiny-phi3"], BY_NAME["tiny-llama"]], ids=lambda f: f.name)
def test_chat_model_stops_at_its_end_of_turn_token(family_stack: FamilyStack, family: Family, tmp_path: Path) -> None:
    client = family_stack.client
    lines: list[dict[str, object]] = [
        {"messages": [{"role": "user", "content": f"What does the {a} say?"}, {"role": "assistant", "content": s}]}
        for a, s in CHAT_PAIRS
    ]
    uploaded = client.files.create(file=_write(tmp_path / "chat.jsonl", lines).open("rb"), purpose="fine-tune")
    job = _train(family_stack, family, uploaded.id, "chat", epochs=8)  # 4 steps an epoch
    assert job.fine_tuned_model is not None
    for animal, sound in CHAT_PAIRS:
        reply = client.chat.completions.create(
            model=job.fine_tuned_model,
            messages=[{"role": "user", "content": f"What does the {animal} say?"}],
            max_tokens=8,
            temperature=0,
        )
        assert reply.choices[0].message.content == sound
        assert reply.choices[0].finish_reason == "stop"


def test_target_modules_extension_overrides_the_table(family_stack: FamilyStack, tmp_path: Path) -> None:
    client = family_stack.client
    lines: list[dict[str, object]] = [{"prompt": animal_prompt(a), "completion": f" {s}"} for a, s in PAIRS]
    uploaded = client.files.create(file=_write(tmp_path / "train.jsonl", lines).open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        training_file=uploaded.id,
        model="tiny-llama",
        hyperparameters={"n_epochs": 1},
        extra_body={"extensions": {"target_modules": ["q_proj", "v_proj"]}},
    )
    gang.run_job(job.id, family_stack.settings)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert "LoRA target modules (from extensions.target_modules): q_proj, v_proj" in messages
    tensors = load_file(str(Storage(family_stack.settings).adapter_dir(job.id, None) / "adapter_model.safetensors"))
    assert {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in tensors} == {"q_proj", "v_proj"}

    bad = client.fine_tuning.jobs.create(
        training_file=uploaded.id, model="tiny-gpt2", extra_body={"extensions": {"target_modules": ["q_proj"]}}
    )
    gang.run_job(bad.id, family_stack.settings)
    failed = client.fine_tuning.jobs.retrieve(bad.id)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "invalid_target_modules" and "c_attn" in failed.error.message


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_reply_text_keeps_its_leading_space(family_stack: FamilyStack, family: Family) -> None:
    tok = _tokenizer(family_stack.paths[family.name])
    prompt = tok("The cat says:")["input_ids"]
    reply = tok(" meow", add_special_tokens=False)["input_ids"]
    assert decode_reply(tok, prompt, reply) == " meow"
    # What decoding the reply alone gives: SentencePiece-style pieces lose the space (Phi-3 here).
    assert (tok.decode(reply) == "meow") == family.sentencepiece
