"""The deployment files: docker-compose.yml validates with the docker compose client."""

from __future__ import annotations

import json
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
    # vLLM reads weights and adapters from files: the vllm profile's two volumes are the only shared ones,
    # each between vLLM and the one service that writes it (vLLM mounts both read-only).
    shared = {k: sorted(v) for k, v in named.items() if len(v) > 1}
    assert shared == {"vllm-adapters": ["inference", "vllm"], "vllm-bases": ["vllm", "vllm-prepare"]}, named
    assert all(v.endswith(":ro") for v in services["vllm"]["volumes"])
    assert "objectstore" in services
    for role in ("api", "worker", "inference", "migrate"):
        env = services[role]["environment"]
        assert env["FTSERVE_STORAGE_URL"].startswith("s3://") and env["AWS_ENDPOINT_URL"] == "http://objectstore:8333"


def test_vllm_profile_serves_the_default_base_through_vllm_beside_inference() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    vllm = services["vllm"]
    assert vllm["profiles"] == ["vllm"] and vllm["image"].startswith("vllm/vllm-openai:")
    assert "--enable-lora" in vllm["command"] and vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "--model=/bases/smollm2-135m-instruct" in vllm["command"]
    assert "profiles" not in services["inference"]  # the inference role runs in both layouts
    result = subprocess.run(
        [*_compose(), "--profile", "vllm", "--env-file", "deploy/vllm.env", "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    env = yaml.safe_load(result.stdout)["services"]["inference"]["environment"]
    from ftserve.core.config import Settings

    settings = Settings(vllm_backends=json.loads(env["FTSERVE_VLLM_BACKENDS"]))
    spec = settings.base_models["smollm2-135m-instruct"]
    assert spec.backend == "vllm" and spec.vllm_urls == ["http://vllm:8000"] and spec.vllm_adapter_dir == "/adapters"
