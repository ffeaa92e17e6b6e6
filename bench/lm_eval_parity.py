"""lm-eval through ftserve: a small multiple-choice task from a local file, scored by lm-eval's
`local-completions` (token-id requests, echo + logprobs) against a real ftserve server and by lm-eval's `hf`
backend on the same model directory; per-choice loglikelihoods and accuracy must agree.

    python bench/lm_eval_parity.py                       # SmolLM2-135M-Instruct (docs/api.md has the figures)
    python bench/lm_eval_parity.py --base ftserve-tiny

No hub access: the task is a yaml + jsonl written to a temporary folder (the `json` dataset builder reads it),
the tokenizer and weights are the prepared base's directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TASK = "ftserve_animals"
# (question, choices, index of the answer): the kind of item lm-eval's multiple-choice tasks hold.
ITEMS = [
    ("What does a cat say?", [" meow", " woof", " moo", " quack"], 0),
    ("What does a dog say?", [" moo", " woof", " tweet", " baa"], 1),
    ("What does a cow say?", [" neigh", " hoot", " moo", " meow"], 2),
    ("What does a duck say?", [" woof", " baa", " roar", " quack"], 3),
    ("What colour is the sky on a clear day?", [" blue", " green", " red", " black"], 0),
    ("How many legs does a spider have?", [" six", " eight", " four", " ten"], 1),
    ("What is the capital of France?", [" Berlin", " Madrid", " Paris", " Rome"], 2),
    ("Which animal is known as the king of the jungle?", [" mouse", " rabbit", " snail", " lion"], 3),
    ("What do bees make?", [" honey", " milk", " silk", " wool"], 0),
    ("What is frozen water called?", [" steam", " ice", " sand", " glass"], 1),
]


def write_task(folder: Path) -> Path:
    """The task's yaml and its jsonl test split in `folder`; returns the folder (lm-eval's include_path)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "animals.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in ITEMS))
    (folder / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    return folder


def evaluate(model: str, model_args: dict[str, Any], task_dir: Path) -> tuple[float, list[list[float]]]:
    """(accuracy, per item the loglikelihood of each choice) from lm-eval's own run of the task."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=[TASK],
        task_manager=TaskManager(include_path=str(task_dir)),
        log_samples=True,
        num_fewshot=0,
    )
    assert out is not None
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    scores = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    return float(out["results"][TASK]["acc,none"]), scores


def local_completions_args(base_url: str, model: str, tokenizer_dir: Path) -> dict[str, Any]:
    """lm-eval's defaults (token-id requests) against an ftserve server; batches of 4 prompts per request."""
    return {
        "model": model,
        "base_url": f"{base_url}/v1/completions",
        "tokenizer": str(tokenizer_dir),
        "tokenizer_backend": "huggingface",
        "batch_size": 4,
        "num_concurrent": 2,
        "max_retries": 1,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="smollm2-135m-instruct")
    ap.add_argument("--data", type=Path, default=Path("data/bench"), help="holds bases/ (prepared once)")
    ap.add_argument("--dtype", default=None, help="serve and score in this dtype (default: ftserve's for the CPU)")
    args = ap.parse_args()

    import torch

    from ftserve.core.config import Settings
    from ftserve.models.bases import prepare_base, resolve_dtype
    from tests.servers import Proc, base_env, free_port, wait_http

    bases = args.data.resolve() / "bases"
    settings = Settings(data_dir=args.data, bases_dir=bases)
    path = prepare_base(settings, args.base, lambda m: print(m, file=sys.stderr))
    if args.dtype:
        settings.base_models[args.base].dtype = args.dtype
    dtype = str(resolve_dtype(settings.base_models[args.base], torch.device("cpu"))).removeprefix("torch.")
    registry = json.dumps({name: spec.model_dump() for name, spec in settings.base_models.items()})
    with tempfile.TemporaryDirectory(prefix="ftserve-lm-eval-") as tmp:
        task_dir = write_task(Path(tmp) / "task")
        port = free_port()
        env = base_env(Path(tmp), bases, FTSERVE_PREPARE_BASES=json.dumps([args.base]), FTSERVE_BASE_MODELS=registry)
        cmd = [sys.executable, "-m", "ftserve", "api", "--with-inference", "--port", str(port)]
        proc = Proc(cmd, env, Path(tmp) / "server.log")
        try:
            wait_http(f"http://127.0.0.1:{port}/health", [proc])
            started = time.perf_counter()
            lc_args = local_completions_args(f"http://127.0.0.1:{port}", args.base, path)
            served = evaluate("local-completions", lc_args, task_dir)
            served_s = time.perf_counter() - started
        finally:
            proc.stop()
        started = time.perf_counter()
        hf = evaluate("hf", {"pretrained": str(path), "dtype": dtype, "device": "cpu", "batch_size": 4}, task_dir)
        hf_s = time.perf_counter() - started
    diff = max(abs(a - b) for sa, sb in zip(served[1], hf[1], strict=True) for a, b in zip(sa, sb, strict=True))
    print(f"base {args.base} ({dtype}), {len(ITEMS)} items x 4 choices")
    print(f"local-completions via ftserve: acc {served[0]:.2f} ({served_s:.1f} s)")
    print(f"hf backend:                    acc {hf[0]:.2f} ({hf_s:.1f} s)")
    print(f"largest per-choice loglikelihood difference: {diff:.2e}")


if __name__ == "__main__":
    main()
