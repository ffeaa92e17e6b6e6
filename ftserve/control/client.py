"""A small httpx client for ftserve's /v1 API, used by the `ftserve` client commands (app/client_cli.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, BinaryIO

import click
import httpx
from rich.progress import Progress


class Client:
    """A thin httpx client for ftserve's /v1 API; errors become ClickExceptions with the envelope's message."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(
            base_url=base_url.rstrip("/") + "/", headers=headers, timeout=httpx.Timeout(60.0, read=600.0)
        )

    @staticmethod
    def check(response: httpx.Response) -> None:
        """Raise a ClickException naming the error's code and message for any non-2xx response."""
        if response.is_success:
            return
        try:
            error = response.json()["error"]
            message, code = error.get("message"), error.get("code")
        except (ValueError, KeyError, TypeError):
            message, code = response.text[:500], None
        raise click.ClickException(f"{response.status_code} {code or 'error'}: {message}")

    def call(self, method: str, path: str, **kw: Any) -> Any:
        """Send one request and return its JSON body."""
        try:
            response = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise click.ClickException(f"cannot reach {self.http.base_url}: {exc}") from None
        self.check(response)
        return response.json()

    def new_events(self, job_id: str, last_id: str | None) -> list[dict[str, Any]]:
        """Events newer than `last_id` (all when None), oldest first; the API pages newest first."""
        out: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 100, **({"after": after} if after else {})}
            page = self.call("GET", f"fine_tuning/jobs/{job_id}/events", params=params)
            for event in page["data"]:
                if event["id"] == last_id:
                    return out[::-1]
                out.append(event)
            if not page["has_more"] or not page["data"]:
                return out[::-1]
            after = page["data"][-1]["id"]

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST with stream=true and yield each SSE `data:` chunk until `[DONE]`."""
        with self.http.stream("POST", path, json={**body, "stream": True}) as response:
            if not response.is_success:
                response.read()
                self.check(response)
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    return
                yield json.loads(payload)


class ProgressReader:
    """A file wrapper that advances a progress bar as httpx reads the upload body from it."""

    def __init__(self, f: BinaryIO, progress: Progress, task: Any, when_sent: str = "") -> None:
        self.f, self.progress, self.task, self.when_sent = f, progress, task, when_sent

    def fileno(self) -> int:
        return self.f.fileno()  # lets httpx send a Content-Length instead of chunked encoding

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def read(self, n: int = -1) -> bytes:
        chunk = self.f.read(n)
        self.progress.update(self.task, completed=self.f.tell())
        if not chunk and self.when_sent:
            self.progress.update(self.task, description=self.when_sent)
        return chunk
