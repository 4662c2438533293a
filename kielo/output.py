"""Check an output folder before any work is done: a command should not run for minutes and then fail to
write its results (a path that is a file, a read-only or foreign folder)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from kielo.errors import KieloError


def check_output_dir(path: str | Path, given_with: str = "--output_dir") -> Path:
    """Fail with the path and the fix unless ``path`` is (or can be made as) a folder this process can write.

    Nothing is created: the nearest existing folder is probed with a temporary file (removed at once), which
    also catches a read-only file system, where permission bits say nothing (and root passes any check of them).
    """
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise KieloError(f"output_dir {p} is a file, not a folder", f"pass a folder with {given_with}, or move that file away")
    existing = p
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise KieloError(f"output_dir {p} can't be made: {existing} is a file", f"pass another folder with {given_with}")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".kielo-write-probe-"):
            pass
    except OSError as e:
        raise KieloError(
            f"output_dir {p} is not writable ({existing}: {e.strerror})",
            f"pass a folder you can write to with {given_with}, or make {existing} writable",
        ) from None
    return p
