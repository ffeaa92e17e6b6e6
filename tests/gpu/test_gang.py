"""Gangs on the check's device: a job trained by worker/gang.py's torchrun supervisor as a gang of one process, and
the collectives a gang trains with over a real process group on the device's backend (nccl on CUDA, gloo in the
dry mode): a LoRA step whose gradients and sums go through them equals the step without a gang."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from peft import LoraConfig, PeftModel, get_peft_model

from ftserve.control.db.session import session_scope
from ftserve.control.services.jobs import create_job
from ftserve.control.services.training_store import TrainingStore
from ftserve.core.config import Settings
from ftserve.core.schemas.jobs import Hyperparameters, JobCreate
from ftserve.models.bases import load_base
from ftserve.training import pipeline
from ftserve.training.rank import Gang
from ftserve.training.trainer import LoraTrainer
from ftserve.worker import gang
from tests.gpu.target import Target, assert_same_update
from tests.gpu.test_training import _steps
from tests.inference_adapters import BASE
from tests.integration.test_gang import ROWS
from tests.integration.test_training_pipeline import ORG, _upload
from tests.jobrows import job_and_events

pytestmark = pytest.mark.gpu


def test_a_gang_of_one_process_trains_a_job_on_the_device(target: Target, settings: Settings) -> None:
    """The supervisor's path (torchrun, worker/gang_entry, rank 0 writing under the claim), as gang.run_job takes
    it for worker_procs > 1; with worker_procs 1 run_job trains in its own process and starts no torchrun."""
    if target.dry:  # three processes' start-up (~25 s of a loaded CI core) for what the CPU suite already runs
        pytest.skip("tests/integration/test_gang.py runs torchrun gangs on the CPU (gloo); this one is for CUDA")
    settings.base_models[BASE].dtype = target.dtype
    req = JobCreate(
        model=BASE,
        training_file=_upload(settings, ROWS),
        seed=7,
        hyperparameters=Hyperparameters(n_epochs=1, batch_size=6),
    )
    with session_scope(settings) as s:
        job_id = create_job(s, settings, ORG, req).id
    pipeline.run_job(TrainingStore(settings, job_id), settings, train=gang._train_claimed)
    job, events = job_and_events(settings, job_id)
    assert job.status == "succeeded", job.error
    started = next(e for e in events if e.message.startswith("Training as a torchrun gang"))
    assert started.data == {"processes": 1, "hosts": 1, "processes_per_host": 1}
    assert any(e.message == f"Loading base model {BASE} on {target.device.type}" for e in events)
    assert len([e for e in events if e.type == "metrics"]) == 2  # 12 examples, batch 6


@pytest.fixture()
def group(target: Target) -> Iterator[str]:
    """A process group of this one process on the backend a gang takes on the device (training/rank.Gang.start)."""
    backend = "nccl" if target.device.type == "cuda" else "gloo"
    if target.device.type == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield backend
    finally:
        dist.destroy_process_group()


def _trained(settings: Settings, target: Target, through: Gang) -> dict[str, torch.Tensor]:
    """One LoRA step (bf16 base, fp32 masters) with `through`'s collectives; the LoRA weights afterwards."""
    base, _ = load_base(settings, BASE, target.device)
    torch.manual_seed(3)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    model: PeftModel = get_peft_model(base, config)  # type: ignore[assignment]
    lr = settings.base_models[BASE].base_learning_rate
    trainer = LoraTrainer(model, target.device, lr=lr, total_steps=1, gang=through)
    result = trainer.step(_steps(settings)[0])
    assert result.tokens > 0
    with trainer.full_precision():
        weights = {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer.close()
    return weights


def test_gang_collectives_on_the_devices_backend(target: Target, group: str, bases_dir: Path, tmp_path: Path) -> None:
    # A Gang of size 1 skips every collective; declared larger, it runs each one, over a group of one rank, where a
    # sum or a broadcast gives back what went in: the test is that they run on this backend with these tensors.
    ranked = Gang(rank=0, size=2)
    assert dist.get_backend() == group
    assert ranked._device().type == target.device.type  # nccl reduces on the GPU, gloo on the CPU
    assert ranked.sums([1.5, 2.0**40 + 1]) == [1.5, 2.0**40 + 1]  # float64: counts stay exact
    assert ranked.most(7) == 7 and ranked.word_from_main(2) == 2

    settings = Settings(data_dir=tmp_path / "data", bases_dir=bases_dir)
    settings.base_models[BASE].dtype = target.dtype
    lr = settings.base_models[BASE].base_learning_rate
    assert_same_update(_trained(settings, target, ranked), _trained(settings, target, Gang()), lr, target.dry)
