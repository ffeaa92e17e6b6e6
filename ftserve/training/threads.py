"""How many intra-op threads a training process uses: the cores it owns, unless OMP_NUM_THREADS says."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def training_threads() -> int:
    """OMP_NUM_THREADS when set (the gang supervisor and the test harness share a host's cores out that way),
    else the cores this process may run on: its affinity mask (a worker pinned to cores gets those, not the
    host's count), capped by a cgroup CPU quota (a container limited to 2 CPUs of a 64-core host gets 2)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    owned = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(owned, quota) if quota else owned)


def _cgroup_quota() -> int | None:
    """The cgroup v2 CPU quota in whole CPUs (rounded up), None when unlimited or unknown."""
    try:
        limit, period = CPU_MAX.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if limit == "max":
        return None
    return max(1, math.ceil(int(limit) / int(period)))


def use_training_threads() -> int:
    """Set torch's intra-op threads to training_threads(); the count set."""
    n = training_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
