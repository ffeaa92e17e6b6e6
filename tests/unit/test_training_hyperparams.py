"""The documented "auto" rules (docs/training.md) and the options reported in a job's events."""

from __future__ import annotations

from dataclasses import replace

from ftserve.core.config import Settings
from ftserve.core.methods.dpo import DPO
from ftserve.core.methods.supervised import SUPERVISED
from ftserve.core.schemas.jobs import DpoHyperparameters, FtserveExtensions, Hyperparameters
from ftserve.training.config import TrainingConfig
from ftserve.training.hyperparams import auto_batch_size, auto_epochs, resolve
from ftserve.training.ports import JobSpec


def test_auto_epochs() -> None:
    assert auto_epochs(10) == 10  # at least ~100 example visits
    assert auto_epochs(3) == 25  # capped
    assert auto_epochs(1000) == 3  # never fewer than 3 while it fits the visit cap
    assert auto_epochs(20_000) == 2 and auto_epochs(60_000) == 1  # at most ~50k visits


def test_auto_batch_size() -> None:
    assert [auto_batch_size(n) for n in (10, 500, 1000, 4000, 100_000)] == [1, 1, 2, 8, 32]


def test_resolve_keeps_explicit_values_and_caps_batch_at_the_data() -> None:
    hp = resolve(Hyperparameters(n_epochs=2, batch_size=64, learning_rate_multiplier="auto"), 12)
    assert (hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier) == (2, 12, 1.0)


def test_options_take_extensions_over_settings() -> None:
    s = Settings(lora_rank=8, warmup_ratio=0.0, lr_scheduler="linear")
    ext = FtserveExtensions(lora_rank=16, lr_scheduler="cosine", prompt_loss_weight=0.01)
    base = "ftserve-tiny"
    spec = JobSpec("ftjob-x", "org", base, base, None, "file-x", None, None, 1, Hyperparameters(), ext)
    opts = TrainingConfig.resolve(spec, s).options()
    assert opts["lora_rank"] == 16 and opts["lr_scheduler"] == "cosine" and opts["warmup_ratio"] == 0.0
    assert opts["prompt_loss_weight"] == 0.01 and opts["lora_alpha"] == 16.0


def test_dpo_auto_takes_its_own_learning_rate_and_a_batch_of_at_least_four() -> None:
    # Measured on SFT -> DPO (bench/dpo_defaults.py, docs/training.md): the base's rate, a pair per step, breaks it.
    spec = JobSpec("ftjob-x", "org", "ftserve-tiny", "ftserve-tiny", None, "file-x", None, None, 1,
                   DpoHyperparameters(), FtserveExtensions(), method=DPO.name)  # fmt: skip
    config = TrainingConfig.resolve(spec, Settings())
    hp = config.hyperparameters(30)
    assert (hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier, hp.beta) == (4, 4, 0.3, 0.1)
    assert config.hyperparameters(3).batch_size == 3  # never more than the pairs
    assert config.hyperparameters(20_000).batch_size == 32  # the shared rule, above the floor
    explicit = DpoHyperparameters(batch_size=1, learning_rate_multiplier=1.0)
    assert resolve(explicit, 30, 0.3, 4).as_dict() == {
        "n_epochs": 4, "batch_size": 1, "learning_rate_multiplier": 1.0, "beta": 0.1,
    }  # fmt: skip
    sft = TrainingConfig.resolve(replace(spec, method=SUPERVISED.name, hyperparameters=Hyperparameters()), Settings())
    assert (sft.hyperparameters(30).batch_size, sft.hyperparameters(30).learning_rate_multiplier) == (1, 1.0)
