"""Make's per-stage view of a preset: the section file changes exactly when its section does."""

from __future__ import annotations

import json
import os

from pcas_cli.preset_sections import main, section_text


def test_section_file_is_rewritten_only_when_its_section_changes(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('[align]\noptim = { epochs = 1 }\n\n[refine]\nseed = 3\n')
    out = tmp_path / "sections" / "align.json"
    assert main([str(preset), "align", str(out)]) == 0
    assert json.loads(out.read_text()) == {"optim": {"epochs": 1}}
    os.utime(out, (1_000_000, 1_000_000))
    preset.write_text('# edited\n[align]\noptim = {epochs=1}\n\n[refine]\nseed = 4\n')  # align unchanged
    assert main([str(preset), "align", str(out)]) == 0
    assert out.stat().st_mtime == 1_000_000  # not rewritten: align's dependents stay up to date
    preset.write_text('[align]\noptim = { epochs = 2 }\n')
    assert main([str(preset), "align", str(out)]) == 0
    assert out.stat().st_mtime > 1_000_000 and json.loads(out.read_text()) == {"optim": {"epochs": 2}}
    assert section_text(preset, "extract") == "{}\n"  # a stage the preset leaves alone


def test_bad_preset_gives_one_line_error(tmp_path, capsys):
    preset = tmp_path / "bad.toml"
    preset.write_text("[align\n")
    assert main([str(preset), "align", str(tmp_path / "a.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "bad.toml" in err and "\n" not in err
    assert main([]) == 2
