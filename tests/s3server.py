"""A real S3 server for tests: OpenStack Swift (proxy, account, container and object servers, one replica)
with its s3api and tempauth middleware, from its own virtualenv (`make swift`), on a loopback or bridge address."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.servers import Proc

ROOT = Path(__file__).resolve().parents[1]
SWIFT_VENV = Path(os.environ.get("FTSERVE_TEST_SWIFT_VENV", ROOT / ".venv-swift"))
ACCESS_KEY, SECRET_KEY = "test:tester", "testing"  # tempauth's user `tester` of account `test`
REGION = "us-east-1"

# Swift reads /etc/swift/swift.conf unless told otherwise; this runs a server with the test's own file.
_RUN = """
import sys
import swift.common.utils as utils
utils.SWIFT_CONF_FILE = sys.argv[1]
from swift.common.wsgi import run_wsgi
sys.exit(run_wsgi(sys.argv[2], sys.argv[3]))
"""

_SERVER = """[DEFAULT]
bind_ip = {ip}
bind_port = {port}
workers = 0
swift_dir = {etc}
devices = {devices}
mount_check = false
log_level = WARNING

[pipeline:main]
pipeline = {kind}-server

[app:{kind}-server]
use = egg:swift#{kind}
"""

_PROXY = """[DEFAULT]
bind_ip = {ip}
bind_port = {port}
workers = 0
swift_dir = {etc}
log_level = WARNING

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging listing_formats s3api tempauth copy slo dlo
    proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
[filter:s3api]
use = egg:swift#s3api
location = {region}
[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = {secret} .admin
"""


@dataclass
class S3Server:
    """A running Swift: its S3 endpoint, credentials, and the processes behind it."""

    endpoint: str
    procs: list[Proc]

    def env(self) -> dict[str, str]:
        """The standard AWS variables a client (boto3, s3fs, ftserve) needs to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
        }

    def stop(self) -> None:
        for p in self.procs:
            p.stop()

    def restart(self) -> None:
        """Start the same servers again on the same disk (an outage ends; every object is still there)."""
        self.procs = [Proc(p.args, p.env, p.log_path.with_suffix(".again.log")) for p in self.procs]
        _wait(self)


def _python() -> str:
    python = SWIFT_VENV / "bin" / "python"
    if not python.exists():
        raise RuntimeError(f"Swift's virtualenv is missing at {SWIFT_VENV}: run `make swift` (make test does)")
    return str(python)


def _rings(etc: Path, ip: str, ports: dict[str, int]) -> None:
    builder = str(SWIFT_VENV / "bin" / "swift-ring-builder")
    for kind, port in ports.items():
        b = str(etc / f"{kind}.builder")
        for args in (["create", "6", "1", "1"], ["add", f"r1z1-{ip}:{port}/d1", "1"], ["rebalance"]):
            subprocess.run([builder, b, *args], check=True, capture_output=True)


def start_swift(root: Path, ip: str, port: int) -> S3Server:
    """Swift with s3api on ip:port (account, container and object servers on the next three ports)."""
    etc, devices = root / "etc", root / "srv"
    etc.mkdir(parents=True)
    (devices / "d1").mkdir(parents=True)
    (etc / "swift.conf").write_text(
        "[swift-hash]\nswift_hash_path_suffix = ftserve\nswift_hash_path_prefix = ftserve\n"
        "[storage-policy:0]\nname = gold\ndefault = yes\n"
    )
    ports = {"object": port + 1, "container": port + 2, "account": port + 3}
    _rings(etc, ip, ports)
    for kind, p in ports.items():
        (etc / f"{kind}-server.conf").write_text(_SERVER.format(ip=ip, port=p, etc=etc, devices=devices, kind=kind))
    (etc / "proxy-server.conf").write_text(_PROXY.format(ip=ip, port=port, etc=etc, region=REGION, secret=SECRET_KEY))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [
        Proc([_python(), "-c", _RUN, str(etc / "swift.conf"), str(etc / f"{kind}-server.conf"), f"{kind}-server"],
             env, root / f"{kind}.log")
        for kind in ("account", "container", "object", "proxy")
    ]
    server = S3Server(f"http://{ip}:{port}", procs)
    _wait(server)
    return server


def _wait(server: S3Server) -> None:
    procs = server.procs
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        dead = [p for p in procs if not p.alive()]
        if dead:
            server.stop()
            raise RuntimeError(f"Swift exited early:\n{dead[0].output()}")
        try:
            if httpx.get(f"{server.endpoint}/healthcheck", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise TimeoutError("Swift did not come up:\n" + "\n".join(p.output() for p in procs))


def make_bucket(server: S3Server, bucket: str) -> None:
    """Create a bucket with boto3 (SigV4, path-style), as an operator would."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
        config=Config(s3={"addressing_style": "path"}),
    )
    client.create_bucket(Bucket=bucket)


if __name__ == "__main__":  # a manual check: python -m tests.s3server DIR
    s = start_swift(Path(sys.argv[1]), "127.0.0.1", 18080)
    make_bucket(s, "check")
    print("up at", s.endpoint)
    s.stop()
