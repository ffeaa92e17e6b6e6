"""The ftserve command: up | api | worker | inference | migrate | keys | models, and client commands
(files | jobs | complete, in app/client_cli.py)."""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import click
from rich.console import Console

from ftserve.control.client_cli import register as register_client_commands
from ftserve.core.config import Settings, get_settings

console = Console(stderr=True)


def _settings(data_dir: str | None = None, host: str | None = None, port: int | None = None) -> Settings:
    # Options become environment variables so that child processes (the worker) see the same settings.
    if data_dir:
        os.environ["FTSERVE_DATA_DIR"] = str(Path(data_dir).expanduser().resolve())
    if host:
        os.environ["FTSERVE_HOST"] = host
    if port:
        os.environ["FTSERVE_PORT"] = str(port)
    get_settings.cache_clear()
    settings = get_settings()
    settings.resolved_data_dir().mkdir(parents=True, exist_ok=True)
    return settings


def _migrate(settings: Settings) -> None:
    from ftserve.control.db.migrate import upgrade_head

    upgrade_head(settings.resolved_database_url())


def _check_storage(settings: Settings) -> None:
    """Refuse to start when the object store cannot be reached: say which URL, not a traceback later."""
    from ftserve.core.storage import Storage, StorageUnavailable

    try:
        Storage(settings).check()
    except StorageUnavailable as exc:
        raise click.ClickException(str(exc)) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_exposure(settings: Settings) -> None:
    """Without API keys ftserve is single-user: it serves loopback only."""
    from ftserve.control.db.session import session_scope
    from ftserve.control.services.auth import keys_exist

    with session_scope(settings) as s:
        has_keys = keys_exist(s)
    if has_keys:
        console.print("[green]API keys configured: requests must send 'Authorization: Bearer <key>'.[/]")
        return
    if not _is_loopback(settings.host):
        raise click.ClickException(
            f"Refusing to listen on {settings.host} without API keys: anyone who can reach it could use it. "
            "Create a key first (ftserve keys create --org NAME) or bind to 127.0.0.1."
        )
    console.print(
        f"[yellow]Single-user mode:[/] no API keys exist, so every request acts as organization "
        f"'{settings.default_org}'. Listening on loopback only."
    )


def _prepare(settings: Settings, names: list[str]) -> None:
    from ftserve.models.bases import BaseModelUnavailable, prepare_base

    for name in names:
        if name not in settings.base_models:
            console.print(f"[yellow]Skipping unknown base '{name}'[/]")
            continue
        with console.status(f"Preparing base model {name}…"):
            try:
                path = prepare_base(settings, name, progress=lambda m: console.print(f"  {m}"))
            except BaseModelUnavailable as exc:
                console.print(f"[yellow]Base {name} unavailable: {exc}[/]")
                continue
        console.print(f"[green]✓[/] {name} ready ({path})")


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM if `ftserve up` dies, even by SIGKILL, so no orphan keeps training."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def worker_command(settings: Settings, name: str = "ftserve", queues: list[str] | None = None) -> list[str]:
    """The Celery worker's command line; `queues`: the training queues it takes jobs from (default: the
    default queue; `ftserve up` takes every queue of the registry)."""
    from ftserve.control.broker import TRAIN_QUEUE

    # solo pool: the task runs in the worker's main process, one job at a time, and the base model
    # stays loaded between jobs; a SIGKILL takes the job with it, and the lease reaper requeues it.
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "ftserve.worker.app",
        "worker",
        "--pool",
        "solo",
        "--concurrency",
        "1",
        "-Q",
        ",".join(queues or [TRAIN_QUEUE]),
        "--loglevel",
        "INFO",
        "-n",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
    ]


def _serve(settings: Settings, roles: set[str]) -> None:
    import uvicorn

    from ftserve.control.main import create_app

    uvicorn.run(create_app(settings, roles), host=settings.host, port=settings.port, log_level="info")


@click.group()
def cli() -> None:
    """ftserve: self-hosted LoRA fine-tuning with OpenAI's API."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@cli.command()
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 8000).")
@click.option("--data-dir", default=None, help="Where the DB, files, adapters and bases live (default ./data).")
def up(host: str | None, port: int | None, data_dir: str | None) -> None:
    """Run everything in one command: api + inference + a training worker, on embedded defaults."""
    settings = _settings(data_dir, host, port)
    console.print(f"[bold]ftserve[/] data dir: {settings.resolved_data_dir()}")
    console.print(f"  database: {settings.resolved_database_url()}")
    console.print(f"  broker:   {settings.resolved_broker_url()}")
    console.print(f"  storage:  {settings.resolved_storage_url()}")
    _check_storage(settings)
    _migrate(settings)
    _check_exposure(settings)
    _prepare(settings, settings.prepare_bases)
    queues = settings.training_queues()  # one machine: this worker takes every base's jobs
    worker = subprocess.Popen(
        worker_command(settings, "ftserve-up", queues), env=os.environ.copy(), preexec_fn=_die_with_parent
    )
    console.print(f"[green]✓[/] training worker started (pid {worker.pid})")
    console.print(
        f"[bold green]Serving on http://{settings.host}:{settings.port}/v1[/] "
        f"(OpenAPI docs at http://{settings.host}:{settings.port}/docs)"
    )
    try:
        _serve(settings, {"api", "inference"})
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()


@cli.command()
@click.option("--host", default=None)
@click.option("--port", type=int, default=None)
@click.option("--with-inference", is_flag=True, help="Also serve /v1/completions from this process.")
def api(host: str | None, port: int | None, with_inference: bool) -> None:
    """Run the api role (files, fine-tuning jobs, models)."""
    settings = _settings(None, host, port)
    _check_storage(settings)
    _migrate(settings)
    _check_exposure(settings)
    _serve(settings, {"api", "inference"} if with_inference else {"api"})


@cli.command()
@click.option("--host", default=None)
@click.option("--port", type=int, default=None)
def inference(host: str | None, port: int | None) -> None:
    """Run the inference role (/v1/completions, /v1/chat/completions)."""
    settings = _settings(None, host, port)
    _check_storage(settings)
    _check_exposure(settings)
    _serve(settings, {"inference"})


@cli.command()
@click.option("--name", default="ftserve", help="Celery worker name.")
@click.option(
    "--queues",
    default=None,
    help="Comma-separated training queues to take jobs from (each base's `queue` in the registry); "
    "default: ftserve.train.",
)
def worker(name: str, queues: str | None) -> None:
    """Run a training worker (one job at a time)."""
    settings = _settings()
    _check_storage(settings)
    chosen = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    os.execv(sys.executable, worker_command(settings, name, chosen))


@cli.command()
def migrate() -> None:
    """Upgrade the database to the newest schema, and create the object store's bucket if it is missing."""
    from ftserve.core.storage import Storage, StorageUnavailable

    settings = _settings()
    _migrate(settings)
    console.print("[green]✓[/] database at head")
    try:
        Storage(settings).ensure()
    except StorageUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"[green]✓[/] storage ready at {settings.resolved_storage_url()}")


@cli.group()
def keys() -> None:
    """Manage API keys."""


@keys.command("create")
@click.option("--org", required=True, help="Organization the key acts for.")
@click.option("--name", default="", help="A label for the key.")
def keys_create(org: str, name: str) -> None:
    """Create an API key and print it once."""
    from ftserve.control.db.session import session_scope
    from ftserve.control.services.auth import create_key

    settings = _settings()
    _migrate(settings)
    with session_scope(settings) as s:
        key = create_key(s, org, name)
    click.echo(key)
    console.print("[yellow]Store this key now: it is not shown again.[/]")


@cli.group()
def models() -> None:
    """Manage base models."""


@models.command("prepare")
@click.argument("names", nargs=-1)
def models_prepare(names: tuple[str, ...]) -> None:
    """Prepare base models (default: the ones `up` prepares)."""
    settings = _settings()
    _prepare(settings, list(names) or settings.prepare_bases)


@models.command("list")
def models_list() -> None:
    """List registered base models."""
    settings = _settings()
    for name, spec in settings.base_models.items():
        click.echo(f"{name}\t{spec.source}\t{spec.description}")


register_client_commands(cli)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
