"""Where the GPU check's tests run (CUDA, or the CPU in bench/gpu_check.py's dry mode) and how they compare two
trainings of the same step there."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

DEVICE_ENV = "FTSERVE_GPU_CHECK_DEVICE"


@dataclass(frozen=True)
class Target:
    """The device and the dtype the bases compute in there (bf16: the CUDA path under test)."""

    device: torch.device
    dtype: str

    @property
    def dry(self) -> bool:
        return self.device.type == "cpu"


def find_target() -> Target | str:
    """CUDA when torch sees it, the CPU when FTSERVE_GPU_CHECK_DEVICE=cpu; else why neither (a skip reason).
    A misconfigured check (the dry mode with CUDA visible, or CUDA asked for and absent) raises instead."""
    wanted = os.environ.get(DEVICE_ENV, "")
    if wanted == "cpu":
        if torch.cuda.is_available():  # the engine picks CUDA whenever it sees one: a dry run must hide it
            raise RuntimeError(f"{DEVICE_ENV}=cpu needs CUDA hidden (CUDA_VISIBLE_DEVICES=), as gpu_check --cpu does")
        return Target(torch.device("cpu"), "bfloat16")
    if torch.cuda.is_available():
        return Target(torch.device("cuda"), "bfloat16")
    if wanted == "cuda":
        raise RuntimeError(f"{DEVICE_ENV}=cuda but torch sees no CUDA device")
    return f"no CUDA device, and {DEVICE_ENV} is not 'cpu' (bench/gpu_check.py --cpu runs these on the CPU)"


def assert_same_update(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], lr: float, dry: bool) -> None:
    """Two runs of the same optimizer step left the same LoRA weights: bit for bit on the CPU, whose kernels are
    deterministic; on CUDA, within what a backward that sums in another order from run to run explains.

    CUDA's attention backward may accumulate in a different order each run, so gradients agree to bf16 rounding
    only; AdamW turns that into a small fraction of lr in well-conditioned elements and at most about lr in an
    element whose gradient is at rounding level. Lost optimizer state, a wrong schedule or a dropped gradient move
    most elements by O(lr): the RMS bound is a hundred times below that.
    """
    assert got.keys() == expected.keys() and got
    worst = max(float((got[k] - expected[k]).abs().max()) for k in got)
    if dry:
        assert worst == 0.0, worst
        return
    rms = max(float((got[k] - expected[k]).pow(2).mean().sqrt()) for k in got)
    assert rms <= 1e-2 * lr and worst <= lr, (rms, worst, lr)
