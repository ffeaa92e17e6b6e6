"""The dashboard in a real headless Chromium against a real `ftserve up` with real ftserve-tiny jobs."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from playwright.sync_api import Browser, Page, sync_playwright

from tests.e2e.conftest import ANIMALS, client_for, wait_job, write_prompt_completion
from tests.preference_data import STYLE, WORDS, question, write_pairs
from tests.rft_data import MULTI, TINY_EXTENSIONS, metrics, rft, upload_prompts
from tests.rft_data import WORDS as RFT_WORDS
from tests.servers import FTSERVE, ROOT, Service, start_embedded

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# `FTSERVE_DOCS_SCREENSHOTS=docs/img pytest tests/e2e/test_dashboard.py` refreshes the README's screenshots.
SHOTS = os.environ.get("FTSERVE_DOCS_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is required for the dashboard tests: `make system-deps` (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def shot(page: Page, tmp_path: Path, name: str) -> None:
    target = Path(SHOTS) / name if SHOTS else tmp_path / name
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size < 500_000


@pytest.fixture(scope="module")
def trained(embedded: Service, tmp_path_factory: pytest.TempPathFactory) -> tuple[OpenAI, str]:
    """One job with a validation file, run to success: 10 epochs × 3 steps on ftserve-tiny."""
    client = client_for(embedded)
    data = write_prompt_completion(tmp_path_factory.mktemp("data") / "train.jsonl")
    train = client.files.create(file=data.open("rb"), purpose="fine-tune")
    valid = client.files.create(file=data.open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        training_file=train.id,
        validation_file=valid.id,
        model="ftserve-tiny",
        suffix="animals",
        seed=3,
        hyperparameters={"n_epochs": 10, "batch_size": 4},
    )
    return client, job.id


def chart_data(page: Page) -> list[list[Any]]:
    data: list[list[Any]] = page.evaluate("document.querySelector('#loss-chart').__uplot.data")
    return data


def test_job_page_chart_has_one_point_per_step(
    embedded: Service, trained: tuple[OpenAI, str], page: Page, tmp_path: Path
) -> None:
    client, job_id = trained
    # The jobs list updates itself: the row seen while the job is unfinished turns succeeded without a reload.
    page.goto(f"{embedded.base_url}/#/jobs")
    row = page.locator(f"#jobs tr[data-job='{job_id}']")
    row.wait_for()
    assert row.get_attribute("data-status") in ("validating_files", "queued", "running")
    page.wait_for_selector(f"#jobs tr[data-job='{job_id}'][data-status=succeeded]", timeout=180_000)
    page.click(f"#jobs a[href='#/jobs/{job_id}']")
    page.wait_for_selector("#job-status[data-status=succeeded]")
    page.wait_for_selector("#checkpoints")
    job, _ = wait_job(client, job_id)
    metrics = [e.data for e in client.fine_tuning.jobs.list_events(job_id, limit=100) if e.type == "metrics"]
    metrics.sort(key=lambda d: d["step"])  # type: ignore[index]
    assert len(metrics) == 30
    steps, train, valid = chart_data(page)
    assert steps == [m["step"] for m in metrics] == list(range(1, 31))  # type: ignore[index]
    assert train == pytest.approx([m["train_loss"] for m in metrics])  # type: ignore[index]
    assert valid == pytest.approx([m["valid_loss"] for m in metrics])  # type: ignore[index]
    assert page.get_attribute("#loss-chart", "data-points") == "30"
    assert page.locator("#loss-chart canvas").bounding_box()["width"] > 300  # type: ignore[index]
    assert "step 30/30" in page.inner_text("#progress-text")

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job_id))
    assert page.locator("#checkpoints tbody tr").count() == len(checkpoints) == 3
    assert page.locator("#checkpoints tbody tr").first.inner_text().startswith("30")
    assert "n_epochs" in page.inner_text("#hyperparameters") and "10" in page.inner_text("#hyperparameters")
    assert page.inner_text("#result-file").startswith(job.result_files[0])
    assert job.fine_tuned_model and job.fine_tuned_model in page.inner_text(".facts")
    assert "The job has successfully completed" in page.inner_text("#events")
    assert page.locator("#cancel").count() == 0
    assert page.inner_text("#job-method") == "supervised" and page.is_hidden("#margin-card")
    assert page.inner_text("#job-gang") == "1 process"  # a gang's job: "2 processes on 1 host" (job.gang)
    shot(page, tmp_path, "dashboard-job.png")
    with page.expect_download() as download:
        page.click("#result-file")
    assert download.value.path().read_text().startswith("step,")


def test_a_dpo_job_page_plots_the_reward_margin(
    embedded: Service, trained: tuple[OpenAI, str], page: Page, tmp_path: Path
) -> None:
    client, first = trained
    wait_job(client, first)  # one worker: let the first job finish so this one runs now
    pairs = client.files.create(file=write_pairs(tmp_path / "pairs.jsonl", WORDS[:12]).open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        training_file=pairs.id,
        validation_file=pairs.id,
        model="ftserve-tiny",
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 3, "batch_size": 4, "beta": 0.2}}},
    )
    page.goto(f"{embedded.base_url}/#/jobs/{job.id}")
    page.wait_for_selector("#job-status[data-status=succeeded]", timeout=180_000)
    page.wait_for_function("Number(document.querySelector('#margin-chart').dataset.points || 0) >= 9")
    metrics = sorted(
        (e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics" and e.data),
        key=lambda d: d["step"],
    )
    steps, train, valid = page.evaluate("document.querySelector('#margin-chart').__uplot.data")
    assert steps == [m["step"] for m in metrics] == list(range(1, 10))
    assert train == pytest.approx([m["train_reward_margin"] for m in metrics])
    assert valid == pytest.approx([m["valid_reward_margin"] for m in metrics])
    assert chart_data(page)[1] == pytest.approx([m["train_loss"] for m in metrics])
    assert page.is_visible("#margin-card") and page.inner_text("#job-method") == "dpo"
    assert "beta" in page.inner_text("#hyperparameters") and "0.2" in page.inner_text("#hyperparameters")
    assert "reward margin" in page.inner_text("#progress-text")


def test_a_reinforcement_job_page_plots_the_reward_beside_the_loss(
    embedded: Service, trained: tuple[OpenAI, str], page: Page, tmp_path: Path
) -> None:
    """A finished tiny RFT job with a multi grader: the reward chart, beside the loss chart, equals the steps'
    train_reward_mean, valid_reward_mean and each sub-grader's; the grader and the RFT hyperparameters are shown."""
    client, first = trained
    wait_job(client, first)  # one worker: let the first job finish so this one runs now
    train = upload_prompts(client, tmp_path / "train.jsonl", RFT_WORDS[:10])
    valid = upload_prompts(client, tmp_path / "valid.jsonl", RFT_WORDS[10:20])
    hp = {"n_epochs": 1, "batch_size": 5, "compute_multiplier": 0.5, "eval_interval": 2, "eval_samples": 2}
    job = client.fine_tuning.jobs.create(
        model="ftserve-tiny", training_file=train, validation_file=valid, method=rft(MULTI, **hp),
        extra_body=TINY_EXTENSIONS,
    )  # fmt: skip
    page.goto(f"{embedded.base_url}/#/jobs/{job.id}")
    page.wait_for_selector("#job-status[data-status=succeeded]", timeout=180_000)
    page.wait_for_function("Number(document.querySelector('#reward-chart').dataset.points || 0) >= 2")
    steps = metrics(client, job.id)
    assert [s["step"] for s in steps] == [1, 2]
    assert page.get_attribute("#reward-chart", "data-series") == (
        "train_reward_mean valid_reward_mean train_reward_mean_has_e train_reward_mean_close"
    )
    drawn, train_reward, valid_reward, has_e, close = page.evaluate(
        "document.querySelector('#reward-chart').__uplot.data"
    )
    assert drawn == [1, 2]
    assert train_reward == pytest.approx([s["train_reward_mean"] for s in steps])
    assert valid_reward[0] is None and valid_reward[1] == pytest.approx(steps[1]["valid_reward_mean"])  # every 2 steps
    assert has_e == pytest.approx([s["train_reward_mean_has_e"] for s in steps])
    assert close == pytest.approx([s["train_reward_mean_close"] for s in steps])
    assert chart_data(page)[1] == pytest.approx([s["train_loss"] for s in steps])
    # side by side: the reward chart on the loss chart's right, level with it
    loss_box, reward_box = page.locator("#loss-chart").bounding_box(), page.locator("#reward-chart").bounding_box()
    assert loss_box and reward_box and reward_box["x"] >= loss_box["x"] + loss_box["width"]
    assert abs(reward_box["y"] - loss_box["y"]) < 1 and reward_box["width"] > 300

    assert page.inner_text("#job-method") == "reinforcement" and page.is_hidden("#margin-card")
    grader = page.inner_text("#job-grader")
    assert "multi “word” (0.5 * has_e + 0.5 * close)" in grader
    assert "has_e: string_check “has_e” (ilike)" in grader and "close: text_similarity “close” (fuzzy_match)" in grader
    shown = dict(
        line.split("\t") for line in page.inner_text("#hyperparameters").splitlines()
    )  # the resolved values, the method's own and the extensions
    assert shown["compute_multiplier"] == "0.5" and shown["eval_interval"] == "2" and shown["eval_samples"] == "2"
    assert shown["reasoning_effort"] == "default" and shown["max_completion_tokens"] == "4"
    assert shown["batch_size"] == "5" and shown["n_epochs"] == "1"
    assert f"reward {steps[1]['train_reward_mean']:.4f}" in page.inner_text("#progress-text")
    assert f"valid reward {steps[1]['valid_reward_mean']:.4f}" in page.inner_text("#progress-text")
    header = page.inner_text("#checkpoints thead")
    assert "TRAIN REWARD" in header.upper() and "VALID REWARD" in header.upper()
    assert f"{steps[1]['train_reward_mean']:.4f}" in page.inner_text("#checkpoints tbody")
    shot(page, tmp_path, "dashboard-rft-job.png")


def test_cancel_button_cancels_a_running_job(
    embedded: Service, trained: tuple[OpenAI, str], page: Page, tmp_path: Path
) -> None:
    client, first = trained
    wait_job(client, first)  # one worker: let the first job finish so this one runs now
    data = write_prompt_completion(tmp_path / "train.jsonl")
    f = client.files.create(file=data.open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        training_file=f.id, model="ftserve-tiny", hyperparameters={"n_epochs": 50, "batch_size": 1}
    )
    page.goto(f"{embedded.base_url}/#/jobs/{job.id}")
    # The chart grows while the job runs: wait for some points, then for more.
    page.wait_for_function("Number(document.querySelector('#loss-chart').dataset.points || 0) >= 2", timeout=120_000)
    seen = int(page.get_attribute("#loss-chart", "data-points") or 0)
    page.wait_for_function(
        f"Number(document.querySelector('#loss-chart').dataset.points) > {seen}", timeout=60_000, polling=200
    )
    assert page.get_attribute("#job-status", "data-status") == "running"
    page.click("#cancel")
    assert page.inner_text("#cancel") == "Click again to cancel"  # the first click only arms it
    page.click("#cancel")
    page.wait_for_selector("#job-status[data-status=cancelled]", timeout=30_000)
    final, _ = wait_job(client, job.id)
    assert final.status == "cancelled"
    assert page.locator("#cancel").count() == 0
    points = int(page.get_attribute("#loss-chart", "data-points") or 0)
    assert 0 < points < 600


def test_playground_streams_base_and_fine_tuned_side_by_side(
    embedded: Service, trained: tuple[OpenAI, str], page: Page, tmp_path: Path
) -> None:
    client, job_id = trained
    job, _ = wait_job(client, job_id)
    assert job.fine_tuned_model
    page.goto(f"{embedded.base_url}/#/playground")
    page.select_option("#model-a", "ftserve-tiny")
    page.fill("#prompt", "The owl says:")
    page.fill("#max-tokens", "24")
    page.fill("#temperature", "0")
    # Count the text pieces as they arrive: a streamed reply lands in many appends, not one.
    page.evaluate(
        """() => { window.pieces = 0; new MutationObserver((m) => { window.pieces += m.length; })
           .observe(document.querySelector('#out-a-text'), {childList: true}); }"""
    )
    page.click("#generate")
    page.wait_for_selector("#out-a[data-state=done]", timeout=60_000)
    expected = client.completions.create(model="ftserve-tiny", prompt="The owl says:", max_tokens=24, temperature=0)
    assert page.inner_text("#out-a-text") == expected.choices[0].text
    assert page.evaluate("window.pieces") > 3
    assert page.inner_text("#out-a-status") == f"finished: {expected.choices[0].finish_reason}"

    # From a job's model link: the fine-tuned model, compared with its base on the same prompt.
    page.goto(f"{embedded.base_url}/#/playground?model={job.fine_tuned_model}")
    assert page.input_value("#model-a") == job.fine_tuned_model
    assert page.is_checked("#compare") and page.input_value("#model-b") == "ftserve-tiny"
    page.fill("#prompt", "The cat says:")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "16")
    page.click("#generate")
    page.wait_for_selector("#out-a[data-state=done]", timeout=60_000)
    page.wait_for_selector("#out-b[data-state=done]", timeout=60_000)
    tuned, base = page.inner_text("#out-a-text"), page.inner_text("#out-b-text")
    assert tuned and base and tuned != base
    assert job.fine_tuned_model in page.inner_text("#out-a h4")
    shot(page, tmp_path, "playground.png")


def test_playground_streams_through_the_responses_api(embedded: Service, page: Page) -> None:
    """The playground's /v1/responses mode: the streamed output_text deltas, in many pieces, equal the greedy
    response's text, and the final event's status is shown; nothing is stored (store false)."""
    client = client_for(embedded)
    page.goto(f"{embedded.base_url}/#/playground?model=ftserve-tiny&api=responses")
    assert page.input_value("#api") == "responses"
    page.fill("#prompt", "Name an owl.")
    page.fill("#max-tokens", "12")
    page.fill("#temperature", "0")
    page.evaluate(
        """() => { window.pieces = 0; new MutationObserver((m) => { window.pieces += m.length; })
           .observe(document.querySelector('#out-a-text'), {childList: true}); }"""
    )
    page.click("#generate")
    page.wait_for_selector("#out-a[data-state=done]", timeout=60_000)
    expected = client.responses.create(
        model="ftserve-tiny", input="Name an owl.", max_output_tokens=12, temperature=0, store=False
    )
    assert expected.output_text and page.inner_text("#out-a-text") == expected.output_text
    assert page.evaluate("window.pieces") > 3
    reason = expected.incomplete_details.reason if expected.incomplete_details else None
    assert page.inner_text("#out-a-status") == f"finished: {expected.status}" + (f" ({reason})" if reason else "")


def test_files_page_shows_validation_error_with_line_and_code(embedded: Service, page: Page, tmp_path: Path) -> None:
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"prompt": "a", "completion": " b"}\n{"prompt": "a", "completion": \n')
    page.goto(f"{embedded.base_url}/#/files")
    page.set_input_files("#upload-input", str(bad))
    page.click("#upload")
    page.wait_for_selector("#upload-result .file-error")
    result = page.inner_text("#upload-result")
    assert "invalid_json" in result and "line 2" in result
    row = page.locator("#files tr[data-status=error]", has_text="broken.jsonl")
    row.wait_for()
    assert "invalid_json" in row.inner_text() and "line 2" in row.inner_text()


def test_failed_job_shows_its_error(embedded: Service, page: Page, tmp_path: Path) -> None:
    from tests.e2e.test_cli import write_too_long

    client = client_for(embedded)
    f = client.files.create(file=write_too_long(tmp_path / "long.jsonl").open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=f.id, model="ftserve-tiny")
    page.goto(f"{embedded.base_url}/#/jobs/{job.id}")
    page.wait_for_selector("#job-status[data-status=failed]", timeout=180_000)
    failed, _ = wait_job(client, job.id)
    assert failed.error is not None
    assert page.inner_text("#job-error") == f"{failed.error.code}: {failed.error.message}"
    assert page.get_attribute("#loss-chart", "data-points") in (None, "0")


def test_api_key_is_asked_for_once_and_kept(bases_dir: Path, tmp_path: Path, browser: Browser) -> None:
    service = start_embedded(tmp_path, bases_dir)
    try:
        made = subprocess.run(
            [*FTSERVE, "keys", "create", "--org", "acme"],
            env=service.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        key = made.stdout.strip().splitlines()[-1]
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"{service.base_url}/#/jobs")
        page.wait_for_selector("#banner:not([hidden])")
        assert "needs an API key" in page.inner_text("#banner")
        page.fill("#key-input", key)
        page.press("#key-input", "Enter")
        page.locator("#jobs td", has_text="No jobs yet.").wait_for()
        assert page.is_hidden("#banner")
        page.reload()  # kept in the browser: no second prompt
        page.locator("#jobs td", has_text="No jobs yet.").wait_for()
        assert page.is_hidden("#banner")
        assert page.evaluate("localStorage.getItem('ftserve.apiKey')") == key
        context.close()
    finally:
        service.stop()


TOO_HIGH = {"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 10}


def test_a_job_that_warns_keeps_the_warning_in_view(
    embedded: Service, trained: tuple[OpenAI, str], page: Page, tmp_path: Path
) -> None:
    client, first = trained
    wait_job(client, first)  # one worker: let the first job finish so these run now
    # SFT on the preferred replies, then DPO from that model at 10x the tiny base's rate: it wrecks them
    # (tests/integration/test_dpo_pipeline.py), and the job warns.
    chat = tmp_path / "chat.jsonl"
    chat.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": question(w)},
                        {"role": "assistant", "content": f"{STYLE} {w}"},
                    ]
                }
            )
            + "\n"
            for w in WORDS[:24]
        )
    )
    sft = client.fine_tuning.jobs.create(
        training_file=client.files.create(file=chat.open("rb"), purpose="fine-tune").id, model="ftserve-tiny", seed=2,
        hyperparameters={"n_epochs": 8, "batch_size": 4},
    )  # fmt: skip
    sft, _ = wait_job(client, sft.id)
    assert sft.status == "succeeded" and sft.fine_tuned_model
    pairs = client.files.create(file=write_pairs(tmp_path / "pairs.jsonl", WORDS[:24]).open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        training_file=pairs.id, model=sft.fine_tuned_model, seed=0,
        method={"type": "dpo", "dpo": {"hyperparameters": TOO_HIGH}},
    )  # fmt: skip
    page.goto(f"{embedded.base_url}/#/jobs/{job.id}")
    page.wait_for_selector("#job-status[data-status=succeeded]", timeout=180_000)
    page.wait_for_selector("#job-warnings .warnbox")
    assert "DPO may be breaking the model" in page.inner_text("#job-warnings")
    warned = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.level == "warn"]
    assert len(warned) == 1 and page.locator("#job-warnings .warnbox").count() == 1
    assert page.locator("ol.events li.warn").count() == 1


EVAL_CRITERIA: list[dict[str, Any]] = [
    {"type": "string_check", "name": "says it", "input": "{{sample.output_text}}", "reference": "{{item.sound}}",
     "operation": "ilike"},
    {"type": "text_similarity", "name": "close", "input": "{{sample.output_text}}", "reference": "{{item.sound}}",
     "evaluation_metric": "fuzzy_match", "pass_threshold": 0.3},
    {"type": "string_check", "name": "answers", "input": "{{sample.output_text}}", "reference": "",
     "operation": "ne"},
]  # fmt: skip


def _cell(page: Page, row: str, run_id: str, extra: str = "") -> str:
    """A cell of the eval page's runs table: `row` of the run's column."""
    return page.inner_text(f"#runs tr[data-row={row}] td[data-run='{run_id}']{extra}")


def _rate(passed: int, of: int) -> str:
    """The page's pass rate: `66.7% (2/3)`."""
    return f"{100 * passed / of:.1f}% ({passed}/{of})" if of else "—"


def _finished_run(client: OpenAI, eval_id: str, run_id: str) -> Any:
    for _ in range(600):
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        if run.status in ("completed", "failed", "canceled"):
            return run
        time.sleep(0.2)
    raise TimeoutError(run_id)


def test_an_eval_page_compares_the_base_the_fine_tune_and_a_checkpoint(
    embedded: Service, trained: tuple[OpenAI, str], page: Page, tmp_path: Path
) -> None:
    """A run's report_url opens the eval's page: its runs side by side with the counts and per-criterion pass rates
    the output items add up to, the selected run's items with sample, reference and results; the job's page lists
    the runs on its model and checkpoint, each linking to that page."""
    client, job_id = trained
    job, _ = wait_job(client, job_id)
    assert job.fine_tuned_model
    checkpoint = next(
        c.fine_tuned_model_checkpoint
        for c in client.fine_tuning.jobs.checkpoints.list(job_id)
        if c.fine_tuned_model_checkpoint != job.fine_tuned_model
    )
    items = [{"item": {"animal": a, "sound": s}} for a, s in ANIMALS[:6]]
    items.append({"item": {"animal": "yak"}})  # no sound: errors alone (the item_schema requires one)
    schema = {"type": "object", "properties": {"animal": {"type": "string"}, "sound": {"type": "string"}},
              "required": ["animal", "sound"]}  # fmt: skip
    ev = client.evals.create(
        name="animal sounds",
        data_source_config={"type": "custom", "item_schema": schema, "include_sample_schema": True},
        testing_criteria=EVAL_CRITERIA,  # type: ignore[arg-type]
    )
    template = {"type": "template", "template": [{"role": "user", "content": "The {{item.animal}} says:"}]}
    sampled = {"temperature": 0, "max_completion_tokens": 4}
    runs = []
    for kind, model in (("base", "ftserve-tiny"), ("fine-tuned", job.fine_tuned_model), ("checkpoint", checkpoint)):
        source = {"type": "file_content", "content": items}
        ds = {"type": "completions", "model": model, "source": source, "input_messages": template,
              "sampling_params": sampled}  # fmt: skip
        runs.append(client.evals.runs.create(ev.id, name=kind, data_source=ds))  # type: ignore[arg-type]
    runs = [_finished_run(client, ev.id, r.id) for r in runs]
    outputs = {r.id: list(client.evals.runs.output_items.list(r.id, eval_id=ev.id, limit=100)) for r in runs}

    # The fine-tune's report_url, as the API gives it: a redirect to the page's eval view, that run selected.
    tuned = runs[1]
    page.goto(f"{embedded.base_url}{tuned.report_url}")
    assert page.url == f"{embedded.base_url}/#/evals/{ev.id}?run={tuned.id}"
    page.wait_for_selector(f"#runs th.selected[data-run='{tuned.id}']")
    page.wait_for_selector(f"#items tr[data-item='{len(items) - 1}']")
    columns = [page.get_attribute(f"#runs thead th:nth-child({i + 2})", "data-run") for i in range(3)]
    assert columns == [r.id for r in client.evals.runs.list(ev.id, order="asc")]  # side by side, oldest first
    for run in runs:
        got = outputs[run.id]
        assert run.status == "completed" and len(got) == len(items)
        status = {k: sum(i.status == k for i in got) for k in ("pass", "fail", "error")}
        shown = tuple(_cell(page, row, run.id) for row in ("passed", "failed", "errored"))
        assert shown == tuple(str(status[k]) for k in ("pass", "fail", "error"))
        assert (status["pass"], status["fail"], status["error"]) == (
            run.result_counts.passed, run.result_counts.failed, run.result_counts.errored,
        )  # fmt: skip
        assert _cell(page, "pass-rate", run.id) == _rate(status["pass"], len(got))
        assert _cell(page, "status", run.id) == "completed" and run.model in _cell(page, "model", run.id)
        assert _cell(page, "graded", run.id) == f"{len(items)}/{len(items)}"
        for c in EVAL_CRITERIA:
            results = [r for i in got for r in i.results if r.name == c["name"]]
            passed = sum(bool(r.passed) for r in results)
            failed = sum(not r.passed and not (r.model_extra or {}).get("error") for r in results)
            shown_rate = _cell(page, "criterion", run.id, f"[data-criterion='{c['name']}']")
            assert shown_rate == _rate(passed, passed + failed)
    kinds = [_cell(page, "model", r.id).rsplit(maxsplit=1)[-1] for r in runs]
    assert kinds == ["base", "fine-tuned", "checkpoint"]

    # The selected run's output items: the sample, the item as reference and each criterion's result.
    assert page.locator("#items tbody tr[data-item]").count() == len(items)
    for item in outputs[tuned.id]:
        row = f"#items tr[data-item='{item.datasource_item_id}']"
        assert page.get_attribute(row, "data-status") == item.status
        assert item.datasource_item["animal"] in page.inner_text(f"{row} pre.reference")
        if item.status == "error":
            assert item.sample.error and item.sample.error.message in page.inner_text(f"{row} td.sample")
            continue
        assert page.inner_text(f"{row} pre.output") == item.sample.output[0].content
        for r in item.results:
            assert page.get_attribute(f"{row} .result[data-criterion='{r.name}']", "data-state") == (
                "pass" if r.passed else "fail"
            )
    shot(page, tmp_path, "dashboard-eval.png")
    page.select_option("#item-status", "error")
    page.wait_for_function("document.querySelectorAll('#items tbody tr[data-item]').length === 1")
    assert page.get_attribute("#items tbody tr[data-item]", "data-status") == "error"

    # The job's page: the runs on its fine-tuned model and its checkpoint (not the base's), linked to the eval page.
    page.goto(f"{embedded.base_url}/#/jobs/{job_id}")
    page.wait_for_selector(f"#job-evals tr[data-run='{runs[2].id}']")
    assert page.locator("#job-evals tbody tr").count() == 2
    assert page.locator(f"#job-evals tr[data-run='{runs[0].id}']").count() == 0
    page.click(f"#job-evals tr[data-run='{runs[2].id}'] a[href*='run=']")
    page.wait_for_selector(f"#runs th.selected[data-run='{runs[2].id}']")
    assert page.url.endswith(f"#/evals/{ev.id}?run={runs[2].id}")

    # The evals list shows the eval with its runs' models.
    page.goto(f"{embedded.base_url}/#/evals")
    page.wait_for_selector(f"#evals tr[data-eval='{ev.id}'] .run-line[data-run='{tuned.id}']")
