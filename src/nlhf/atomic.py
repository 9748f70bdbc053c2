"""Atomic writes: a file or folder is written under a hidden temp name next to its target and
renamed over it, so a reader (or a process killed mid-write) sees the old version or the new
one, never half of one.

Temp names are ``.<name>.<random><suffix>`` for files (suffix ``.tmp`` unless given) and
``.<name>.tmp-*`` / ``.<name>.old-*`` for folders; :func:`nlhf.llm.rundir.remove_partial_writes`
relies on them to clean up after a kill.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp file name next to ``path``; once the block succeeds it replaces ``path``.

    For writers that want a file name (``savefig``, ...); on an exception the temp file is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path``: temp file + fsync + rename. Returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return path


def write_json_atomic(path: str | Path, obj: Any, **json_kwargs: Any) -> Path:
    """Write ``json.dumps(obj, **json_kwargs)`` and a final newline to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, **json_kwargs) + "\n")


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a temp dir next to ``target``; on success it replaces ``target`` in one rename.

    A crash or exception mid-write leaves ``target`` as it was and removes the temp dir, so a
    reader never sees half a checkpoint.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a saved model should read like any folder
    try:
        yield tmp
        old: Path | None = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}-{random.getrandbits(32):x}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
