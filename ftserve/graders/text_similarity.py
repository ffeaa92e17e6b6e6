"""text_similarity: each metric computed by the library that defines it (rapidfuzz, sacrebleu, nltk,
rouge-score, sentence-transformers), never by hand; `meteor` (WordNet) and `cosine` (an embedding model) are
refused by name on a host that lacks what they read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ftserve.core.config import get_settings
from ftserve.core.errors import bad_request
from ftserve.core.schemas.graders import TextSimilarityGrader
from ftserve.graders import embeddings, templates, wordnet
from ftserve.graders.base import GradeResult, Sample


def fuzzy_match(given: str, reference: str) -> float:
    """rapidfuzz's normalized Indel similarity (fuzz.ratio), scaled to [0, 1]."""
    from rapidfuzz import fuzz

    return float(fuzz.ratio(given, reference)) / 100.0


def bleu(given: str, reference: str) -> float:
    """sacrebleu's sentence BLEU (its default 13a tokenizer, exponential smoothing), scaled to [0, 1]."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(given, [reference]).score) / 100.0


def gleu(given: str, reference: str) -> float:
    """NLTK's sentence GLEU (Google-BLEU, Wu et al. 2016) over whitespace tokens."""
    from nltk.translate.gleu_score import sentence_gleu

    return float(sentence_gleu([reference.split()], given.split()))


def meteor(given: str, reference: str) -> float:
    """NLTK's METEOR (exact, Porter-stem and WordNet-synonym matches) over whitespace tokens, with the WordNet at
    FTSERVE_WORDNET_DIR."""
    from nltk.translate.meteor_score import meteor_score

    with wordnet.lock():
        reader = wordnet.reader(get_settings().wordnet_dir)
        return float(meteor_score([reference.split()], given.split(), wordnet=reader))


def cosine(given: str, reference: str) -> float:
    """The cosine similarity of the two texts' sentence embeddings (FTSERVE_EMBEDDING_MODEL's model)."""
    directory = embeddings.model_dir(get_settings().embedding_model)
    if isinstance(directory, str):
        raise RuntimeError(f"cosine {directory}")
    return embeddings.cosine(given, reference, directory)


def unavailable(metric: str) -> str | None:
    """Why this host cannot compute `metric` (a reason to finish "it …": "needs …"), or None when it can."""
    if metric == "meteor":
        return wordnet.unavailable(get_settings().wordnet_dir)
    if metric == "cosine":
        directory = embeddings.model_dir(get_settings().embedding_model)
        return directory if isinstance(directory, str) else None
    return None


def _rouge(kind: str) -> Callable[[str, str], float]:
    def score(given: str, reference: str) -> float:
        """rouge-score's F-measure for this ROUGE variant (reference first, as the library takes them)."""
        from rouge_score import rouge_scorer

        return float(rouge_scorer.RougeScorer([kind]).score(reference, given)[kind].fmeasure)

    return score


METRICS: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": fuzzy_match,
    "bleu": bleu,
    "gleu": gleu,
    **{f"rouge_{n}": _rouge(f"rouge{n}") for n in range(1, 6)},
    "rouge_l": _rouge("rougeL"),
    "meteor": meteor,
    "cosine": cosine,
}


@dataclass
class TextSimilarity:
    spec: TextSimilarityGrader

    def check(self, param: str) -> None:
        metric = self.spec.evaluation_metric
        reason = unavailable(metric)
        if reason is not None:
            raise bad_request(
                f"evaluation_metric '{metric}' is not supported by this server: it {reason}",
                param=f"{param}.evaluation_metric",
                code="unsupported_evaluation_metric",
            )
        templates.check_pair(self.spec.input, self.spec.reference, param)

    def grade(self, sample: Sample, item: Any) -> GradeResult:
        pair = templates.render_pair(self.spec.input, self.spec.reference, {"item": item, "sample": sample.namespace()})
        if pair is None:
            return GradeResult.failed(invalid_variable_error=True)
        given, reference = pair
        return GradeResult(reward=METRICS[self.spec.evaluation_metric](given, reference))
