"""The inference engine in-process with real trained adapters: mixed-adapter batches, LRU limits, load failures."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from prometheus_client import REGISTRY

from ftserve.core.config import Settings
from ftserve.core.resolved import ResolvedModel
from ftserve.core.storage import Storage
from ftserve.engine import lora
from ftserve.engine.engine import ModelRef
from ftserve.engine.errors import AdapterLoadError, GenerationFailed
from ftserve.engine.generation import Listener, Row, RowEvent, TextDelta
from ftserve.engine.sampling import Sampling
from ftserve.models.bases import load_base
from ftserve.serving.refs import model_ref
from tests.inference_adapters import ANIMALS, BASE, COLORS, SOUNDS, SettingsEngine, prompt, train_adapter

SOUNDS_MODEL = ResolvedModel("ft:sounds", BASE, "ftjob-sounds")
COLORS_MODEL = ResolvedModel("ft:colors", BASE, "ftjob-colors")
BASE_MODEL = ResolvedModel(BASE, BASE)


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory: pytest.TempPathFactory, bases_dir: Path) -> Path:
    """A data dir holding two adapters trained on different mappings of the same prompts."""
    data = tmp_path_factory.mktemp("adapters")
    settings = Settings(data_dir=data, bases_dir=bases_dir)
    train_adapter(settings, "ftjob-sounds", SOUNDS, seed=1)
    train_adapter(settings, "ftjob-colors", COLORS, seed=2)
    return data


@contextmanager
def _engine(adapters_dir: Path, bases_dir: Path, **kw: object) -> Iterator[SettingsEngine]:
    settings = Settings(data_dir=adapters_dir, bases_dir=bases_dir, **kw)  # type: ignore[arg-type]
    engine = SettingsEngine(settings)
    yield engine
    engine.close()


@pytest.fixture()
def engine(adapters_dir: Path, bases_dir: Path) -> Iterator[SettingsEngine]:
    # A wide window makes requests submitted one after another share one prefill.
    with _engine(adapters_dir, bases_dir, batch_window_ms=300) as e:
        yield e


def _rows(engine: SettingsEngine, max_tokens: int = 8) -> list[Row]:
    tok = engine.tokenizer(BASE)
    return [Row(tok(prompt(a))["input_ids"], Sampling(max_tokens=max_tokens, temperature=0)) for a in ANIMALS]


def _ref(engine: SettingsEngine, model: ResolvedModel) -> ModelRef:
    return model_ref(model, Storage(engine.settings))


def _texts(engine: SettingsEngine, model: ResolvedModel) -> list[str]:
    rows = _rows(engine)
    engine.run(_ref(engine, model), rows)
    return [r.text for r in rows]


def _run_together(engine: SettingsEngine, requests: list[tuple[ResolvedModel, list[Row]]]) -> None:
    """Submit every request at once (so they can share a prefill) and wait until all have finished."""
    finished = threading.Event()
    left = [len(requests)]

    def done(error: BaseException | None) -> None:
        assert error is None
        left[0] -= 1
        if left[0] == 0:
            finished.set()

    for model, rows in requests:
        engine.submit(_ref(engine, model), rows, done)
    assert finished.wait(120)


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@pytest.mark.parametrize("layout", ["stacked", "slot-major"])
def test_two_adapters_in_one_batch_match_their_single_outputs(
    engine: SettingsEngine, layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two adapters take the stacked layout; with the threshold lowered they take the slot-major one.
    if layout == "slot-major":
        monkeypatch.setattr(lora, "SLOT_MAJOR_COLUMNS", 0)
    layouts: list[tuple[int, str]] = []
    real_set = lora.LoraContext.set

    def recording_set(ctx: lora.LoraContext, slots: list[int]) -> None:
        real_set(ctx, slots)
        kind = "slot-major" if ctx.rows is not None else "stacked" if ctx.active is not None else "-"
        layouts.append((len(slots), kind))

    monkeypatch.setattr(lora.LoraContext, "set", recording_set)
    single = {m.name: _texts(engine, m) for m in (SOUNDS_MODEL, COLORS_MODEL, BASE_MODEL)}
    assert single["ft:sounds"] == [f" {SOUNDS[a]}" for a in ANIMALS]
    assert single["ft:colors"] == [f" {COLORS[a]}" for a in ANIMALS]

    jobs = {m.name: _rows(engine) for m in (SOUNDS_MODEL, COLORS_MODEL, BASE_MODEL)}
    # Different lengths too: a row that finishes early leaves while the others go on.
    jobs[BASE] = _rows(engine, max_tokens=24)
    _run_together(engine, [(m, jobs[m.name]) for m in (SOUNDS_MODEL, COLORS_MODEL, BASE_MODEL)])
    prefills = engine.scheduler.prefills
    assert (3 * len(ANIMALS), 3) in prefills, prefills  # one prefill: 24 rows of 3 different models
    assert [r.text for r in jobs["ft:sounds"]] == single["ft:sounds"]
    assert [r.text for r in jobs["ft:colors"]] == single["ft:colors"]
    assert [r.text[: len(s)] for r, s in zip(jobs[BASE], single[BASE], strict=True)] == single[BASE]
    assert all(r.finish_reason == "stop" for r in jobs["ft:sounds"] + jobs["ft:colors"])
    assert (3 * len(ANIMALS), layout) in layouts, layouts  # the shared prefill ran in the layout under test


def test_slot_lora_matches_peft(engine: SettingsEngine, adapters_dir: Path, bases_dir: Path) -> None:
    """The server's own multi-adapter LoRA layers compute what PEFT computes for the same adapter."""
    model, tok = load_base(Settings(data_dir=adapters_dir, bases_dir=bases_dir), BASE, torch.device("cpu"))
    peft = PeftModel.from_pretrained(model, str(adapters_dir / "jobs" / "ftjob-colors" / "final"))
    ids = tok([prompt(a) for a in ANIMALS[:1]], return_tensors="pt")
    with torch.inference_mode():
        expected = peft(**ids).logits[0, -1]
    row = Row(ids["input_ids"][0].tolist(), Sampling(max_tokens=1, temperature=0, logprobs=5))
    engine.run(_ref(engine, COLORS_MODEL), [row])
    top = torch.log_softmax(expected.float(), -1).topk(5)
    got = row.top_logprobs[0]
    assert list(got) == top.indices.tolist()
    assert torch.allclose(torch.tensor(list(got.values())), top.values, atol=1e-4)


@pytest.mark.parametrize("limits", [{"adapter_cache_size": 1}, {"adapter_cache_bytes": 1}])
def test_lru_evicts_and_reloads(adapters_dir: Path, bases_dir: Path, limits: dict[str, int]) -> None:
    with _engine(adapters_dir, bases_dir, **limits) as engine:
        evictions, loads = _metric("ftserve_adapter_evictions_total"), _metric("ftserve_adapter_loads_total")
        for model in (SOUNDS_MODEL, COLORS_MODEL, SOUNDS_MODEL, COLORS_MODEL):
            expected = SOUNDS if model is SOUNDS_MODEL else COLORS
            assert _texts(engine, model) == [f" {expected[a]}" for a in ANIMALS]
        assert _metric("ftserve_adapter_loads_total") - loads == 4
        assert _metric("ftserve_adapter_evictions_total") - evictions == 3
        assert len(engine.resident(BASE).adapters.entries) == 1


def test_unload_then_serve_again(engine: SettingsEngine) -> None:
    assert _texts(engine, SOUNDS_MODEL)[0] == " meow"
    cache = engine.resident(BASE).adapters
    assert set(cache.entries) == {"ftjob-sounds-final"}
    engine.unload(BASE, "ftjob-sounds-final")
    assert _texts(engine, BASE_MODEL)  # the unload is processed before this request
    assert not cache.entries
    assert all(not layer.present for layer in cache.table.layers.values())


def test_corrupt_adapter_fails_only_its_requests(adapters_dir: Path, bases_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for job in ("ftjob-sounds", "ftjob-colors"):
        shutil.copytree(adapters_dir / "jobs" / job, data / "jobs" / job)
    (data / "jobs" / "ftjob-colors" / "final" / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with _engine(data, bases_dir, batch_window_ms=200) as engine:
        results: dict[str, BaseException | None] = {}
        both = threading.Event()
        good, bad = _rows(engine), _rows(engine)

        def record(name: str, error: BaseException | None) -> None:
            results[name] = error
            if len(results) == 2:
                both.set()

        engine.submit(_ref(engine, COLORS_MODEL), bad, partial(record, "colors"))
        engine.submit(_ref(engine, SOUNDS_MODEL), good, partial(record, "sounds"))
        assert both.wait(120)
        assert results["sounds"] is None
        assert [r.text for r in good] == [f" {SOUNDS[a]}" for a in ANIMALS]
        error = results["colors"]
        assert isinstance(error, AdapterLoadError) and error.code == "adapter_load_failed"
        assert "ft:colors" in error.message
        with pytest.raises(AdapterLoadError):  # a later request tries again and fails the same way
            engine.run(_ref(engine, COLORS_MODEL), _rows(engine))


def _raise(*_: object) -> bool:
    raise RuntimeError("injected fault")


def _raise_on(index: int) -> Listener:
    """A listener that raises on the text of choice `index`."""

    def listen(event: RowEvent) -> None:
        if isinstance(event, TextDelta) and event.index == index:
            raise RuntimeError("injected fault")

    return listen


def test_a_failing_row_fails_only_its_request(engine: SettingsEngine) -> None:
    """Faults injected into single rows of one mixed prefill (three models): each fails its own request alone,
    and every neighbour finishes with exactly its single-request output."""
    single = {m.name: _texts(engine, m) for m in (SOUNDS_MODEL, COLORS_MODEL, BASE_MODEL)}
    tok = engine.tokenizer(BASE)
    vocab = engine.resident(BASE).model.config.vocab_size
    ids = tok(prompt("cat"))["input_ids"]

    def one(**sampling: object) -> list[Row]:
        return [Row(list(ids), Sampling(max_tokens=8, **sampling))]  # type: ignore[arg-type]

    callback, cancel_check, siblings = one(temperature=0), one(temperature=0), one(temperature=0) + one(temperature=0)
    watch: dict[str, tuple[Listener | None, Callable[[], bool] | None]] = {
        "callback": (_raise_on(0), None),  # a listener that raises mid-generation
        "cancel check": (None, _raise),
        "sibling": (_raise_on(1), None),  # one row of an n=2 request: the request fails, its other row stops
    }
    out_of_vocab = [Row([*ids, vocab + 5], Sampling(max_tokens=8, temperature=0))]  # breaks the prefill pass
    faulty = {
        "sampling": (SOUNDS_MODEL, one(temperature=1.0, logit_bias=((vocab + 7, 1.0),))),
        "stop string": (COLORS_MODEL, one(temperature=0, stop=(b"not text",))),
        "callback": (BASE_MODEL, callback),
        "cancel check": (SOUNDS_MODEL, cancel_check),
        "sibling": (COLORS_MODEL, siblings),
        "forward pass": (BASE_MODEL, out_of_vocab),
    }
    normal = {m.name: (m, _rows(engine)) for m in (SOUNDS_MODEL, COLORS_MODEL, BASE_MODEL)}
    # Valid but extreme: a nucleus that rounds to nothing in float32 must still sample (the top token).
    tiny_top_p = (SOUNDS_MODEL, [Row(r.prompt_ids, Sampling(max_tokens=8, temperature=1.0, top_p=1e-50))
                                 for r in _rows(engine)])  # fmt: skip
    jobs = {**faulty, **normal, "tiny top_p": tiny_top_p}
    results: dict[str, BaseException | None] = {}
    finished = threading.Event()

    def record(name: str, error: BaseException | None) -> None:
        results[name] = error
        if len(results) == len(jobs):
            finished.set()

    for name, (model, rows) in jobs.items():
        listen, cancelled = watch.get(name, (None, None))
        engine.submit(_ref(engine, model), rows, partial(record, name), listen, cancelled)
    assert finished.wait(120), results
    assert (sum(len(rows) for _, rows in jobs.values()), 3) in engine.scheduler.prefills  # one shared prefill
    for name in faulty:
        assert isinstance(results[name], GenerationFailed), (name, results[name])
    for name, (_, rows) in normal.items():
        assert results[name] is None, results[name]
        assert [r.text for r in rows] == single[name], name
    assert results["tiny top_p"] is None
    assert [r.text for r in tiny_top_p[1]] == single["ft:sounds"]
    assert siblings[0].was_cancelled and len(siblings[0].token_ids) < 8  # stopped, not run to the end
    # The engine goes on serving afterwards.
    assert _texts(engine, SOUNDS_MODEL) == single["ft:sounds"]


def test_background_rows_join_a_running_batch_in_groups(adapters_dir: Path, bases_dir: Path) -> None:
    """Batch API rows (background) are prefilled into a running batch several at a time, never one by one,
    and generate exactly what they generate as ordinary requests."""
    with _engine(adapters_dir, bases_dir, max_batch_rows=16) as engine:
        tok = engine.tokenizer(BASE)
        ref = _ref(engine, SOUNDS_MODEL)

        def rows() -> list[Row]:  # different lengths: rows leave the batch at different steps
            return [
                Row(tok(prompt(a))["input_ids"], Sampling(max_tokens=2 + i % 7, temperature=0))
                for i, a in enumerate(ANIMALS * 5)
            ]

        plain = rows()
        engine.run(ref, plain)
        background, left = rows(), threading.Event()
        remaining = [len(background)]

        def done(error: BaseException | None) -> None:
            assert error is None
            remaining[0] -= 1
            if remaining[0] == 0:
                left.set()

        for row in background:
            engine.submit(ref, [row], done, background=True)
        assert left.wait(120)
        assert [r.text for r in background] == [r.text for r in plain]
        joins = [admitted for admitted, running in engine.scheduler.admissions if running]
        # Only the last rows left waiting may join fewer at a time than the group.
        assert len(joins) > 2 and min(joins[:-1]) >= engine.scheduler.min_group == 2, engine.scheduler.admissions


def test_rows_with_one_prompt_share_its_prefill(engine: SettingsEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt sampled several times (a request's `n`, a reinforcement group) is prefilled once per adapter; each
    row then samples on its own: the same text as that row run alone."""
    tok = engine.tokenizer(BASE)
    ids = tok(prompt(ANIMALS[0]))["input_ids"]

    def rows() -> list[tuple[ResolvedModel, Row]]:
        return [
            (model, Row(list(ids), Sampling(max_tokens=12, temperature=1.0, seed=seed)))
            for model, seed in ((BASE_MODEL, 1), (BASE_MODEL, 2), (BASE_MODEL, 3), (COLORS_MODEL, 1))
        ]

    alone = []
    for model, row in rows():
        engine.run(_ref(engine, model), [row])
        alone.append(row.text)
    assert len(set(alone[:3])) > 1  # three seeds, three draws: not one text copied

    passes: list[int] = []
    real_set = lora.LoraContext.set

    def recording_set(ctx: lora.LoraContext, slots: list[int]) -> None:
        real_set(ctx, slots)
        passes.append(len(slots))

    monkeypatch.setattr(lora.LoraContext, "set", recording_set)
    together = rows()
    _run_together(engine, [(BASE_MODEL, [r for _, r in together[:3]]), (COLORS_MODEL, [together[3][1]])])
    assert engine.scheduler.prefills[-1] == (4, 2), engine.scheduler.prefills  # four rows admitted together…
    assert passes[0] == 2, passes  # …in one pass of two rows: one per (prompt, adapter)
    assert [r.text for _, r in together] == alone
