"""The `ftserve` client commands, run as real subprocesses against a real `ftserve up`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import client_for, write_prompt_completion
from tests.rft_data import MULTI, TINY_EXTENSIONS, WORDS, metrics, rft, upload_prompts
from tests.servers import FTSERVE, ROOT, Service, start_embedded


def ftserve(
    service: Service, *args: str, env_url: bool = False, key: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run `ftserve ARGS` against `service`, its URL from OPENAI_BASE_URL (env_url) or --base-url,
    and an API key from OPENAI_API_KEY when `key` is given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "FTSERVE_"))}
    if key:
        env["OPENAI_API_KEY"] = key
    url = f"{service.base_url}/v1"
    if env_url:
        env["OPENAI_BASE_URL"] = url
    argv = [*FTSERVE, *args] if env_url else [*FTSERVE, *args, "--base-url", url]
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_upload_of_a_bad_file_names_the_line_and_code(embedded: Service, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": " b"}\n{"prompt": "a", "completion": " b"}\nnot json at all\n')
    run = ftserve(embedded, "files", "upload", str(bad))
    assert run.returncode == 1
    assert "400 invalid_json" in run.stderr and "line 3" in run.stderr
    assert run.stdout == ""


@pytest.mark.storage
def test_upload_create_follow_list_complete(embedded: Service, tmp_path: Path) -> None:
    upload = ftserve(embedded, "files", "upload", str(write_prompt_completion(tmp_path / "train.jsonl")), env_url=True)
    assert upload.returncode == 0, upload.stderr
    file_id = upload.stdout.strip()
    assert file_id.startswith("file-") and "processed" in upload.stderr

    create = ftserve(
        embedded, "jobs", "create", "--model", "ftserve-tiny", "--training-file", file_id,
        "--suffix", "cli", "--n-epochs", "3", "--batch-size", "4", "--seed", "5",
    )  # fmt: skip
    assert create.returncode == 0, create.stderr
    job_id = create.stdout.strip()
    assert job_id.startswith("ftjob-")

    follow = ftserve(embedded, "jobs", "follow", job_id, "--interval", "0.3")
    assert follow.returncode == 0, follow.stderr
    assert "9/9" in follow.stderr  # the progress bar's last state: 3 epochs × 3 steps
    assert "Fine-tuning job started" in follow.stderr and "The job has successfully completed" in follow.stderr
    client = client_for(embedded)
    job = client.fine_tuning.jobs.retrieve(job_id)
    assert job.status == "succeeded" and job.fine_tuned_model
    assert job.hyperparameters.n_epochs == 3 and job.seed == 5
    assert f"succeeded: {job.fine_tuned_model}" in follow.stderr.replace("\n", "")

    listing = ftserve(embedded, "jobs", "list", env_url=True)
    assert listing.returncode == 0 and job_id in listing.stdout and "succeeded" in listing.stdout

    complete = ftserve(
        embedded, "complete", "ftserve-tiny", "The owl says:", "--max-tokens", "12", "--temperature", "0"
    )
    assert complete.returncode == 0, complete.stderr
    expected = client.completions.create(model="ftserve-tiny", prompt="The owl says:", max_tokens=12, temperature=0)
    assert complete.stdout == expected.choices[0].text + "\n"


def test_follow_exits_non_zero_when_the_job_is_cancelled(embedded: Service, tmp_path: Path) -> None:
    client = client_for(embedded)
    f = client.files.create(file=write_prompt_completion(tmp_path / "t.jsonl").open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        training_file=f.id, model="ftserve-tiny", hyperparameters={"n_epochs": 50, "batch_size": 1}
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "FTSERVE_"))}
    env["OPENAI_BASE_URL"] = f"{embedded.base_url}/v1"
    follow = subprocess.Popen(
        [*FTSERVE, "jobs", "follow", job.id, "--interval", "0.3"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id, limit=5)):
            assert time.monotonic() < deadline and follow.poll() is None
            time.sleep(0.3)
        cancel = ftserve(embedded, "jobs", "cancel", job.id)
        assert cancel.returncode == 0 and cancel.stdout.strip() == f"{job.id} cancelled"
        _, err = follow.communicate(timeout=60)
    finally:
        follow.kill()
    assert follow.returncode == 3
    assert "Fine-tuning job cancelled" in err and "✗ cancelled" in err

    again = ftserve(embedded, "jobs", "cancel", job.id)  # a finished job cannot be cancelled: the API's 400
    assert again.returncode == 1 and "job_not_cancellable" in again.stderr


def test_follow_shows_a_reinforcement_jobs_rewards_on_each_step_line(embedded: Service, tmp_path: Path) -> None:
    """A reinforcement job's steps are printed as lines with their mean reward (each sub-grader's too) and, every
    eval_interval steps, the validation reward: the metrics events' values."""
    client = client_for(embedded)
    train = upload_prompts(client, tmp_path / "train.jsonl", WORDS[:10])
    valid = upload_prompts(client, tmp_path / "valid.jsonl", WORDS[10:20])
    hp = {"n_epochs": 1, "batch_size": 5, "compute_multiplier": 0.5, "eval_interval": 2, "eval_samples": 2}
    job = client.fine_tuning.jobs.create(
        model="ftserve-tiny", training_file=train, validation_file=valid, method=rft(MULTI, **hp),
        extra_body=TINY_EXTENSIONS,
    )  # fmt: skip
    follow = ftserve(embedded, "jobs", "follow", job.id, "--interval", "0.3")
    assert follow.returncode == 0, follow.stderr
    first, second = metrics(client, job.id)
    lines = [line for line in follow.stderr.splitlines() if re.search(r" step \d+/\d+ loss ", line)]
    assert len(lines) == 2, follow.stderr
    assert lines[0].endswith(
        f"step 1/2 loss {first['train_loss']:.4f} reward {first['train_reward_mean']:.4f} "
        f"(has_e {first['train_reward_mean_has_e']:.4f}, close {first['train_reward_mean_close']:.4f})"
    )  # no validation at step 1: eval_interval is 2
    assert lines[1].endswith(
        f"reward {second['train_reward_mean']:.4f} (has_e {second['train_reward_mean_has_e']:.4f}, close "
        f"{second['train_reward_mean_close']:.4f}) valid reward {second['valid_reward_mean']:.4f}"
    )
    assert "The job has successfully completed" in follow.stderr


def write_too_long(path: Path) -> Path:
    """Examples whose prompts alone overflow ftserve-tiny's context: every one is dropped, so the job fails."""
    long_prompt = " ".join(f"w{i}" for i in range(3000))
    path.write_text("".join(f'{{"prompt": "{long_prompt}", "completion": " x"}}\n' for _ in range(10)))
    return path


def test_follow_exits_non_zero_when_the_job_fails(embedded: Service, tmp_path: Path) -> None:
    upload = ftserve(embedded, "files", "upload", str(write_too_long(tmp_path / "long.jsonl")))
    assert upload.returncode == 0, upload.stderr
    create = ftserve(embedded, "jobs", "create", "--model", "ftserve-tiny", "--training-file", upload.stdout.strip())
    follow = ftserve(embedded, "jobs", "follow", create.stdout.strip(), "--interval", "0.3")
    assert follow.returncode == 1
    assert "failed: invalid_training_file" in follow.stderr


def test_api_key_from_env_or_option(bases_dir: Path, tmp_path: Path) -> None:
    service = start_embedded(tmp_path, bases_dir)
    try:
        made = subprocess.run(
            [*FTSERVE, "keys", "create", "--org", "acme"], env=service.env, cwd=ROOT, capture_output=True, text=True
        )
        key = made.stdout.strip().splitlines()[-1]
        refused = ftserve(service, "jobs", "list")
        assert refused.returncode == 1 and "401 missing_api_key" in refused.stderr
        wrong = ftserve(service, "jobs", "list", "--api-key", "sk-ftserve-wrong")
        assert wrong.returncode == 1 and "401 invalid_api_key" in wrong.stderr
        with_option = ftserve(service, "jobs", "list", "--api-key", key)
        assert with_option.returncode == 0, with_option.stderr
        upload = ftserve(service, "files", "upload", str(write_prompt_completion(tmp_path / "t.jsonl")), key=key)
        assert upload.returncode == 0, upload.stderr
        listed = ftserve(service, "files", "list", key=key)
        assert upload.stdout.strip() in listed.stdout
    finally:
        service.stop()


def test_create_a_dpo_job(embedded: Service, tmp_path: Path) -> None:
    from tests.preference_data import WORDS, write_pairs

    upload = ftserve(embedded, "files", "upload", str(write_pairs(tmp_path / "pairs.jsonl", WORDS[:12])))
    assert upload.returncode == 0, upload.stderr
    create = ftserve(
        embedded, "jobs", "create", "--model", "ftserve-tiny", "--training-file", upload.stdout.strip(),
        "--beta", "0.3", "--n-epochs", "1", "--follow",
    )  # fmt: skip
    assert create.returncode == 0, create.stderr
    job = client_for(embedded).fine_tuning.jobs.retrieve(create.stdout.strip().splitlines()[0])
    assert job.status == "succeeded" and job.method is not None and job.method.type == "dpo"
    assert job.method.dpo is not None and job.method.dpo.hyperparameters is not None
    assert job.method.dpo.hyperparameters.beta == 0.3


def test_evals_run_follows_the_run_and_prints_the_pass_rate_per_criterion(embedded: Service, tmp_path: Path) -> None:
    """`ftserve evals run` uploads the items, starts a completions run and follows it to its end: the progress bar
    reaches every item, and the pass rates printed are the run's per-criterion counts; `evals list` and `evals show`
    show the eval and the run."""
    from tests.e2e.conftest import ANIMALS

    client = client_for(embedded)
    schema = {"type": "object", "properties": {"animal": {"type": "string"}, "sound": {"type": "string"}},
              "required": ["animal", "sound"]}  # fmt: skip
    criteria = [
        {"type": "string_check", "name": "says it", "input": "{{sample.output_text}}", "reference": "{{item.sound}}",
         "operation": "ilike"},
        {"type": "string_check", "name": "answers", "input": "{{sample.output_text}}", "reference": "",
         "operation": "ne"},
    ]  # fmt: skip
    ev = client.evals.create(
        name="sounds", data_source_config={"type": "custom", "item_schema": schema}, testing_criteria=criteria
    )  # type: ignore[arg-type]
    data = tmp_path / "items.jsonl"
    lines = [{"item": {"animal": a, "sound": s}} for a, s in ANIMALS[:6]] + [{"item": {"animal": "yak"}}]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    run = ftserve(
        embedded, "evals", "run", ev.id, "--model", "ftserve-tiny", "--data", str(data),
        "--template", "The {{item.animal}} says:", "--max-tokens", "4", "--temperature", "0", "--interval", "0.3",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    run_id = run.stdout.strip()
    got = client.evals.runs.retrieve(run_id, eval_id=ev.id)
    assert got.status == "completed" and got.result_counts.total == 7 and got.result_counts.errored == 1
    assert got.data_source.source.type == "file_id"  # type: ignore[union-attr]
    assert "7/7" in run.stderr  # the progress bar's last state
    for c in got.per_testing_criteria_results:
        of = c.passed + c.failed
        assert re.search(rf"{c.testing_criteria}\s+│\s+{100 * c.passed / of:.1f}% \({c.passed}/{of}\)", run.stderr)
    counts = got.result_counts
    assert f"7 items: {counts.passed} passed, {counts.failed} failed, 1 errored" in run.stderr
    assert f"/dashboard/evals/{ev.id}?run={run_id}" in run.stderr and "✓ completed" in run.stderr

    listed = ftserve(embedded, "evals", "list")
    assert listed.returncode == 0 and ev.id in listed.stdout and "says it (string_check)" in listed.stdout
    shown = ftserve(embedded, "evals", "show", ev.id)
    assert shown.returncode == 0 and run_id in shown.stdout and "completed" in shown.stdout

    missing = ftserve(embedded, "evals", "run", ev.id, "--model", "ftserve-tiny", "--template", "x")
    assert missing.returncode == 2 and "--data PATH or --file-id" in missing.stderr
