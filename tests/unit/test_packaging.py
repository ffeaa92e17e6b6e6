"""The wheel installs one top-level package, `ftserve` (plus its dist-info): nothing named `app` or `models` to
clash with whatever else shares the environment."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.servers import ROOT


def test_the_wheel_holds_one_top_level_package(tmp_path: Path) -> None:
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip_wheel, "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("ftserve-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        top_level = zf.read(info).decode().split()
        record = zf.read(next(n for n in names if n.endswith(".dist-info/RECORD"))).decode()
    assert top_level == ["ftserve"]
    installed = {line.split(",", 1)[0].split("/", 1)[0] for line in record.splitlines() if line}
    assert {n for n in installed if not n.endswith(".dist-info")} == {"ftserve"}
    # What the roles need at run time travels inside it: migrations, the dashboard's files, python -m ftserve.
    assert "ftserve/control/migrations/script.py.mako" in names
    assert "ftserve/control/web/static/index.html" in names
    assert "ftserve/__main__.py" in names
