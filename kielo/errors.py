"""The one error type for user mistakes: a message that names the problem and the fix."""

from __future__ import annotations


class KieloError(Exception):
    """A mistake the user can fix (bad config, data, path, or a machine that can't run the job).

    The CLI prints ``message`` and ``fix`` without a traceback and exits non-zero; ``--debug`` shows the
    traceback.
    """

    def __init__(self, message: str, fix: str | None = None):
        self.message = message
        self.fix = fix
        super().__init__(message if not fix else f"{message}\n  fix: {fix}")
