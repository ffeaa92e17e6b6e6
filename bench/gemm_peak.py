"""The machine's measured matmul peak for a training step: the step's own GEMM shapes, timed alone, per dtype.

Shapes (from the model's config, so any base works): for each row count M a step feeds, the forward
x·Wᵀ of every projection a decoder layer has (q/o: hidden→hidden, k/v: hidden→kv, gate/up: hidden→intermediate,
down: intermediate→hidden) and the backward's input-gradient dy·W of each (the transposed shape); the LM head
forward and input-gradient at the row counts of the loss positions. LoRA's rank-r products are left out: they
are a few percent of the FLOPs and cannot run near peak.

The rule: each shape is run for one warm-up call, then timed over 3 windows of at least `window_s` seconds each
(0.1 s; back-to-back calls into one output buffer); its rate is its best window (FLOPs = 2·M·K·N per call). The
**measured peak** of a dtype is the highest rate over its shapes: the best the BLAS sustains on this step's
shapes, in this process's thread setting. A dtype the CPU has no fast kernels for (bf16 without AVX512-BF16
or AMX, where it is emulated: under 5 GFLOP/s on a probe) is timed on its smallest row count only, without the
LM head, so that it costs seconds, not hours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

ROWS = (512, 1024, 2048, 4096)  # tokens per GEMM call a step feeds (one packed row or padded micro-batch)
HEAD_ROWS = (256, 1024)  # LM-head positions per call (loss positions only, for ftserve)
SLOW_GFLOPS = 5.0


@dataclass(frozen=True)
class Shape:
    name: str
    m: int
    k: int
    n: int

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.k * self.n


def step_shapes(config: Any, rows: tuple[int, ...] = ROWS, head_rows: tuple[int, ...] = HEAD_ROWS) -> list[Shape]:
    """Forward and input-gradient GEMMs of a decoder layer at each row count, and the LM head's."""
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads) * head_dim
    inter = int(config.intermediate_size)
    vocab = int(config.vocab_size)
    projections = {"q/o": (hidden, heads * head_dim), "k/v": (hidden, kv), "gate/up": (hidden, inter)}
    projections["down"] = (inter, hidden)
    out = []
    for m in rows:
        for name, (k, n) in projections.items():
            out.append(Shape(f"{name} fwd", m, k, n))
            out.append(Shape(f"{name} dx", m, n, k))
    for m in head_rows:
        out += [Shape("head fwd", m, hidden, vocab), Shape("head dx", m, vocab, hidden)]
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_shape(shape: Shape, dtype: torch.dtype, device: torch.device, window_s: float) -> float:
    """The shape's best-window rate in FLOP/s (see the module's rule)."""
    a = torch.randn(shape.m, shape.k, dtype=dtype, device=device)
    b = torch.randn(shape.n, shape.k, dtype=dtype, device=device).t()  # a weight as nn.Linear holds it: [n, k]
    out = torch.empty(shape.m, shape.n, dtype=dtype, device=device)
    torch.mm(a, b, out=out)
    _sync(device)
    best = 0.0
    for _ in range(3):
        calls = 0
        start = time.perf_counter()
        while True:
            torch.mm(a, b, out=out)
            calls += 1
            if device.type == "cuda" and calls % 8:
                continue
            _sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= window_s:
                break
        best = max(best, shape.flops * calls / elapsed)
    return best


def measure(
    config: Any, dtypes: list[torch.dtype], device: torch.device, window_s: float = 0.1
) -> dict[str, dict[str, Any]]:
    """Per dtype: its measured peak (FLOP/s), the shape that reached it, and every shape's rate."""
    report: dict[str, dict[str, Any]] = {}
    for dtype in dtypes:
        shapes = step_shapes(config)
        probe = Shape("probe", 256, int(config.hidden_size), int(config.hidden_size))
        slow = time_shape(probe, dtype, device, 0.05) < SLOW_GFLOPS * 1e9
        if slow:  # no native kernels: the smallest row count only, no LM head (one call would take minutes)
            shapes = step_shapes(config, rows=(ROWS[0],), head_rows=())
        rates = {f"{s.name} {s.m}x{s.k}x{s.n}": time_shape(s, dtype, device, window_s) for s in shapes}
        best = max(rates, key=lambda key: rates[key])
        name = str(dtype).removeprefix("torch.")
        report[name] = {"peak_flops": rates[best], "peak_shape": best, "slow": slow, "rates": rates}
    return report
