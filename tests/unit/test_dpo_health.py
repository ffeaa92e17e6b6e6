"""The DPO collapse watch on step-metric sequences: a collapsing job warns once, a healthy one never."""

from __future__ import annotations

from typing import Any

from ftserve.training.methods.dpo_health import ACCURACY_DROP, CHOSEN_DROP, WINDOW, CollapseWatch

BETA = 0.1


def _steps(accuracy: list[float], chosen_logratio: list[float]) -> list[dict[str, Any]]:
    return [
        {"step": i + 1, "train_mean_token_accuracy": a, "train_chosen_reward": BETA * c, "train_reward_margin": 1.0}
        for i, (a, c) in enumerate(zip(accuracy, chosen_logratio, strict=True))
    ]


def _warnings(steps: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    watch = CollapseWatch(BETA)
    return [(m["step"], w.data) for m in steps if (w := watch.observe(m)) is not None]


def test_falling_token_accuracy_warns_once() -> None:
    # The job: 0.78 on the preferred replies at the start, 0.5-0.67 later; its chosen log-probs rise.
    accuracy = [0.78, 0.8, 0.76, 0.78, 0.79] + [0.67, 0.5, 0.6, 0.55, 0.67] * 4
    found = _warnings(_steps(accuracy, [0.0] * 5 + [2.0] * 20))
    assert len(found) == 1
    step, data = found[0]
    assert data["warning"] == "dpo_collapse" and data["step"] == step
    assert data["start_token_accuracy"] - data["token_accuracy"] >= ACCURACY_DROP


def test_chosen_log_probs_falling_far_below_the_start_warns() -> None:
    # Accuracy holds, but the preferred replies lose probability step after step (the margin grows anyway).
    chosen = [-0.5 * i for i in range(40)]
    found = _warnings(_steps([0.9] * 40, chosen))
    assert len(found) == 1
    step, data = found[0]
    assert data["chosen_logratio"] <= -CHOSEN_DROP
    assert step < 40


def test_a_healthy_job_never_warns() -> None:
    # Accuracy on the preferred replies rises as the preference is learned; their log-probs rise too.
    accuracy = [0.75 + 0.2 * min(i / 20, 1) for i in range(60)]
    chosen = [min(0.3 * i, 8.0) for i in range(60)]
    assert _warnings(_steps(accuracy, chosen)) == []


def test_noise_within_the_window_does_not_warn() -> None:
    # One pair per step: single bad steps are noise, not collapse.
    accuracy = [0.8, 0.7, 0.9, 0.8, 0.8] * 12
    accuracy[20] = accuracy[33] = 0.4
    chosen = [1.0] * 60
    chosen[25] = -30.0  # one step's outlier, averaged over WINDOW
    assert len(accuracy) > 2 * WINDOW
    assert _warnings(_steps(accuracy, chosen)) == []


def test_steps_without_dpo_metrics_are_ignored() -> None:
    watch = CollapseWatch(BETA)
    assert all(watch.observe({"step": i, "train_loss": 1.0}) is None for i in range(20))
