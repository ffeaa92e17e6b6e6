"""Several hosts on one machine for tests: Linux network namespaces joined to a bridge by veth pairs.

Each host is a namespace with only its loopback and one veth: it has its own address and reaches nothing
but the bridge's address, where the test serves (or forwards to) Postgres, Redis and the object store.
So a process in a host can neither see the machine's loopback services nor another host's disk paths
unless the test hands them over.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import Proc, xdist_index


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def available() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"ftprobe{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", probe)
    except subprocess.CalledProcessError as exc:
        return f"`ip netns add` failed: {exc.stderr.decode(errors='replace').strip()}"
    _ip("netns", "del", probe)
    return None


@dataclass
class Host:
    """One namespace: its name and address; processes started in it see only the bridge."""

    name: str
    ip: str

    def start(self, args: list[str], env: dict[str, str], log: Path) -> Proc:
        return Proc(["ip", "netns", "exec", self.name, *args], env, log)

    def run(self, args: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *args], capture_output=True, text=True, timeout=timeout, check=False
        )


@dataclass
class Network:
    """A bridge at 10.77.N.1/24 in the root namespace and hosts at 10.77.N.10, .11, …"""

    # Each xdist process of a run draws from its own range, so two processes' bridges never share a subnet.
    net: int = field(default_factory=lambda: 100 + 50 * (xdist_index() % 3) + secrets.randbelow(50))
    hosts: list[Host] = field(default_factory=list)
    _tag: str = field(default_factory=lambda: secrets.token_hex(2))
    _forwarders: list[_Forwarder] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"ftbr{self._tag}"

    @property
    def gateway(self) -> str:
        return f"10.77.{self.net}.1"

    def up(self) -> Network:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def add_host(self, label: str) -> Host:
        i = len(self.hosts)
        ns, outer, inner = f"ft{self._tag}{label}"[:15], f"fv{self._tag}{i}h", f"fv{self._tag}{i}n"
        host = Host(ns, f"10.77.{self.net}.{10 + i}")
        _ip("netns", "add", ns)
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", ns)
        _ip("link", "set", outer, "master", self.bridge)
        _ip("link", "set", outer, "up")
        _ip("netns", "exec", ns, "ip", "addr", "add", f"{host.ip}/24", "dev", inner)
        _ip("netns", "exec", ns, "ip", "link", "set", inner, "up")
        _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        self.hosts.append(host)
        return host

    def forward(self, port: int, target_port: int | None = None) -> None:
        """Serve gateway:port by relaying to 127.0.0.1:target_port (a service that listens on loopback only)."""
        fwd = _Forwarder(self.gateway, port, "127.0.0.1", target_port or port)
        fwd.start()
        self._forwarders.append(fwd)

    def down(self) -> None:
        for fwd in self._forwarders:
            fwd.stop()
        for host in self.hosts:
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", host.name)  # takes its end of the veth (and so the pair) with it
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", self.bridge)


class _Forwarder:
    """A TCP relay in a background thread: every connection to (host, port) is piped to (to_host, to_port)."""

    def __init__(self, host: str, port: int, to_host: str, to_port: int) -> None:
        self.host, self.port, self.to_host, self.to_port = host, port, to_host, to_port
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"forward-{port}", daemon=True)

    def start(self) -> None:
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError(f"forwarder on {self.host}:{self.port} did not start")

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._relay, self.host, self.port))
        self.ready.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.to_host, self.to_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
