"""Small atomic writers for JSON and text outputs (tmp file + rename: a killed stage leaves no half file)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text(path: Path | str, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")  # tables hold ±, ×, …: not the locale's encoding
    os.replace(tmp, path)
    return path


def write_json(path: Path | str, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
