"""The program each process of a torchrun gang runs (`python -m torch.distributed.run … -m ftserve.worker.gang_entry`):
the job's settings and claimed spec from the files the supervisor wrote (worker/gang.py), its rank from torchrun,
then the pipeline as that rank; rank 0 writes under the supervisor's claim."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from ftserve.control.services.training_store import TrainingStore
from ftserve.core.config import Settings
from ftserve.models.bases import prepare_base
from ftserve.training.pipeline import run_claimed
from ftserve.training.ports import JobSpec
from ftserve.training.rank import Gang

SETTINGS_FILE = "settings.json"
SPEC_FILE = "spec.json"
# Environment the supervisor sets for every rank: the folder holding the two files, and the claim.
DIR_ENV, OWNER_ENV, ATTEMPT_ENV = "FTSERVE_GANG_DIR", "FTSERVE_GANG_OWNER", "FTSERVE_GANG_ATTEMPT"


def main() -> int:
    """Train this rank's part of the job; 0 when it finished (or stopped as told), 1 when it failed."""
    folder = Path(os.environ[DIR_ENV])
    settings = Settings.model_validate_json((folder / SETTINGS_FILE).read_text())
    spec = JobSpec.from_json((folder / SPEC_FILE).read_text())
    gang = Gang.from_env()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank {gang.rank} %(levelname)s %(name)s: %(message)s")
    # Before the process group exists: transformers saves only on rank 0 of an initialised group, so a rank
    # that had to build its host's copy of the base (ftserve-tiny) inside the gang would write no weights.
    prepare_base(settings, spec.base)
    gang.start(timeout_s=settings.gang_timeout_seconds)
    store = TrainingStore(settings, spec.id, owner=os.environ[OWNER_ENV])
    store.adopt(int(os.environ[ATTEMPT_ENV]))
    ok = run_claimed(spec, settings, store, gang)
    if ok:
        gang.stop()
    # A failed rank 0 exits non-zero so torchrun stops the ranks still waiting for it in a collective.
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
