"""The base of every error s2s raises on purpose: bad input or config, with a message that says where."""

from __future__ import annotations


class S2SError(Exception):
    """An expected failure; its message is meant for the user, so no traceback is needed."""


class Interrupted(S2SError):
    """Stopped on a signal (SIGINT, SIGTERM) after saving what a rerun needs; the process exits 128 + signum."""

    def __init__(self, signum: int, message: str, resumes: bool = True) -> None:
        super().__init__(message)
        self.signum = signum
        self.resumes = resumes  # a rerun continues from the saved state


class ExportError(S2SError, ValueError):
    """A model that cannot be exported (to CTranslate2): the message says why."""
