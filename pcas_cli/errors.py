"""User-facing errors: the CLI prints these as one line and exits non-zero, never with a traceback."""

from __future__ import annotations

from pathlib import Path


class PcasError(Exception):
    """A mistake in the user's input (bad file, mismatched artifact, bad option). Message is shown verbatim."""


def fail(path: Path | str | None, what: str) -> PcasError:
    """Build an error naming the offending file: `raise fail(p, "missing column 'uid'")`."""
    return PcasError(f"{path}: {what}" if path is not None else what)
