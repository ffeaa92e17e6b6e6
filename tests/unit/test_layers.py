"""The api role never loads torch: importing and building it leaves torch out of the process (the import
contracts in pyproject.toml check the same statically; this checks what really loads at run time)."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
from ftserve.core.config import Settings
from ftserve.control.main import create_app
import ftserve.control.broker, ftserve.control.cli, ftserve.control.services.files, ftserve.control.services.jobs
import ftserve.control.services.queue, ftserve.control.services.training_store
create_app(Settings(), roles={"api"})
heavy = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
print(",".join(heavy))
"""


def test_api_role_does_not_import_torch() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
