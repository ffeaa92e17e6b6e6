"""API keys and tenancy: every object is scoped to its organization; another org's object is a plain 404."""

from __future__ import annotations

import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.e2e.conftest import client_for, wait_job, write_prompt_completion
from tests.servers import FTSERVE, ROOT, Service, base_env, free_port, start_embedded


def _create_key(data_dir: Path, bases_dir: Path, org: str) -> str:
    out = subprocess.run(
        [*FTSERVE, "keys", "create", "--org", org],
        env=base_env(data_dir, bases_dir),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory, bases_dir: Path) -> Iterator[tuple[Service, str, str]]:
    data = tmp_path_factory.mktemp("tenants")
    alpha, beta = _create_key(data, bases_dir, "alpha"), _create_key(data, bases_dir, "beta")
    service = start_embedded(data, bases_dir)
    yield service, alpha, beta
    service.stop()


@pytest.fixture(scope="module")
def alpha_objects(tenants: tuple[Service, str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    service, alpha, _ = tenants
    client = client_for(service, api_key=alpha)
    f = client.files.create(
        file=write_prompt_completion(tmp_path_factory.mktemp("a") / "t.jsonl").open("rb"), purpose="fine-tune"
    )
    job = client.fine_tuning.jobs.create(training_file=f.id, model="ftserve-tiny", hyperparameters={"n_epochs": 1})
    job, _ = wait_job(client, job.id)
    assert job.status == "succeeded" and job.fine_tuned_model
    assert job.fine_tuned_model.startswith("ft:ftserve-tiny:alpha:")
    ckpt = client.fine_tuning.jobs.checkpoints.list(job.id).data[0]
    upload = client.uploads.create(bytes=3, filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    client.uploads.parts.create(upload_id=upload.id, data=b"abc")
    return {
        "file": f.id,
        "job": job.id,
        "model": job.fine_tuned_model,
        "ckpt": ckpt.fine_tuned_model_checkpoint,
        "upload": upload.id,
    }


def test_keys_are_stored_hashed(tenants: tuple[Service, str, str]) -> None:
    service, alpha, beta = tenants
    db = Path(service.env["FTSERVE_DATA_DIR"]) / "ftserve.db"
    rows = sqlite3.connect(db).execute("select org_id, key_hash from api_keys").fetchall()
    assert {r[0] for r in rows} == {"alpha", "beta"}
    dump = "\n".join(sqlite3.connect(db).iterdump())
    assert alpha not in dump and beta not in dump
    assert alpha.startswith("sk-ftserve-") and alpha != beta


def test_missing_or_wrong_key_is_401(tenants: tuple[Service, str, str]) -> None:
    service, _, _ = tenants
    r = httpx.get(f"{service.base_url}/v1/files")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    with pytest.raises(openai.AuthenticationError):
        client_for(service, api_key="sk-ftserve-wrong").files.list()


def _normalise(body: dict[str, dict[str, str]], ident: str) -> dict[str, str]:
    err = dict(body["error"])
    err["message"] = err["message"].replace(ident, "<id>")
    return err


def test_other_orgs_objects_are_indistinguishable_from_missing(
    tenants: tuple[Service, str, str], alpha_objects: dict[str, str]
) -> None:
    service, _, beta = tenants
    auth = {"Authorization": f"Bearer {beta}"}
    base = f"{service.base_url}/v1"
    fake = {
        "file": "file-" + "x" * 24,
        "job": "ftjob-" + "x" * 24,
        "model": re.sub(r":[^:]+$", ":" + "x" * 24, alpha_objects["model"]),
        "ckpt": alpha_objects["model"].replace(alpha_objects["job"].removeprefix("ftjob-"), "x" * 24) + ":ckpt-step-1",
        "upload": "upload_" + "x" * 24,
    }
    calls = [
        ("GET", "/files/{file}", None),
        ("GET", "/files/{file}/content", None),
        ("DELETE", "/files/{file}", None),
        ("GET", "/fine_tuning/jobs/{job}", None),
        ("POST", "/fine_tuning/jobs/{job}/cancel", None),
        ("POST", "/fine_tuning/jobs/{job}/pause", None),
        ("POST", "/fine_tuning/jobs/{job}/resume", None),
        ("GET", "/fine_tuning/jobs/{job}/events", None),
        ("GET", "/fine_tuning/jobs/{job}/checkpoints", None),
        ("GET", "/models/{model}", None),
        ("DELETE", "/models/{model}", None),
        ("GET", "/models/{model}/adapter", None),
        ("GET", "/models/{ckpt}", None),
        ("POST", "/completions", {"model": "{model}", "prompt": "hi"}),
        ("POST", "/completions", {"model": "{ckpt}", "prompt": "hi"}),
        ("POST", "/chat/completions", {"model": "{model}", "messages": [{"role": "user", "content": "hi"}]}),
        ("POST", "/fine_tuning/jobs", {"model": "ftserve-tiny", "training_file": "{file}"}),
        ("POST", "/uploads/{upload}/complete", {"part_ids": []}),
        ("POST", "/uploads/{upload}/cancel", None),
    ]
    for method, template, body in calls:
        key = re.search(r"\{(\w+)\}", template + str(body)).group(1)  # type: ignore[union-attr]
        answers = []
        for ident in (alpha_objects[key], fake[key]):
            path = template.replace("{" + key + "}", ident)
            payload = (
                None
                if body is None
                else {k: (v.replace("{" + key + "}", ident) if isinstance(v, str) else v) for k, v in body.items()}
            )
            r = httpx.request(method, base + path, json=payload, headers=auth, timeout=30)
            assert r.status_code == 404, (method, path, r.status_code, r.text)
            answers.append(_normalise(r.json(), ident))
        assert answers[0] == answers[1], (method, template)

    beta_client = client_for(service, api_key=beta)
    assert alpha_objects["file"] not in [f.id for f in beta_client.files.list()]
    assert alpha_objects["job"] not in [j.id for j in beta_client.fine_tuning.jobs.list()]
    assert not {alpha_objects["model"], alpha_objects["ckpt"]} & {m.id for m in beta_client.models.list()}


def test_the_owner_still_sees_everything(tenants: tuple[Service, str, str], alpha_objects: dict[str, str]) -> None:
    service, alpha, _ = tenants
    client: OpenAI = client_for(service, api_key=alpha)
    assert client.files.retrieve(alpha_objects["file"]).id == alpha_objects["file"]
    assert client.fine_tuning.jobs.retrieve(alpha_objects["job"]).status == "succeeded"
    assert client.completions.create(model=alpha_objects["model"], prompt="The cat says:", max_tokens=4).choices
    assert client.uploads.cancel(alpha_objects["upload"]).status == "cancelled"


def test_a_model_grader_judges_with_the_callers_models_only(
    tenants: tuple[Service, str, str], alpha_objects: dict[str, str]
) -> None:
    """The grader endpoint asks its judge as the caller: alpha's ft: model judges alpha's grader, and for beta it
    is a model that does not exist, a 400 naming the grader's model field, like a name no one serves."""
    service, alpha, beta = tenants
    label = {
        "type": "label_model",
        "name": "verdict",
        "model": alpha_objects["model"],
        "input": [{"role": "user", "content": "Does the {{item.animal}} say {{sample.output_text}}?"}],
        "labels": ["yes", "no"],
        "passing_labels": ["yes"],
    }
    grader = {"type": "multi", "name": "m", "graders": {"verdict": label}, "calculate_output": "verdict"}
    result = client_for(service, api_key=alpha).fine_tuning.alpha.graders.run(
        grader=grader,  # type: ignore[arg-type]
        model_sample="meow",
        item={"animal": "cat"},
    )
    assert result.reward in (0.0, 1.0) and result.metadata.sampled_model_name == alpha_objects["model"]
    assert result.model_grader_token_usage_per_model[alpha_objects["model"]]["completion_tokens"] > 0
    answers = []
    for model in (alpha_objects["model"], re.sub(r":[^:]+$", ":" + "x" * 24, alpha_objects["model"])):
        with pytest.raises(openai.BadRequestError) as err:
            client_for(service, api_key=beta).fine_tuning.alpha.graders.run(
                grader={**grader, "graders": {"verdict": {**label, "model": model}}},  # type: ignore[arg-type]
                model_sample="meow",
                item={"animal": "cat"},
            )
        body = err.value.body
        assert isinstance(body, dict) and (body["param"], body["code"]) == (
            "grader.graders.verdict.model",
            "model_not_found",
        )
        answers.append(body["message"].replace(model, "<model>"))
    assert answers[0] == answers[1]


def test_without_keys_only_loopback_is_allowed(tmp_path: Path, bases_dir: Path) -> None:
    env = base_env(tmp_path, bases_dir)
    refused = subprocess.run(
        [*FTSERVE, "up", "--host", "0.0.0.0", "--port", str(free_port()), "--data-dir", str(tmp_path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0
    assert "Refusing to listen on 0.0.0.0 without API keys" in refused.stderr
