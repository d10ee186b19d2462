"""The console entry point (`pcas`): a user mistake is one line on stderr naming the file, exit status 2."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pcas_cli.cli import main


def _mistake(monkeypatch, capsys, *argv: str) -> str:
    monkeypatch.setattr(sys, "argv", ["pcas", *argv])
    with pytest.raises(SystemExit) as done:
        main()
    out, err = capsys.readouterr()
    assert done.value.code == 2 and out == "", out
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line, no traceback
    return err


def test_user_mistakes_are_one_line_on_stderr(tmp_path, monkeypatch, capsys):
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    assert "junk.h5: not a readable HDF5 artifact" in _mistake(monkeypatch, capsys, "info", str(tmp_path / "junk.h5"))
    (tmp_path / "m.json").write_text("{cut short")
    assert "m.json: not a JSON metrics file" in _mistake(monkeypatch, capsys, "info", str(tmp_path / "m.json"))
    run = tmp_path / "run"
    for setting, expected in (("image_size=0", "image_size must be at least 1 pixel, got 0"),
                              ("limit=-1", "limit must be 0 (every clip) or a positive number of clips, got -1"),
                              ("root=3", "command line: root: expected a path (a string), got 3")):
        err = _mistake(monkeypatch, capsys, "extract", "--run", str(run), "--set", setting)
        assert expected in err, err
    assert not run.exists()  # refused before anything was written, not even a .tmp
