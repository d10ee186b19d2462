"""Dataset adapters (readers of the AVSBench layouts) and the layout writers.

`open_dataset("avss" | "s4" | "ms3", root, **options)` returns an `Adapter` (see `sample.py`) yielding `Sample`s.
Options: avss `subsets=("v1s", "v1m", "v2")`; ms3 `labels_csv=<AVSS metadata.csv>`; s4 none.
Supporting a new on-disk layout means adding an adapter class here, not a new pipeline.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from pcas_cli.datasets.avss import AVSSAdapter
from pcas_cli.datasets.ms3 import MS3Adapter
from pcas_cli.datasets.s4 import S4Adapter
from pcas_cli.datasets.sample import Adapter, DatasetInfo, Sample
from pcas_cli.errors import PcasError, fail

ADAPTERS: dict[str, type] = {"avss": AVSSAdapter, "s4": S4Adapter, "ms3": MS3Adapter}


def open_dataset(layout: str, root: Path, **options) -> Adapter:
    """Open the dataset at `root` with the adapter for `layout`.

    Raises:
        PcasError: unknown layout or option, missing root, or a malformed/missing metadata file.
    """
    if layout not in ADAPTERS:
        raise PcasError(f"unknown dataset layout {layout!r}; expected one of {', '.join(ADAPTERS)}")
    root = Path(root)
    if not root.is_dir():
        raise fail(root, "dataset root does not exist")
    cls = ADAPTERS[layout]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "root")]
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise PcasError(f"layout {layout!r} takes no option(s) {', '.join(unknown)}; "
                        f"it accepts {', '.join(allowed) or 'none'}")
    return cls(root, **options)


__all__ = ["ADAPTERS", "AVSSAdapter", "Adapter", "DatasetInfo", "MS3Adapter", "S4Adapter", "Sample", "open_dataset"]
