"""Artifacts in S3 (a real Swift server on loopback) against the local default, through real `ftserve up` servers.

    python bench/storage_throughput.py --bases-dir DIR [--mb 100] [--runs 3]

(a) uploading a training file of --mb MB (streamed in multipart parts, then validated) through POST /v1/files;
(b) the first completion on a fine-tuned model the inference role has never loaded (cold: on S3 the adapter is
    fetched into the local cache, then loaded) against the next ones (the adapter resident: nothing is fetched).
Figures go to docs/performance.md; state the CPU with them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tests.s3server import make_bucket, start_swift
from tests.servers import Service, free_port, start_embedded

ROWS = [{"prompt": f"The number {i} is", "completion": f" {i} and {'x' * 40}"} for i in range(1000)]


def _training_file(path: Path, mb: int) -> Path:
    chunk = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    with path.open("wb") as out:
        for _ in range(mb * 1024 * 1024 // len(chunk) + 1):
            out.write(chunk)
    return path


def _upload_s(client: httpx.Client, path: Path) -> float:
    start = time.perf_counter()
    with path.open("rb") as fh:
        r = client.post("/v1/files", files={"file": ("big.jsonl", fh)}, data={"purpose": "fine-tune"})
    r.raise_for_status()
    return time.perf_counter() - start


def _fine_tune(client: httpx.Client, small: Path) -> str:
    with small.open("rb") as fh:
        file_id = client.post("/v1/files", files={"file": ("s.jsonl", fh)}, data={"purpose": "fine-tune"}).json()["id"]
    job = client.post(
        "/v1/fine_tuning/jobs",
        json={"model": "ftserve-tiny", "training_file": file_id, "hyperparameters": {"n_epochs": 1, "batch_size": 4}},
    ).json()
    while True:
        job = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            assert job["status"] == "succeeded", job
            return str(job["fine_tuned_model"])
        time.sleep(0.2)


def _completion_s(client: httpx.Client, model: str) -> float:
    start = time.perf_counter()
    body = {"model": model, "prompt": "The number 7 is", "max_tokens": 1, "temperature": 0}
    client.post("/v1/completions", json=body).raise_for_status()
    return time.perf_counter() - start


def measure(service: Service, big: Path, small: Path, runs: int) -> dict[str, float]:
    with httpx.Client(base_url=service.base_url, timeout=600) as client:
        uploads = [_upload_s(client, big) for _ in range(runs)]
        colds, hots = [], []
        for _ in range(runs):
            model = _fine_tune(client, small)
            colds.append(_completion_s(client, model))
            hots.extend(_completion_s(client, model) for _ in range(5))
    mb = big.stat().st_size / 2**20
    return {
        "upload_MBps": mb / statistics.median(uploads),
        "cold_first_ms": 1000 * statistics.median(colds),
        "hot_ms": 1000 * statistics.median(hots),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bases-dir", type=Path, required=True)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ftserve-storage-bench-"))
    big = _training_file(root / "big.jsonl", args.mb)
    small = root / "small.jsonl"
    small.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:12]))
    swift = start_swift(root / "swift", "127.0.0.1", free_port())
    results = {}
    try:
        make_bucket(swift, "bench")
        for mode, extra in (("local", {}), ("s3", {"FTSERVE_STORAGE_URL": "s3://bench/ftserve", **swift.env()})):
            data = root / mode
            data.mkdir()
            service = start_embedded(data, args.bases_dir, **extra)
            try:
                results[mode] = measure(service, big, small, args.runs)
            finally:
                service.stop()
    finally:
        swift.stop()
    print(f"CPU: {platform.processor() or platform.machine()}; {big.stat().st_size / 2**20:.0f} MB file")
    for mode, r in results.items():
        print(
            f"{mode:5s} upload {r['upload_MBps']:.1f} MB/s  first completion on a new adapter "
            f"{r['cold_first_ms']:.0f} ms  later ones {r['hot_ms']:.1f} ms"
        )
    local, s3 = results["local"], results["s3"]
    print(
        f"S3/local: upload throughput {s3['upload_MBps'] / local['upload_MBps']:.2f}x, "
        f"cold first use {s3['cold_first_ms'] / local['cold_first_ms']:.2f}x, "
        f"resident use {s3['hot_ms'] / local['hot_ms']:.2f}x"
    )


if __name__ == "__main__":
    main()
