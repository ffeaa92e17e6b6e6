"""Training's thread count: OMP_NUM_THREADS when set, else the cores the process may run on."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ftserve.training.threads import _cgroup_quota, training_threads

PROBE = (
    "from ftserve.training.threads import use_training_threads; import torch; "
    "print(use_training_threads(), torch.get_num_threads())"
)


def test_omp_num_threads_wins_else_the_cores_owned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert training_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    owned, quota = len(os.sched_getaffinity(0)), _cgroup_quota()
    assert training_threads() == min(owned, quota or owned)


def test_a_process_pinned_to_one_core_trains_on_one_thread() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    pinned = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}),
        capture_output=True,
        text=True,
        check=True,
    )
    assert pinned.stdout.split() == ["1", "1"]
