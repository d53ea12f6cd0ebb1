"""Atomic file outputs (private): write beside the target, rename at the end, clean up on any error.

A reader (or a rerun after a crash) sees the old file or the complete new one, never a
part. The temporary name is hidden (``.NAME.tmp-PID-RANDOM``) and removed on every
error path, ``KeyboardInterrupt`` included; only a ``kill -9`` can leave one behind,
and it never sits at the target's name.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_target", "atomic_write_text", "temporary_name"]


def temporary_name(target: Path) -> Path:
    """The hidden temporary sibling of ``target`` used while it is written."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_target(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` in one rename.

    Parameters
    ----------
    path
        The final file (its parent folder must exist).
    """
    target = Path(path)
    tmp = temporary_name(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_target(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
