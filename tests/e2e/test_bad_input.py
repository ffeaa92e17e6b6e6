"""Bad input never gets in and never gets a 5xx: a 200+ file malformed corpus, and schemathesis on the API."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

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


# 0 server errors and no schema violations. Not positive_data_acceptance: a schema cannot say which file
# contents or ids are valid, so schema-valid requests are often (rightly) refused with a 400 or 404.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _limit_generation(case: schemathesis.Case) -> None:
    if case.path in ("/v1/completions", "/v1/chat/completions") and isinstance(case.body, dict):
        # Keep generation short so the run stays quick; every other field stays whatever was generated.
        case.body["max_tokens"] = 4
        case.body.pop("max_completion_tokens", None)


def test_schemathesis_finds_no_server_errors_or_schema_violations(strict: Service) -> None:
    """Property-based requests for every operation in ftserve's own OpenAPI schema."""
    schema = schemathesis.openapi.from_url(f"{strict.base_url}/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: schemathesis.Case) -> None:
            _limit_generation(case)
            case.call_and_validate(checks=CHECKS)

        try:
            run()
        except Exception as exc:  # every operation is tried; all failures are reported together
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}"[:2000])
    assert operations >= 15
    assert not failures, "\n\n".join(failures)
