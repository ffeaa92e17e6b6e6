"""The deployment files: docker-compose.yml validates with the docker compose client."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    pytest.fail("no docker compose client: make test installs Debian's docker-compose")


def test_compose_config_is_valid() -> None:
    result = subprocess.run([*_compose(), "config", "-q"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_compose_has_every_role() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert {"postgres", "redis", "migrate", "api", "worker", "inference", "gateway"} <= set(services)
    assert services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert services["migrate"]["command"] == ["ftserve", "migrate"]


def test_no_two_roles_share_a_volume_and_artifacts_live_in_the_object_store() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    named: dict[str, list[str]] = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if ":" in volume else None  # "/data" alone is anonymous
            if source and not source.startswith((".", "/")):
                named.setdefault(source, []).append(name)
    assert all(len(users) == 1 for users in named.values()), named
    assert "objectstore" in services
    for role in ("api", "worker", "inference", "migrate"):
        env = services[role]["environment"]
        assert env["FTSERVE_STORAGE_URL"].startswith("s3://") and env["AWS_ENDPOINT_URL"] == "http://objectstore:8333"
