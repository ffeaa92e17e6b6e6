"""A deleted model's adapter copy in a vLLM base's shared dir is gone for certain: the deleted-model sweep
removes the copies a stopped inference role left behind (and those renamed away but not yet deleted), and keeps
the copies of live models. No vLLM server is needed: no replica holds these adapters."""

from __future__ import annotations

import time
from pathlib import Path

from ftserve.control.db.session import session_scope
from ftserve.control.services import catalog
from ftserve.control.services.serving_catalog import SqlModelCatalog
from ftserve.core.config import BaseModelSpec, Settings
from ftserve.serving.backends.vllm import VllmBackend
from ftserve.serving.sweep import unload_deleted


def _copy(folder: Path, name: str) -> Path:
    path = folder / name
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    return path


def test_the_sweep_removes_copies_of_deleted_models_and_keeps_live_ones(settings: Settings, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    spec = BaseModelSpec(source="tiny", backend="vllm", vllm_urls=["http://127.0.0.1:9"], vllm_adapter_dir=str(shared))
    folder = shared / "b"
    live = _copy(folder, "ftjob-live-final")
    deleted = _copy(folder, "ftjob-deleted-7")  # its model was deleted while the role was down
    renamed = _copy(folder, ".ftjob-deleted-final.deleted-99")  # the role stopped between rename and delete
    writing = _copy(folder, ".ftjob-live-3.tmp-5")  # a copy being written: not the sweep's
    with session_scope(settings) as session:
        catalog.register(session, "ft:b:live", "org-test", "b", "ftjob-live", None)
        catalog.register(session, "ft:b:gone", "org-test", "b", "ftjob-deleted", 7)
        catalog.delete(session, settings, "org-test", "ft:b:gone")

    backend = VllmBackend(settings, {"b": spec})
    try:
        assert set(backend.resident_adapters()) == {
            ("b", "ftjob-live-final"),
            ("b", "ftjob-deleted-7"),
            ("b", "ftjob-deleted-final"),
        }
        assert unload_deleted(backend, SqlModelCatalog(settings)) == 2
        deadline = time.monotonic() + 10  # unloading runs on the backend's own loop
        while deleted.exists() or renamed.exists():
            assert time.monotonic() < deadline, sorted(p.name for p in folder.iterdir())
            time.sleep(0.05)
    finally:
        backend.close()
    assert live.is_dir() and writing.is_dir()
    assert sorted(p.name for p in folder.iterdir()) == [writing.name, live.name]
