"""The api role never loads torch: importing and building it leaves torch out of the process (the import
contracts in pyproject.toml check the same statically; this checks what really loads at run time)."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
from app.config import Settings
from app.main import create_app
import app.cli, app.services.jobs, app.services.files, app.services.queue, app.services.training_store, app.broker
create_app(Settings(), roles={"api"})
heavy = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
print(",".join(heavy))
"""


def test_api_role_does_not_import_torch() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
