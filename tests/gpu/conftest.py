"""The GPU check's device for every test marked gpu: CUDA, or the CPU in bench/gpu_check.py's dry mode; skipped
where there is neither."""

from __future__ import annotations

import pytest

from tests.gpu.target import Target, find_target


@pytest.fixture(scope="session")
def target() -> Target:
    """The check's device and dtype (tests/gpu/target.py); skips the test where there is none."""
    try:
        found = find_target()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    if isinstance(found, str):
        pytest.skip(found)
    return found
