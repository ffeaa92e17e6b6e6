"""The object store against a real S3 server (Swift with s3api) and a local directory: whole objects only,
directories visible only once complete, a bounded local cache, and a clear error when the store is away."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ftserve.core.blobstore import COMPLETE, BlobStore, StorageUnavailable
from ftserve.core.config import Settings
from ftserve.core.filecache import FileCache
from ftserve.core.storage import Storage
from tests.s3server import S3Server, make_bucket, start_swift
from tests.servers import FTSERVE, base_env, free_port


@pytest.fixture(scope="module")
def swift(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_swift(tmp_path_factory.mktemp("swift"), "127.0.0.1", free_port())
    make_bucket(server, "store-tests")
    yield server
    server.stop()


@pytest.fixture()
def s3_env(swift: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key, value in swift.env().items():
        monkeypatch.setenv(key, value)
    return swift.env()


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return BlobStore(str(tmp_path / "store"))
    request.getfixturevalue("s3_env")
    return BlobStore(f"s3://store-tests/{tmp_path.name}")


def _adapter_dir(path: Path, payload: bytes = b"weights") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text("{}")
    (path / "adapter_model.safetensors").write_bytes(payload)
    return path


def test_an_upload_appears_whole_or_not_at_all(store: BlobStore) -> None:
    with store.writer("files/a.jsonl") as fh:
        for _ in range(3):
            fh.write(os.urandom(4 * 1024 * 1024))  # 12 MiB: more than one multipart part on S3
    assert store.size("files/a.jsonl") == 12 * 1024 * 1024
    with pytest.raises(RuntimeError), store.writer("files/b.jsonl") as fh:
        fh.write(os.urandom(9 * 1024 * 1024))  # one part already uploaded on S3 …
        raise RuntimeError("the client went away")  # … and the upload is abandoned
    assert not store.exists("files/b.jsonl")
    assert [n for n in store.names("files") if not n.startswith(".")] == ["a.jsonl"]


def test_a_directory_is_visible_only_once_its_marker_is_written(store: BlobStore, tmp_path: Path) -> None:
    local = _adapter_dir(tmp_path / "adapter")
    store.put_dir(local, "jobs/ftjob-a/final")
    assert store.is_complete("jobs/ftjob-a/final")
    assert set(store.names("jobs/ftjob-a/final")) == {COMPLETE, "adapter_config.json", "adapter_model.safetensors"}
    store.get_dir("jobs/ftjob-a/final", tmp_path / "copy")
    assert (tmp_path / "copy" / "adapter_model.safetensors").read_bytes() == b"weights"
    store.delete(f"jobs/ftjob-a/final/{COMPLETE}")  # as if the writer died before the marker
    assert not store.is_complete("jobs/ftjob-a/final")
    with pytest.raises(FileNotFoundError):
        store.get_dir("jobs/ftjob-a/final", tmp_path / "copy2")
    store.delete_dir("jobs/ftjob-a/final")
    assert store.names("jobs/ftjob-a/final") == []


def test_listing_gives_each_entry_with_its_newest_time(store: BlobStore, tmp_path: Path) -> None:
    store.put_dir(_adapter_dir(tmp_path / "a"), "jobs/ftjob-b/ckpt-step-3")
    store.put_dir(_adapter_dir(tmp_path / "b"), "jobs/ftjob-b/ckpt-step-6")
    listing = dict(store.listing("jobs/ftjob-b"))
    assert set(listing) == {"ckpt-step-3", "ckpt-step-6"}
    assert all(stamp > 0 for stamp in listing.values())


def test_the_cache_keeps_copies_within_its_byte_limit(tmp_path: Path, s3_env: dict[str, str]) -> None:
    store = BlobStore("s3://store-tests/cache-test")
    for i in range(3):
        store.put_dir(_adapter_dir(tmp_path / f"a{i}", os.urandom(1000)), f"jobs/ftjob-c/ckpt-step-{i}")
    cache = FileCache(tmp_path / "cache", max_bytes=2500)  # room for two adapters of ~1 kB
    first = cache.directory(store, "jobs/ftjob-c/ckpt-step-0")
    assert first is not None and (first / "adapter_model.safetensors").stat().st_size == 1000
    cache.directory(store, "jobs/ftjob-c/ckpt-step-1")
    cache.directory(store, "jobs/ftjob-c/ckpt-step-0")  # used again: now the newest
    cache.directory(store, "jobs/ftjob-c/ckpt-step-2")  # evicts the least recently used: step 1
    kept = sorted(p.name for p, _, _ in cache.entries())
    assert kept == ["ckpt-step-0", "ckpt-step-2"]
    assert sum(size for _, size, _ in cache.entries()) <= 2500
    assert cache.directory(store, "jobs/ftjob-c/ckpt-step-9") is None  # nothing complete there


def test_storage_keys_and_local_copies_on_s3(tmp_path: Path, s3_env: dict[str, str]) -> None:
    settings = Settings(data_dir=tmp_path / "data", storage_url="s3://store-tests/keys", cache_max_bytes=10**9)
    storage = Storage(settings)
    storage.write_bytes("file-abc", b'{"prompt": "a", "completion": "b"}\n')
    assert storage.local_file("file-abc").read_bytes().startswith(b'{"prompt"')
    staged = storage.staging_dir(storage.adapter_key("ftjob-d", None))
    _adapter_dir(staged)
    storage.promote(staged, storage.adapter_key("ftjob-d", None))
    assert not staged.exists()
    path = storage.adapter_if_complete("ftjob-d", None)
    assert path is not None and path.is_relative_to(settings.resolved_cache_dir())
    assert [e.name for e in storage.job_entries("ftjob-d")] == ["final"]
    assert storage.job_ids() == ["ftjob-d"]
    storage.delete_adapter("ftjob-d", None)
    assert storage.adapter_if_complete("ftjob-d", None) is None and not path.exists()


def test_an_unreachable_store_is_an_error_naming_its_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    with pytest.raises(StorageUnavailable) as err:
        BlobStore("s3://nowhere/prefix", attempts=2).check()
    assert "s3://nowhere/prefix" in str(err.value)
    # The roles refuse to start, saying which store, instead of failing on the first request.
    env = base_env(
        tmp_path,
        tmp_path,
        FTSERVE_STORAGE_URL="s3://nowhere/prefix",
        AWS_ENDPOINT_URL=dead,
        AWS_ACCESS_KEY_ID="x",
        AWS_SECRET_ACCESS_KEY="y",
        AWS_MAX_ATTEMPTS="1",
    )
    started = subprocess.run([*FTSERVE, "api", "--port", str(free_port())], env=env, capture_output=True, text=True)
    assert started.returncode != 0
    assert "s3://nowhere/prefix" in started.stderr and "unreachable" in started.stderr
