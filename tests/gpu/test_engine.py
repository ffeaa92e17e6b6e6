"""The inference engine on the check's device, the base in bf16: a batch mixing two adapters and the base gives each
adapter's rows exactly PEFT's merged-adapter greedy output, and a json_schema-constrained row sharing the batch
yields JSON its schema accepts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from ftserve.core.config import Settings
from ftserve.core.resolved import ResolvedModel
from ftserve.core.storage import Storage
from ftserve.engine.engine import ModelRef
from ftserve.engine.generation import Row
from ftserve.engine.sampling import Sampling
from ftserve.models.bases import load_base
from ftserve.models.special_tokens import stop_token_ids
from ftserve.serving.refs import model_ref
from tests.gpu.target import Target
from tests.inference_adapters import ANIMALS, BASE, COLORS, SOUNDS, SettingsEngine, prompt, train_adapter
from tests.integration.test_constrained_decoding import PET, Pet, _run_together

pytestmark = pytest.mark.gpu
ADAPTERS = {
    "ftjob-sounds": ResolvedModel("ft:sounds", BASE, "ftjob-sounds"),
    "ftjob-colors": ResolvedModel("ft:colors", BASE, "ftjob-colors"),
}
MAX_TOKENS = 8


def _settings(target: Target, data: Path, bases_dir: Path, **kw: object) -> Settings:
    settings = Settings(data_dir=data, bases_dir=bases_dir, **kw)  # type: ignore[arg-type]
    settings.base_models[BASE].dtype = target.dtype
    return settings


@pytest.fixture(scope="module")
def adapters_dir(target: Target, tmp_path_factory: pytest.TempPathFactory, bases_dir: Path) -> Path:
    """Two adapters trained (on the CPU, as tests/integration/test_inference_engine.py trains them) on different
    mappings of the same prompts; on a GPU machine's fast CPU as long as that test trains them (wider margins for
    bf16 to keep the greedy answers), shorter in the dry mode."""
    epochs = 10 if target.dry else 30
    data = tmp_path_factory.mktemp("gpu-adapters")
    settings = Settings(data_dir=data, bases_dir=bases_dir)
    train_adapter(settings, "ftjob-sounds", SOUNDS, seed=1, epochs=epochs)
    train_adapter(settings, "ftjob-colors", COLORS, seed=2, epochs=epochs)
    return data


@pytest.fixture(scope="module")
def engine(target: Target, adapters_dir: Path, bases_dir: Path) -> Iterator[SettingsEngine]:
    # A wide window: requests submitted one after another share one prefill, then every decode step.
    settings = _settings(target, adapters_dir, bases_dir, batch_window_ms=300)
    e = SettingsEngine(settings)
    assert e.device.type == target.device.type
    yield e
    e.close()


def _rows(engine: SettingsEngine, animals: list[str], **sampling: object) -> list[Row]:
    tok = engine.tokenizer(BASE)
    return [Row(tok(prompt(a))["input_ids"], Sampling(**sampling)) for a in animals]  # type: ignore[arg-type]


def _generated(row: Row) -> list[int]:
    """The row's tokens with the stop token that ended it, as `generate` returns them."""
    return row.token_ids + ([row.stop_token] if row.stop_token is not None else [])


def _merged_greedy(settings: Settings, target: Target, job: str, animals: list[str]) -> list[list[int]]:
    """PEFT's answer: the adapter merged into a fresh copy of the base on the device, greedy `generate`."""
    base, tok = load_base(settings, BASE, target.device)
    merged = PeftModel.from_pretrained(base, str(Storage(settings).adapter_dir(job, None))).merge_and_unload()
    merged.eval()
    stops = sorted(stop_token_ids(merged.generation_config, tok))  # type: ignore[arg-type]
    out = []
    for animal in animals:
        ids = tok(prompt(animal), return_tensors="pt").to(target.device)
        with torch.inference_mode():
            gen = merged.generate(  # type: ignore[operator]
                **ids, max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=stops, pad_token_id=tok.pad_token_id
            )
        out.append(gen[0, ids["input_ids"].shape[1] :].tolist())
    return out


def test_a_multi_adapter_batch_matches_peft_merged_greedy(
    target: Target, engine: SettingsEngine, adapters_dir: Path, bases_dir: Path
) -> None:
    storage = Storage(engine.settings)
    jobs = [
        (model_ref(m, storage), _rows(engine, ANIMALS, max_tokens=MAX_TOKENS, temperature=0)) for m in ADAPTERS.values()
    ]
    jobs.append((ModelRef(BASE, BASE), _rows(engine, ANIMALS, max_tokens=MAX_TOKENS, temperature=0)))
    before = len(engine.scheduler.prefills)
    _run_together(engine, jobs)
    assert list(engine.scheduler.prefills)[before:] == [(3 * len(ANIMALS), 3)], "one prefill: 3 models' rows"
    settings = _settings(target, adapters_dir, bases_dir)
    for job, (_, rows) in zip(ADAPTERS, jobs, strict=False):
        assert [_generated(r) for r in rows] == _merged_greedy(settings, target, job, ANIMALS), job
        assert all(r.finish_reason == "stop" for r in rows)
    assert [r.text for r in jobs[0][1]] == [f" {SOUNDS[a]}" for a in ANIMALS]
    assert [r.text for r in jobs[1][1]] == [f" {COLORS[a]}" for a in ANIMALS]


def test_a_constrained_row_in_a_mixed_batch_is_schema_valid(engine: SettingsEngine) -> None:
    storage = Storage(engine.settings)
    sounds = model_ref(ADAPTERS["ftjob-sounds"], storage)
    alone = _rows(engine, ["dog"], max_tokens=12, temperature=0)
    engine.run(sounds, alone)

    free = _rows(engine, ["dog"], max_tokens=12, temperature=0)
    constrained = _rows(engine, ["cow"], max_tokens=60, temperature=0, constraint=PET)
    constrained_adapter = _rows(engine, ["cow"], max_tokens=60, temperature=0, constraint=PET)
    before = len(engine.scheduler.prefills)
    _run_together(engine, [(ModelRef(BASE, BASE), constrained), (sounds, free + constrained_adapter)])
    assert list(engine.scheduler.prefills)[before:] == [(3, 2)], "all three rows (two models) in one prefill"
    assert (free[0].text, free[0].token_ids) == (alone[0].text, alone[0].token_ids) == (" woof", alone[0].token_ids)
    for row in constrained + constrained_adapter:
        assert row.finish_reason == "stop", row.text
        Pet.model_validate_json(row.text)
