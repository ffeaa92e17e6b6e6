"""Is a DPO job breaking the model it starts from? Read off the job's own step metrics (no extra forward):
the preferred replies' token accuracy falling from where it started, or the preferred replies' log-probs
falling far below the starting model's (the margin then grows by pushing both replies down, and the
replies' shared format goes with them). Thresholds: docs/training.md#when-dpo-breaks-the-model."""

from __future__ import annotations

from collections import deque
from statistics import median
from typing import Any

from ftserve.training.methods.base import StepWarning

# Steps on each side of a comparison, the job's first WINDOW against its last WINDOW (never overlapping), each
# side's median: a step of one pair is noisy, one odd step must not warn.
WINDOW = 5
# The preferred replies' greedy token accuracy (train_mean_token_accuracy) this far (absolute) below where it
# started: the model no longer predicts the very replies it is taught to prefer.
ACCURACY_DROP = 0.1
# ... counted only where the starting model predicted at least this share of them (a DPO job on replies close to
# its outputs, as after SFT): on replies it does not know yet, a few tokens' accuracy is mostly noise.
MIN_START_ACCURACY = 0.5
# The preferred replies' summed log-prob this many nats below the starting model's (train_chosen_reward / β):
# DPO is widening the margin by pushing both replies down.
CHOSEN_DROP = 5.0


class CollapseWatch:
    """Fed every step's metrics in order; returns a StepWarning once, at the first step that shows collapse."""

    def __init__(self, beta: float) -> None:
        self.beta = beta
        self.first: list[float] = []  # the first WINDOW steps' token accuracies
        self.recent: deque[tuple[float, float]] = deque(maxlen=WINDOW)  # (accuracy, chosen log-ratio)
        self.seen = 0
        self.warned = False

    def observe(self, metrics: dict[str, Any]) -> StepWarning | None:
        """The warning to record after this step, if this is the first step whose metrics show collapse."""
        accuracy, chosen = metrics.get("train_mean_token_accuracy"), metrics.get("train_chosen_reward")
        if accuracy is None or chosen is None:
            return None
        self.seen += 1
        if self.seen <= WINDOW:
            self.first.append(float(accuracy))
            return None
        self.recent.append((float(accuracy), float(chosen) / self.beta))
        if self.warned or len(self.recent) < WINDOW:  # the two windows never overlap
            return None
        start = median(self.first)
        now = median(a for a, _ in self.recent)
        logratio = median(c for _, c in self.recent)
        signals = []
        if start >= MIN_START_ACCURACY and now <= start - ACCURACY_DROP:
            signals.append(f"its token accuracy on the preferred replies fell from {start:.2f} to {now:.2f}")
        if logratio <= -CHOSEN_DROP:
            signals.append(f"the preferred replies' log-prob fell {-logratio:.1f} nats below the starting model's")
        if not signals:
            return None
        self.warned = True
        step = metrics.get("step")
        message = (
            f"Step {step}: DPO may be breaking the model: {' and '.join(signals)}. Check its outputs before using "
            "it; a lower learning_rate_multiplier or a higher beta keeps it closer to the starting model"
        )
        data = {
            "warning": "dpo_collapse",
            "step": step,
            "start_token_accuracy": round(start, 4),
            "token_accuracy": round(now, 4),
            "chosen_logratio": round(logratio, 4),
        }
        return StepWarning(message, data)
