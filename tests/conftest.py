"""Shared test setup."""

from __future__ import annotations

from typing import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _no_make_environment() -> Iterator[None]:
    """`make test` runs with the Makefile's exported PCAS_RESUME / PCAS_TIMINGS; tests choose resumption and timing
    logs themselves (a stage rerun in a copied run folder must train, not continue the finished run it finds)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("PCAS_RESUME", "PCAS_TIMINGS"):
            patch.delenv(name, raising=False)
        yield
