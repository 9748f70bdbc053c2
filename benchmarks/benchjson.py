"""What every benchmark writes: its payload and the machine it ran on, as indented JSON."""

from __future__ import annotations

import json
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


def package_version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def write_result(out: str | Path, payload: dict[str, Any], packages: tuple[str, ...] = ()) -> None:
    """Write ``payload`` plus ``machine`` (platform, CPUs, torch and ``packages`` versions)."""
    machine = {"platform": platform.platform(), "cpus": os.cpu_count()}
    machine.update({name: package_version(name) for name in ("torch", *packages)})
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**payload, "machine": machine}, indent=1))
    print(f"wrote {path}")
