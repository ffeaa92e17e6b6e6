"""Client commands of `ftserve` (files, jobs, evals, complete) that talk to any ftserve URL over its public API."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from ftserve.control.client import Client, ProgressReader
from ftserve.core import methods
from ftserve.core.job_status import TERMINAL, JobStatus

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
# job status → `jobs follow` exit code
EXIT_CODES = {JobStatus.SUCCEEDED: 0, JobStatus.FAILED: 1, JobStatus.CANCELLED: 3}
err = Console(stderr=True)


def connection(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add --base-url/--api-key (defaults: OPENAI_BASE_URL/OPENAI_API_KEY, as the openai CLI) and pass a Client."""

    @click.option(
        "--base-url",
        envvar="OPENAI_BASE_URL",
        default=DEFAULT_BASE_URL,
        show_default=True,
        help="API base URL (env OPENAI_BASE_URL).",
    )
    @click.option("--api-key", envvar="OPENAI_API_KEY", default=None, help="API key (env OPENAI_API_KEY).")
    @functools.wraps(fn)
    def wrapper(*args: Any, base_url: str, api_key: str | None, **kw: Any) -> Any:
        # `ftserve`'s group turns on INFO logging for the servers; a client wants no per-request lines.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        return fn(*args, client=Client(base_url, api_key), **kw)

    return wrapper


def _print_table(table: Table) -> None:
    """Print to stdout; when piped, wide enough that ids and model names are never wrapped."""
    out = Console()
    (out if out.is_terminal else Console(width=240)).print(table)


def _when(ts: int | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "—"


@click.group()
def files() -> None:
    """Upload and list training files."""


@files.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--purpose", default="fine-tune", show_default=True)
@connection
def files_upload(path: Path, purpose: str, client: Client) -> None:
    """Upload a JSONL training file; a bad file is refused with the line and code of the first problem."""
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, TimeRemainingColumn(), console=err) as progress, path.open("rb") as f:
        task = progress.add_task(f"uploading {path.name}", total=path.stat().st_size)
        body = ProgressReader(f, progress, task, when_sent=f"{path.name}: sent, validating…")
        uploaded = client.call("POST", "files", files={"file": (path.name, body)}, data={"purpose": purpose})
    click.echo(uploaded["id"])
    err.print(f"[green]✓[/] {uploaded['filename']}: {uploaded['status']} ({uploaded['bytes']} bytes)")


@files.command("list")
@connection
def files_list(client: Client) -> None:
    """List uploaded files, newest first, with their validation status."""
    table = Table("id", "filename", "purpose", "bytes", "created", "status", "details")
    for f in client.call("GET", "files")["data"]:
        table.add_row(
            f["id"], f["filename"], f["purpose"], str(f["bytes"]), _when(f["created_at"]), f["status"],
            f.get("status_details") or "",
        )  # fmt: skip
    _print_table(table)


@click.group()
def jobs() -> None:
    """Create, list, follow and cancel fine-tuning jobs."""


@jobs.command("create")
@click.option("--model", required=True, help="Base or fine-tuned model to start from.")
@click.option("--training-file", required=True, help="A processed file id (file-…).")
@click.option("--validation-file", default=None)
@click.option("--suffix", default=None, help="Up to 64 characters for the fine-tuned model's name.")
@click.option("--n-epochs", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--learning-rate-multiplier", type=float, default=None)
@click.option("--method", type=click.Choice(methods.names()), default=None, help="dpo needs a preference file.")
@click.option("--beta", type=float, default=None, help="DPO's beta (implies --method dpo).")
@click.option("--seed", type=int, default=None)
@click.option("--follow", is_flag=True, help="Follow the job until it ends (as `jobs follow`).")
@connection
def jobs_create(
    model: str,
    training_file: str,
    validation_file: str | None,
    suffix: str | None,
    n_epochs: int | None,
    batch_size: int | None,
    learning_rate_multiplier: float | None,
    method: str | None,
    beta: float | None,
    seed: int | None,
    follow: bool,
    client: Client,
) -> None:
    """Start a fine-tuning job and print its id."""
    hp = {"n_epochs": n_epochs, "batch_size": batch_size, "learning_rate_multiplier": learning_rate_multiplier}
    body: dict[str, Any] = {"model": model, "training_file": training_file}
    optional = {"validation_file": validation_file, "suffix": suffix, "seed": seed}
    body |= {k: v for k, v in optional.items() if v is not None}
    given = {k: v for k, v in (hp | {"beta": beta}).items() if v is not None}
    method = method or (methods.taking("beta").name if beta is not None else None)
    if method is not None:
        body["method"] = {"type": method, method: {"hyperparameters": given}}
    elif given:
        body["hyperparameters"] = given
    job = client.call("POST", "fine_tuning/jobs", json=body)
    click.echo(job["id"])
    err.print(f"[green]✓[/] job {job['id']} {job['status']}")
    if follow:
        follow_and_exit(client, job["id"])


@jobs.command("list")
@click.option("--limit", type=int, default=20, show_default=True)
@connection
def jobs_list(limit: int, client: Client) -> None:
    """List jobs, newest first."""
    table = Table("id", "status", "model", "fine_tuned_model", "created", "finished", "trained_tokens")
    for j in client.call("GET", "fine_tuning/jobs", params={"limit": limit})["data"]:
        table.add_row(
            j["id"], j["status"], j["model"], j.get("fine_tuned_model") or "", _when(j["created_at"]),
            _when(j.get("finished_at")), str(j.get("trained_tokens") or ""),
        )  # fmt: skip
    _print_table(table)


@jobs.command("cancel")
@click.argument("job_id")
@connection
def jobs_cancel(job_id: str, client: Client) -> None:
    """Cancel a job that has not finished."""
    job = client.call("POST", f"fine_tuning/jobs/{job_id}/cancel")
    click.echo(f"{job['id']} {job['status']}")


@jobs.command("follow")
@click.argument("job_id")
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds between polls.")
@connection
def jobs_follow(job_id: str, interval: float, client: Client) -> None:
    """Show a job's progress (steps, loss, ETA) and events until it ends.

    Exit code: 0 succeeded, 1 failed, 3 cancelled.
    """
    follow_and_exit(client, job_id, interval)


def follow_and_exit(client: Client, job_id: str, interval: float = 1.0) -> None:
    """Follow the job, then exit with its code; Ctrl-C stops following but leaves the job running."""
    try:
        code = follow_job(client, job_id, interval)
    except KeyboardInterrupt:
        err.print(f"Stopped following; the job goes on (cancel it with: ftserve jobs cancel {job_id})")
        code = 130
    raise SystemExit(code)


SUB_REWARD = "train_reward_mean_"  # a multi grader's sub-grader's mean reward: train_reward_mean_<name>


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "—"


def _step_stats(data: dict[str, Any]) -> str:
    """What the progress bar shows of a step: its train loss, and a reinforcement job's mean reward."""
    stats = f"loss {_number(data.get('train_loss'))}"
    if "train_reward_mean" in data:
        stats += f" · reward {_number(data['train_reward_mean'])}"
    return stats


def _reward_line(data: dict[str, Any]) -> str:
    """A reinforcement job's step as a line of its own: loss, mean reward (with each sub-grader's) and, on the
    steps that evaluate (every eval_interval), the validation reward."""
    subs = {k.removeprefix(SUB_REWARD): v for k, v in data.items() if k.startswith(SUB_REWARD)}
    line = f"step {data['step']}/{data.get('total_steps', '?')} loss {_number(data.get('train_loss'))}"
    line += f" reward {_number(data.get('train_reward_mean'))}"
    if subs:
        line += " (" + ", ".join(f"{name} {_number(v)}" for name, v in subs.items()) + ")"
    if "valid_reward_mean" in data:
        line += f" valid reward {_number(data['valid_reward_mean'])}"
    return line


def follow_job(client: Client, job_id: str, interval: float = 1.0) -> int:
    """Print events as they come and drive a progress bar from metrics events (a reinforcement job's steps, with
    their rewards, also as lines: each takes a while and the rewards are its progress); return the exit code."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    last: str | None = None
    with Progress(*columns, console=err) as progress:
        task = progress.add_task("steps", total=None, stats="loss —")
        while True:
            job = client.call("GET", f"fine_tuning/jobs/{job_id}")
            for event in client.new_events(job_id, last):
                last = event["id"]
                data = event.get("data") or {}
                stamp = datetime.fromtimestamp(event["created_at"]).strftime("%H:%M:%S")
                if event.get("type") == "metrics" and "step" in data:
                    progress.update(
                        task, total=data.get("total_steps"), completed=data["step"], stats=_step_stats(data)
                    )
                    if "train_reward_mean" in data:
                        progress.console.print(f"[dim]{stamp}[/] {_reward_line(data)}", highlight=False, soft_wrap=True)
                else:
                    # soft_wrap: a long message stays one line in a log or a pipe (a terminal wraps it itself)
                    progress.console.print(f"[dim]{stamp}[/] {event['message']}", highlight=False, soft_wrap=True)
            if job["status"] in TERMINAL:
                break
            time.sleep(interval)
    status = JobStatus(job["status"])
    if status == JobStatus.SUCCEEDED:
        err.print(f"[green]✓ succeeded[/]: {job['fine_tuned_model']} ({job.get('trained_tokens')} trained tokens)")
    elif status == JobStatus.FAILED:
        error = job.get("error") or {}
        err.print(f"[red]✗ failed[/]: {error.get('code')}: {error.get('message')}")
    else:
        err.print(f"[yellow]✗ {status}[/]")
    return EXIT_CODES[status]


@click.group()
def evals() -> None:
    """Run evals (made with the openai client's client.evals.create) on a model, list them, show their runs."""


# eval run status → `evals run` exit code (as `jobs follow`'s)
RUN_EXIT_CODES = {"completed": 0, "failed": 1, "canceled": 3}


def _rate(passed: int, of: int) -> str:
    """A pass rate as the dashboard writes it: `66.7% (2/3)`."""
    return f"{100 * passed / of:.1f}% ({passed}/{of})" if of else "—"


def _criteria_rates(run: dict[str, Any]) -> list[tuple[str, str]]:
    """Each criterion's pass rate: passed of passed + failed (an item it could not grade counts in neither)."""
    return [
        (c["testing_criteria"], _rate(c["passed"], c["passed"] + c["failed"]))
        for c in run["per_testing_criteria_results"]
    ]


@evals.command("run")
@click.argument("eval_id")
@click.option("--model", required=True, help="The model to sample: a base, ft: model or checkpoint.")
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A JSONL file of {\"item\": {...}} lines, uploaded with purpose evals.")  # fmt: skip
@click.option("--file-id", default=None, help="An uploaded purpose=evals file instead of --data.")
@click.option("--template", required=True, help='The user message, over the item: "Translate {{item.text}}".')
@click.option("--system", default=None, help="A system message before it (may use {{item.*}} too).")
@click.option("--max-tokens", type=int, default=None, help="max_completion_tokens per sample.")
@click.option("--temperature", type=float, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--name", default=None, help="The run's name (default: the model's).")
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds between polls.")
@connection
def evals_run(
    eval_id: str,
    model: str,
    data: Path | None,
    file_id: str | None,
    template: str,
    system: str | None,
    max_tokens: int | None,
    temperature: float | None,
    seed: int | None,
    name: str | None,
    interval: float,
    client: Client,
) -> None:
    """Start a run of EVAL_ID on a model (a `completions` data source) and follow it with a progress bar until it
    ends; print its pass rate per criterion. Exit code: 0 completed, 1 failed, 3 canceled."""
    if (data is None) == (file_id is None):
        raise click.UsageError("give the items as --data PATH or --file-id FILE_ID (one of them)")
    if data is not None:
        with data.open("rb") as f:
            file_id = client.call("POST", "files", files={"file": (data.name, f)}, data={"purpose": "evals"})["id"]
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": template})
    sampling = {"max_completion_tokens": max_tokens, "temperature": temperature, "seed": seed}
    source: dict[str, Any] = {
        "type": "completions",
        "model": model,
        "source": {"type": "file_id", "id": file_id},
        "input_messages": {"type": "template", "template": messages},
        "sampling_params": {k: v for k, v in sampling.items() if v is not None},
    }
    body: dict[str, Any] = {"data_source": source, **({"name": name} if name else {})}
    run = client.call("POST", f"evals/{eval_id}/runs", json=body)
    click.echo(run["id"])
    err.print(f"[green]✓[/] run {run['id']} of {eval_id} on {model}: {run['status']}", soft_wrap=True)
    try:
        run = follow_run(client, eval_id, run["id"], interval)
    except KeyboardInterrupt:
        err.print(f"Stopped following; the run goes on (see it with: ftserve evals show {eval_id})")
        raise SystemExit(130) from None
    raise SystemExit(RUN_EXIT_CODES[run["status"]])


def follow_run(client: Client, eval_id: str, run_id: str, interval: float = 1.0) -> dict[str, Any]:
    """A progress bar of the items graded (of the data source's, `extensions.item_count`) with the pass rate so far,
    until the run ends; then its pass rate per criterion and its report's address. Returns the finished run."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err) as progress:
        task = progress.add_task("items", total=None, stats="")
        while True:
            run = client.call("GET", f"evals/{eval_id}/runs/{run_id}")
            counts = run["result_counts"]
            total = (run.get("extensions") or {}).get("item_count")
            stats = f"passed {_rate(counts['passed'], counts['total'])} · errored {counts['errored']}"
            progress.update(task, total=total, completed=counts["total"], stats=stats)
            if run["status"] in RUN_EXIT_CODES:
                break
            time.sleep(interval)
    counts = run["result_counts"]
    model = run["model"] or "file samples"
    table = Table("criterion", "pass rate", title=model if run["name"] == model else f"{run['name']}: {model}")
    for criterion, rate in _criteria_rates(run):
        table.add_row(criterion, rate)
    table.add_row("[bold]all criteria[/]", _rate(counts["passed"], counts["total"]))
    err.print(table)
    # soft_wrap: a line stays one line in a log or a pipe (a terminal wraps it itself)
    summary = f"{counts['total']} items: {counts['passed']} passed, {counts['failed']} failed"
    summary += f", {counts['errored']} errored"
    err.print(summary, soft_wrap=True)
    err.print(f"report: {client.http.base_url.join(run['report_url'])}", soft_wrap=True, highlight=False)
    if run["status"] == "completed":
        err.print("[green]✓ completed[/]")
    elif run["status"] == "failed":
        error = run.get("error") or {}
        err.print(f"[red]✗ failed[/]: {error.get('code')}: {error.get('message')}", soft_wrap=True)
    else:
        err.print(f"[yellow]✗ {run['status']}[/]")
    return run


@evals.command("list")
@click.option("--limit", type=int, default=20, show_default=True)
@connection
def evals_list(limit: int, client: Client) -> None:
    """List evals, newest first, with their testing criteria."""
    table = Table("id", "name", "testing criteria", "created")
    for e in client.call("GET", "evals", params={"limit": limit, "order": "desc"})["data"]:
        criteria = ", ".join(f"{c['name']} ({c['type']})" for c in e["testing_criteria"])
        table.add_row(e["id"], e["name"], criteria, _when(e["created_at"]))
    _print_table(table)


@evals.command("show")
@click.argument("eval_id")
@connection
def evals_show(eval_id: str, client: Client) -> None:
    """An eval's runs, oldest first: model, status, counts, pass rate overall and per criterion."""
    ev = client.call("GET", f"evals/{eval_id}")
    runs = client.call("GET", f"evals/{eval_id}/runs", params={"limit": 100})["data"]
    names = [c["name"] for c in ev["testing_criteria"]]
    table = Table("run", "model", "status", "graded", "passed", "failed", "errored", "pass rate", *names,
                  title=f"{ev['name'] or ev['id']} ({ev['id']})")  # fmt: skip
    for r in runs:
        c = r["result_counts"]
        rates = dict(_criteria_rates(r))
        table.add_row(
            r["id"], r["model"] or "—", r["status"], str(c["total"]), str(c["passed"]), str(c["failed"]),
            str(c["errored"]), _rate(c["passed"], c["total"]), *(rates.get(n, "—") for n in names),
        )  # fmt: skip
    _print_table(table)


@click.command()
@click.argument("model")
@click.argument("prompt")
@click.option("--max-tokens", type=int, default=64, show_default=True)
@click.option("--temperature", type=float, default=0.7, show_default=True)
@connection
def complete(model: str, prompt: str, max_tokens: int, temperature: float, client: Client) -> None:
    """Stream a completion of PROMPT from MODEL (a base, fine-tuned or checkpoint model)."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature}
    for chunk in client.stream("completions", body):
        for choice in chunk.get("choices", []):
            click.echo(choice.get("text", ""), nl=False)
    click.echo()


def register(group: click.Group) -> None:
    """Add the client commands to the `ftserve` group."""
    for command in (files, jobs, evals, complete):
        group.add_command(command)
