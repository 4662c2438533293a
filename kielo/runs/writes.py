"""Writing a run's files: a full disk or a read-only folder is one clear message, never a library traceback.

The libraries that write checkpoints report a full disk in their own words (torch: ``RuntimeError ...
unexpected pos``; safetensors: its own error type), so whatever a write raises is turned into one
:class:`KieloError` that names the folder, the free space left there and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

from kielo.errors import KieloError

IO_WORDS = ("unexpected pos", "No space left", "os error", "Read-only file system", "Permission denied", "file write failed")


def free_space(path: Path) -> str:
    """Free bytes on ``path``'s filesystem (of its nearest existing parent), in words."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        free = shutil.disk_usage(p).free
    except OSError:
        return "unknown free space"
    return f"{free / 2**30:.2f} GiB free" if free >= 2**30 else f"{free / 2**20:.1f} MiB free"


@contextlib.contextmanager
def writing(folder: Path, what: str, keep: str = ""):
    """Turn a failed write of ``what`` into ``folder`` into a KieloError; ``keep`` says what stays intact."""
    try:
        yield
    except OSError as e:
        raise _write_error(folder, what, keep, e) from e
    except Exception as e:
        # torch reports a failed write as RuntimeError, safetensors as SafetensorError; other errors are bugs.
        if any(s in str(e) for s in IO_WORDS):
            raise _write_error(folder, what, keep, e) from e
        raise


def _write_error(folder: Path, what: str, keep: str, e: BaseException) -> KieloError:
    code = getattr(e, "errno", None)
    text = str(e)
    if code == errno.ENOSPC or "No space left" in text or "unexpected pos" in text:
        problem, fix = "the disk is full", "free space there (or point --output_dir to a bigger disk)"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        problem, fix = f"the folder is not writable ({os.strerror(code)})", "make it writable or choose another --output_dir"
    else:
        problem, fix = f"{type(e).__name__}: {text.splitlines()[0][:200] if text else ''}", "check the disk and the folder"
    kept = f"; {keep} is intact" if keep else ""
    return KieloError(f"could not write {what} to {folder}: {problem} ({free_space(folder)}){kept}", fix)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename: a reader (or a crash) sees the old file or the new one,
    never half of either. The temporary file sits beside it, on the same filesystem."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
