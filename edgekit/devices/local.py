"""This machine: the runner is a subprocess of the same Python, so each bundle gets a fresh process (its own
load time and peak RSS) exactly as on a remote device."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence


class LocalDevice:
    name = "local"

    def check(self) -> None:
        return None

    def python_command(self, module: str, args: Sequence[str] = (), cwd: str | None = None) -> list[str]:
        return [sys.executable, "-m", module, *args]

    def stage_bundle(self, root: Path) -> str:
        return str(Path(root).resolve())

    def stage_dir(self, local: Path, name: str) -> str:
        return str(Path(local).resolve())

    def install_hint(self, requirements: Sequence[str]) -> str:
        return f"{sys.executable} -m pip install " + " ".join(f"'{r}'" for r in requirements)
