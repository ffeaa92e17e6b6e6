"""The GPU check's report: the figures gathered by bench/gpu_check.py as Markdown tables (gpu_check.md)."""

from __future__ import annotations

from typing import Any


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def markdown(report: dict[str, Any]) -> str:
    """Every figure of the report: the device, each step's outcome and time, the tests, training, inference."""
    dev = report["device"]
    lines = [
        f"# GPU check ({report['mode']})",
        "",
        f"Device: **{dev['name']}** ({dev['type']}), torch {dev['torch']}, CUDA {dev['cuda'] or '-'}, "
        f"transformers {dev['transformers']}, peft {dev['peft']}; bf16 peak "
        f"{_num(dev['bf16_peak_flops'] and dev['bf16_peak_flops'] / 1e12, '.0f')} TFLOP/s. "
        f"Total {report['seconds']:.0f} s.",
        "",
        "| step | status | seconds | budget s |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| {k} | {s['status']} | {s['seconds']:.0f} | {s['budget_s']} |" for k, s in report["steps"].items()]
    tests = report["tests"]
    lines += ["", "## Tests (pytest -m gpu tests/gpu)", ""]
    lines += [
        f"{tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, {tests['skipped']} skipped",
        "",
    ]
    lines += ["| test | outcome | seconds | note |", "|---|---|---:|---|"]
    lines += [f"| {c['name']} | {c['outcome']} | {c['seconds']:.1f} | {c['message'][:120]} |" for c in tests["cases"]]
    lines += ["", "## Training throughput (bench/train_throughput.py)", ""]
    lines += ["Model FLOPs: 6 x non-embedding parameters per non-padding token (bench/mfu.py).", ""]
    lines += [
        "| model | method | target tok/s | tokens/s | model GFLOP/s | MFU | peak MB | held-out loss |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in report["train"]:
        for m, f in run["methods"].items():
            lines.append(
                f"| {run['model']} | ({m}) {f['label']} | {f['target_tokens_per_s']:.0f} | {f['tokens_per_s']:.0f} | "
                f"{f['model_flops_per_s'] / 1e9:.1f} | {_pct(f['mfu'])} | {f['peak_mb']:.0f} | "
                f"{f['held_out_loss']:.3f} |"
            )
    inf = report["inference"]
    lines += ["", f"## Inference throughput (bench/inference_throughput.py, {inf.get('base', '-')})", ""]
    lines += ["Model FLOPs: 2 x non-embedding parameters per generated token.", ""]
    lines += [
        "| adapters | mode | tokens/s | p50 s | p99 s | model GFLOP/s | MFU | LoRA overhead (d)/(c) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in inf.get("runs", []):
        for r in run["modes"].values():
            lines.append(
                f"| {run['adapters']} | {r['mode']} | {r['tokens_per_s']:.1f} | {r['p50_s']:.3f} | {r['p99_s']:.3f} | "
                f"{r['model_flops_per_s'] / 1e9:.2f} | {_pct(r['mfu'])} | {_num(run['lora_overhead'], '.2f')} |"
            )
    return "\n".join(lines) + "\n"
