"""Bad input never gets in and never gets a 5xx: a 200+ file malformed corpus (schemathesis runs in
test_schemathesis.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.malformed import corpus
from tests.servers import Service, start_embedded

MAX_LINE = 65_536
MAX_UPLOAD = 1_000_000
MIN_EXAMPLES = 10


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, bases_dir: Path) -> Iterator[Service]:
    service = start_embedded(
        tmp_path_factory.mktemp("strict"),
        bases_dir,
        FTSERVE_MAX_LINE_BYTES=str(MAX_LINE),
        FTSERVE_MAX_UPLOAD_BYTES=str(MAX_UPLOAD),
        FTSERVE_MIN_TRAINING_EXAMPLES=str(MIN_EXAMPLES),
    )
    yield service
    service.stop()


def test_malformed_corpus_is_rejected_with_code_and_line(strict: Service) -> None:
    cases = corpus(MAX_LINE, MAX_UPLOAD, MIN_EXAMPLES)
    assert len(cases) >= 200
    outcome: Counter[str] = Counter()
    with httpx.Client(base_url=f"{strict.base_url}/v1", timeout=60) as http:
        for case in cases:
            r = http.post("/files", data={"purpose": "fine-tune"}, files={"file": (f"{case.name}.jsonl", case.body)})
            assert r.status_code < 500, (case.name, r.status_code, r.text)
            assert r.status_code == case.status, (case.name, r.status_code, r.text)
            error = r.json()["error"]
            assert error["code"] in case.codes, (case.name, error)
            if case.line is not None:
                assert f"line {case.line}:" in error["message"], (case.name, error["message"])
            elif case.status == 400:
                assert "line " in error["message"], (case.name, error["message"])
            outcome[str(r.status_code)] += 1
        stored = http.get("/files").json()["data"]
    assert outcome["400"] + outcome["413"] == len(cases)
    assert all(f["status"] == "error" and f["status_details"] for f in stored)  # 0 accepted
    assert len(stored) == outcome["400"]
