"""`pcas report` builds the paper's tables from metrics files and refreshes only the README's results block."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from pcas_cli.artifacts import ArtifactWriter
from pcas_cli.errors import PcasError
from pcas_cli.provenance import machine
from pcas_cli.stages.report import (DERIVED, README_END, README_START, ReportConfig, crf_choice_line, run,
                                     timing_table)


def _metrics(path: Path, miou: float, fscore: float, per_class: dict | None = None,
             clip_iou: list[float] | None = None) -> None:
    """A metrics file; with `clip_iou`, one scored frame per clip with these IoUs (eval's `clips` statistics)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    m = {"miou": miou, "fscore": fscore, "miou_present": miou, "per_class": per_class or {}}
    if clip_iou is not None:
        m["clips"] = {"ids": [f"c{i}" for i in range(len(clip_iou))], "iou_sum": [[v] for v in clip_iou],
                      "count": [[1] for _ in clip_iou]}
        m["miou_ci95"] = [min(clip_iou), max(clip_iou)]
    path.write_text(json.dumps(m))


def test_tables_and_readme_block(tmp_path: Path, monkeypatch) -> None:
    runs = tmp_path / "runs"
    _metrics(runs / "x-s4/metrics/pcas.json", 0.5, 0.6)
    _metrics(runs / "x-s4/metrics/cam.json", 0.25, 0.3)
    # per-clip statistics: CAM trails PCAS by 0.15 and PCAS is 80% of the bound in every clip, so every bootstrap
    # resample agrees (PCAS + CRF has none, as in metrics written before they existed: no paired numbers for it)
    _metrics(runs / "x-avss/metrics/pcas.json", 0.4, 0.45, {"ring": {"iou": 0.19}, "drum": {"iou": 0.5}},
             clip_iou=[0.5, 0.3])
    _metrics(runs / "x-avss/metrics/cam.json", 0.25, 0.3, clip_iou=[0.35, 0.15])
    _metrics(runs / "x-avss/metrics/pcas-crf.json", 0.41, 0.46, {"ring": {"iou": 0.03}, "drum": {"iou": 0.6}})
    _metrics(runs / "x-avss/metrics/supervised.json", 0.5, 0.55, clip_iou=[0.625, 0.375])
    _metrics(runs / "x-avss/metrics/oracle-listener.json", 0.45, 0.5)
    # the bound's training log: val mIoU still rising in the last epoch is flagged (a fair bound is converged); a
    # line cut short by a killed run is skipped
    (runs / "x-avss/ckpt").mkdir(parents=True)
    records = [("step", 1, 0.9), ("epoch", 1, 0.2), ("epoch", 2, 0.3), ("epoch", 3, 0.32)]
    (runs / "x-avss/ckpt/supervised.log.jsonl").write_text("".join(
        json.dumps({"kind": kind, "epoch": e, "val": {"miou": v}}) + "\n" for kind, e, v in records) + '{"kind": "ep')
    by_sources = {"silent": {"seconds": 2, "exact": 1.0, "top_n": None},
                  "one": {"seconds": 5, "exact": 0.6, "top_n": 0.8},
                  "overlap": {"seconds": 3, "exact": 0.0, "top_n": 1 / 3}}
    (runs / "x-avss/metrics/audio-tvp.json").write_text(json.dumps({"map": 0.8, "exact_acc": 0.5, "frames": 10,
                                                                    "by_sources": by_sources}))
    # a self-trained TVP listener's MIL teacher and round-1 student get their own rows; the AST had none, so no
    # "AST, MIL only" row
    (runs / "x-avss/metrics/audio-tvp-mil.json").write_text(json.dumps({"map": 0.6, "exact_acc": 0.2, "frames": 10}))
    (runs / "x-avss/metrics/audio-tvp-st1.json").write_text(json.dumps({"map": 0.7, "exact_acc": 0.3, "frames": 10}))
    (runs / "x-s4/metrics/listeners.json").write_text(json.dumps({"val": {"map": 0.9, "exact_set": 0.7,
                                                                           "frames": 10}}))
    # the CRF artifact records which kernel val chose (pcas crf --choose-on-val)
    choice = {"chosen": "psa@0.25", "val_miou": {"none": 0.4, "psa@0.25": 0.5}}
    with ArtifactWriter(runs / "x-avss/crf/test.h5", "predictions", {"T": 1, "K": 2, "H": 2, "W": 2, "A": 1},
                        {"classes": ["a"], "audio_classes": ["a"], "task": "semantic"},
                        {"stage": "crf", "crf_choice": choice}):
        pass
    timings = tmp_path / "timings.jsonl"
    log = [("refine", ["--no-cmc"], 12.5),
           # the same output written twice with other options: only the latest run is shown
           ("refine", ["--name", "refine-cmpc", "--init", "visual"], 30.0),
           ("refine", ["--name", "refine-cmpc", "--init", "align-nocmc"], 20.0),
           ("pseudo-label", ["--split", "val", "--out", "ablations/cmpc"], 5.0),
           # different outputs told apart by --kind / --tvp: one row each
           ("baseline", ["--kind", "background"], 1.0), ("baseline", ["--kind", "visible"], 1.0),
           ("train-tvp", ["--tvp"], 2.0), ("train-tvp", ["--no-tvp"], 2.0),
           # diagnose names its report with --set out=...
           ("diagnose", ["--set", "out=listeners"], 3.0), ("diagnose", ["--set", "out=tvp-prompts"], 4.0)]
    # a stage run on an older data set (before the latest extract of its run) is dropped
    log = [("align", [], 99.0, "2026-01-01T00:00:00"), ("extract", [], 3.0, "2026-01-02T00:00:00")] + \
        [(c, a, t, "2026-01-03T00:00:00") for c, a, t in log]
    timings.write_text("".join(json.dumps({"command": c, "argv": ["--run", str(runs / "x-avss"), *a], "seconds": t,
                                           "peak_rss_mb": 900.0, "finished": f}) + "\n" for c, a, t, f in log))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text(f"intro\n{README_START}\nold\n{README_END}\noutro\n")
    md = run(ReportConfig(runs=runs, out=tmp_path / "results", prefix="x", timings=timings))
    text = md.read_text()
    assert "| PCAS | 60.00 | 50.00 | – | – |" in text  # Table 1: F then mIoU, x100, MS3 missing
    assert "| Weakly supervised | PCAS | 45.00 | 40.00 | 30.00 .. 50.00 | 40.00 | 80.0% |" in text  # 0.4 / 0.5
    assert "| Weakly supervised | PCAS + CRF | 46.00 | 41.00 | – | 41.00 | 82.0% |" in text
    assert text.index("| Weakly supervised | PCAS |") < text.index(
        "| Diagnostic | PCAS with the true sounding classes (oracle listener) | 50.00 | 45.00 | – | 45.00 | 90.0% |")
    assert ("Paired bootstrap over the 2 scored test clips (1000 resamples; mIoU x100, 95% intervals; `pcas "
            "compare`): PCAS - CAM (visual only) +15.00 (+15.00 .. +15.00); PCAS / the upper bound 80.0% (80.0% .. "
            "80.0%).") in text
    assert "Upper bound: 3 epochs, val mIoU x100 over the last 3: 20.00 / 30.00 / 32.00 (best epoch 3). " \
        "**Still rising" in text
    assert "| AST + TVP | – | – | – | – | 0.800 | 0.500 |" in text
    for row in ("AST + TVP, MIL only (first teacher of the self-trained AST + TVP) | – | – | – | – | 0.600 | 0.200",
                "AST + TVP, self-trained round 1 (teacher of the next) | – | – | – | – | 0.700 | 0.300"):
        assert f"| {row} |" in text
    assert "AST, MIL only" not in text and "AST, self-trained round 1" not in text
    assert "| AST + TVP, confirmed by AST (geometric mean; what PCAS uses) | 0.900 | 0.700 | – | – | – | – |" \
        in text
    # where the listeners err: only the AVSS run's listeners whose metrics split the seconds by sources (TVP here)
    assert "| AST + TVP | 100.00 | 60.00 | 80.00 | 0.00 | 33.33 | 2 / 5 / 3 |" in text
    assert text.count("| AST + TVP, confirmed by AST") == 1  # the S4 run's combined row is Table 3's only
    assert "| x-avss | `refine --no-cmc` | 12.5 | 900 |" in text
    assert "| x-avss | `refine --name refine-cmpc --init align-nocmc` | 20.0 | 900 |" in text
    assert "--init visual" not in text and "| all | | 53.5 | 900 |" in text and "`align`" not in text
    for row in ("baseline --kind background", "baseline --kind visible", "train-tvp --tvp", "train-tvp --no-tvp",
                "diagnose --set out=listeners", "diagnose --set out=tvp-prompts"):
        assert f"| x-avss | `{row}` |" in text
    assert "CRF kernel chosen on val: psa@0.25 (val mIoU x100: none 40.00, psa@0.25 50.00)." in text
    assert "| ring | 19.00 | 3.00 | -16.00 |" in text and "| drum | 50.00 | 60.00 | +10.00 |" in text  # CRF check
    data = json.loads((tmp_path / "results/x.json").read_text())
    assert data["table2"]["pcas"]["relative_to_supervised"] == 0.8
    assert data["table2"]["supervised_val_curve"] == [0.2, 0.3, 0.32]
    readme = (tmp_path / "README.md").read_text()
    assert readme.startswith("intro\n") and readme.endswith("outro\n") and "old" in readme  # prefix x: untouched
    # the tables come from snapshots of the runs, which name their origin (no machine in these timings: the one that
    # took the snapshot)
    origin = json.loads((tmp_path / f"results/runs/x-avss/{DERIVED}").read_text())["snapshot"]
    assert origin["machine"] == machine() and data["sources"]["x-avss"]["machines"] == [machine()]
    assert f"Runs: x-s4 (snapshot of {origin['taken']}, code {origin['code_version']}; ran on {machine()}); x-avss" \
        in text
    assert (tmp_path / "results/runs/x-s4/metrics/pcas.json").exists()
    assert len((tmp_path / "results/runs/x-avss/timings.jsonl").read_text().splitlines()) == len(log)
    # a run folder deleted (or measured on another machine) keeps its cells: the same tables from the snapshots
    import shutil

    shutil.rmtree(runs / "x-avss")
    shutil.rmtree(runs / "x-s4")
    (tmp_path / "results/x-examples.png").write_bytes(b"png")  # drawn when the AVSS run was here
    again = run(ReportConfig(runs=runs, out=tmp_path / "results", prefix="x", timings=timings)).read_text()
    assert again.split("\n\n", 2)[2] == text.split("\n\n", 2)[2] + "\n#### Typical test frames (AVSS-layout " \
        "test split)\n\n![x-examples](x-examples.png)\n"
    # a run present again replaces its snapshot (the deleted run's stays)
    _metrics(runs / "x-s4/metrics/pcas.json", 0.7, 0.8)
    for leftover in ("x-s4.tmp", "x-ms3.tmp"):  # left by a killed report
        (tmp_path / "results/runs" / leftover / "metrics").mkdir(parents=True)
    text = run(ReportConfig(runs=runs, out=tmp_path / "results", prefix="x", timings=timings)).read_text()
    assert "| PCAS | 80.00 | 70.00 | – | – |" in text and "| Weakly supervised | PCAS | 45.00 | 40.00 |" in text
    assert not (tmp_path / "results/runs/x-s4/metrics/cam.json").exists()
    assert not any((tmp_path / "results/runs").glob("*.tmp")) and "| – | – |" in text.split("Table 2")[0]
    _metrics(runs / "synth-s4/metrics/pcas.json", 0.5, 0.6)
    run(ReportConfig(runs=runs, out=tmp_path / "results", prefix="synth", timings=timings))
    readme = (tmp_path / "README.md").read_text()
    assert "| PCAS | 60.00 | 50.00 | – | – |" in readme and "Table 2" not in readme  # no AVSS run: no table
    assert "old" not in readme and readme.startswith("intro\n") and readme.endswith("outro\n")
    (tmp_path / "README.md").write_text("a\n<!-- results-x:start -->\nstale\n<!-- results-x:end -->\nb\n")
    run(ReportConfig(runs=runs, out=tmp_path / "results", prefix="x", timings=timings))
    readme = (tmp_path / "README.md").read_text()
    assert "stale" not in readme and "| PCAS | 80.00 | 70.00 | – | – |" in readme and readme.endswith("b\n")


def test_crf_choice_line_names_the_background_threshold_chosen_with_the_kernel() -> None:
    choice = {"chosen": "psa@0.25", "bg_threshold": 0.2, "made_with_bg_threshold": 0.3,
              "val_miou": {"none": 0.4, "psa@0.25": 0.5}, "best_bg_threshold": {"none": 0.3, "psa@0.25": 0.2}}
    assert crf_choice_line(choice) == (
        "CRF kernel and background threshold chosen on val, jointly: psa@0.25 with background 0.2 (pseudo-label's "
        "own, chosen before the CRF: 0.3; val mIoU x100 at each kernel's best threshold: none 40.00 @0.3, "
        "psa@0.25 50.00 @0.2).")


def test_bound_convergence_line_flags_only_a_still_rising_bound() -> None:
    from pcas_cli.stages.report import bound_convergence_line

    plateau = bound_convergence_line([0.1, 0.5, 0.652, 0.650, 0.654])
    assert plateau == "Upper bound: 5 epochs, val mIoU x100 over the last 4: 50.00 / 65.20 / 65.00 / 65.40 " \
                      "(best epoch 5)."  # +0.4 points in the last epoch: within STILL_RISING
    assert "Still rising" in bound_convergence_line([0.1, 0.3])
    assert "Still rising" not in bound_convergence_line([0.3, 0.1]) and "best epoch 1" in bound_convergence_line([0.3])


def test_table4_over_seeds_gives_mean_std_and_removal_gains(tmp_path: Path) -> None:
    from pcas_cli.stages.report import ABLATION_ROWS, table4

    runs = tmp_path / "runs"
    base = {"none": 0.50, "cmc": 0.51, "cmpc": 0.52, "cmcc": 0.515, "cmpc-cmcc": 0.53, "cmc-cmpc": 0.54,
            "cmc-cmcc": 0.52, "all": 0.55}
    for key, _ in ABLATION_ROWS:
        # seed 0 with per-clip statistics (two clips; the rows differ by the same amount in both, so the interval
        # of each removal gain is that gain)
        _metrics(runs / f"x-avss/metrics/ablation-{key}.json", base[key], 0.6,
                 clip_iou=[base[key] + 0.1, base[key] - 0.1])
        _metrics(runs / f"x-avss/metrics/ablation-{key}-s1.json", base[key] + 0.02, 0.7)
    _metrics(runs / "x-avss/metrics/ablation-all-s2.json", 0.58, 0.8)  # seed 2 only has the full row so far
    cfg = ReportConfig(runs=runs, out=tmp_path / "results", prefix="x", timings=tmp_path / "none.jsonl")
    lines, data = table4(cfg)
    text = "\n".join(lines)
    assert lines[0].count("|") - 1 == 7 and lines[1] == "|" + "---|" * 7
    # full row: seeds 0, 1, 2 -> 55, 57, 58: mean 56.67, sample std 1.53; F 60, 70, 80 -> 70 ± 10
    assert "| ✓ | ✓ | ✓ | 60.00 | 55.00 | 70.00 ± 10.00 (3) | 56.67 ± 1.53 (3) |" in text
    assert "|  |  |  | 60.00 | 50.00 | 65.00 ± 7.07 (2) | 51.00 ± 1.41 (2) |" in text  # none: seeds 0 and 1
    # removal gains, paired per seed where both rows have it: CMC 55 - 53 = +2 (seed 0), 57 - 55 = +2 (seed 1); the
    # full row's seed 2 has no partner, so it does not count (unpaired means would say 56.67 - 54 = +2.67)
    assert "CMC +2.00 (per seed +2.00 / +2.00), CMPC +3.00 (per seed +3.00 / +3.00), CMCC +1.00" in text
    assert 'TABLE4_SEEDS="0 1 2"' in text and set(data["all"]["seeds"]) == {"0", "1", "2"}
    assert ("intervals over the 2 test clips (mIoU x100; `pcas compare`): CMC +2.00 (+2.00 .. +2.00), CMPC +3.00 "
            "(+3.00 .. +3.00), CMCC +1.00 (+1.00 .. +1.00).") in text
    assert abs(data["removal_gain"]["CMPC"]["mean"] - 0.03) < 1e-9
    # no extra seeds: the single-seed table
    for p in (runs / "x-avss/metrics").glob("*-s[12].json"):
        p.unlink()
    lines, data = table4(cfg)
    assert lines[0] == "| CMC | CMPC | CMCC | F-score | mIoU |" and "removal_gain" not in data
    assert "missing_rows" not in data and not any("not scored yet" in line for line in lines)
    # a partly run table names the rows it lacks
    for key in ("none", "cmcc", "all"):
        (runs / f"x-avss/metrics/ablation-{key}.json").unlink()
    lines, data = table4(cfg)
    assert data["missing_rows"] == ["none", "cmcc", "all"]
    assert "Rows not scored yet (seed 0): none, cmcc, all;" in "\n".join(lines)
    # timings: the extra seeds' commands are summarised in one line per run
    timings = tmp_path / "t.jsonl"
    log = [("refine", ["--name", "refine-cmc"], 10.0), ("refine", ["--name", "refine-cmc-s1", "--seed", "1"], 11.0),
           ("pseudo-label", ["--split", "val", "--out", "ablations/cmc-s2"], 5.0)]
    timings.write_text("".join(json.dumps({"command": c, "argv": ["--run", str(runs / "x-avss"), *a], "seconds": t,
                                           "peak_rss_mb": 900.0 + t}) + "\n" for c, a, t in log))
    lines, _ = timing_table(ReportConfig(runs=runs, prefix="x", timings=timings))
    assert "| x-avss | `refine --name refine-cmc` | 10.0 | 910 |" in lines
    assert "| x-avss | 2 commands of the extra Table 4 seeds | 16.0 | 911 |" in lines
    assert not any("refine-cmc-s1" in line for line in lines)


def test_table4_reports_only_the_current_seeds(tmp_path: Path) -> None:
    """`--table4-seeds`: rows of other seeds (left from a run under an older config) are not averaged in, and with
    no current seed Table 4 says why it is missing instead of showing stale rows."""
    from pcas_cli.stages.report import ABLATION_ROWS, table4

    runs = tmp_path / "runs"
    for key, _ in ABLATION_ROWS:
        _metrics(runs / f"x-avss/metrics/ablation-{key}.json", 0.5, 0.6)
        _metrics(runs / f"x-avss/metrics/ablation-{key}-s1.json", 0.6, 0.7)
        _metrics(runs / f"x-avss/metrics/ablation-{key}-s2.json", 0.1, 0.1)  # stale: another config's seed 2
    cfg = ReportConfig(runs=runs, prefix="x", table4_seeds=(0, 1))
    lines, data = table4(cfg)
    assert set(data["all"]["seeds"]) == {"0", "1"} and abs(data["all"]["miou_mean"] - 0.55) < 1e-9
    assert 'TABLE4_SEEDS="0 1"' in "\n".join(lines)
    lines, data = table4(replace(cfg, table4_seeds=(0,)))
    assert lines[0] == "| CMC | CMPC | CMCC | F-score | mIoU |" and "seeds" not in data["all"]
    lines, data = table4(replace(cfg, table4_seeds=()))
    assert data == {"stale": True} and lines == ["Not shown: the rows scored in `x-avss` predate the current "
                                                  "stage configs; `make reproduce-ablations` retrains them."]
    assert table4(replace(cfg, runs=tmp_path / "empty", table4_seeds=())) == ([], {})
    assert set(table4(replace(cfg, table4_seeds=None))[1]["all"]["seeds"]) == {"0", "1", "2"}


def test_report_command_parses_table4_seeds(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from pcas_cli.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["report", "--runs", str(tmp_path), "--table4-seeds", "0 x"])
    assert isinstance(result.exception, PcasError)  # main() prints it as one line and exits 2
    assert str(result.exception) == '--table4-seeds: expected seeds separated by spaces, e.g. "0 1 2", got \'0 x\''


def test_refuses_a_folder_without_the_run_family_and_leaves_the_readme_alone(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    block = f"intro\n{README_START}\nmeasured tables\n{README_END}\n"
    (tmp_path / "README.md").write_text(block)
    _metrics(tmp_path / "runs/avdigits-avss/metrics/pcas.json", 0.4, 0.5)  # another family's run
    with pytest.raises(PcasError, match="no such runs folder"):
        run(ReportConfig(runs=tmp_path / "nope", out=tmp_path / "results"))
    with pytest.raises(PcasError, match="no synth-\\* run has metrics"):
        run(ReportConfig(runs=tmp_path / "runs", out=tmp_path / "results"))
    assert (tmp_path / "README.md").read_text() == block and not (tmp_path / "results").exists()


def test_a_report_written_elsewhere_leaves_the_readme_alone_unless_told(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    block = f"intro\n{README_START}\nmeasured tables\n{README_END}\n"
    (tmp_path / "README.md").write_text(block)
    _metrics(tmp_path / "runs/synth-s4/metrics/pcas.json", 0.5, 0.6)
    scratch = ReportConfig(runs=tmp_path / "runs", out=tmp_path / "scratch", timings=tmp_path / "none.jsonl")
    assert "| PCAS | 60.00 | 50.00 |" in run(scratch).read_text()
    assert (tmp_path / "README.md").read_text() == block
    run(replace(scratch, update_readme=True))
    assert "| PCAS | 60.00 | 50.00 |" in (tmp_path / "README.md").read_text()
    (tmp_path / "README.md").write_text(block)
    run(replace(scratch, out=Path("results"), update_readme=False))
    assert (tmp_path / "README.md").read_text() == block
    run(replace(scratch, out=Path("results")))  # the project's own results folder: refreshed by default
    assert "measured tables" not in (tmp_path / "README.md").read_text()


def test_the_bound_with_the_crf_is_pcas_crf_like_for_like_reference(tmp_path: Path, monkeypatch) -> None:
    runs = tmp_path / "runs"
    _metrics(runs / "x-avss/metrics/supervised.json", 0.4, 0.45, clip_iou=[0.4, 0.4])
    _metrics(runs / "x-avss/metrics/supervised-crf.json", 0.5, 0.55, clip_iou=[0.5, 0.5])
    _metrics(runs / "x-avss/metrics/pcas-crf.json", 0.35, 0.4, clip_iou=[0.35, 0.35])
    monkeypatch.chdir(tmp_path)
    text = run(ReportConfig(runs=runs, out=tmp_path / "results", prefix="x", timings=tmp_path / "none.jsonl",
                            update_readme=False)).read_text()
    bound = "| Fully supervised | same backbone + FPN decoder + audio gate (upper bound) |"
    with_crf = "| Fully supervised | upper bound + CRF (PCAS + CRF's like-for-like reference) | 55.00 | 50.00 |"
    assert bound in text and with_crf in text and text.index(bound) < text.index(with_crf)
    # the "% of upper bound" column stays relative to the bound without a CRF (as the paper's tables); the paired
    # paragraph gives PCAS + CRF's share of both bounds
    assert "| Weakly supervised | PCAS + CRF | 40.00 | 35.00 | 35.00 .. 35.00 | 35.00 | 87.5% |" in text
    assert "PCAS + CRF / the upper bound 87.5% (87.5% .. 87.5%)" in text
    assert "PCAS + CRF / the upper bound + CRF 70.0% (70.0% .. 70.0%)" in text
    assert json.loads((tmp_path / "results/x.json").read_text())["table2"]["paired"]["pcas-crf/supervised-crf"] \
        == {"value": pytest.approx(0.7), "ci95": [pytest.approx(0.7), pytest.approx(0.7)]}


def test_a_run_without_the_bound_gets_no_share_of_bound_column(tmp_path: Path, monkeypatch) -> None:
    runs = tmp_path / "runs"
    _metrics(runs / "x-avss/metrics/pcas.json", 0.4, 0.45, clip_iou=[0.5, 0.3])
    _metrics(runs / "x-avss/metrics/cam.json", 0.25, 0.3, clip_iou=[0.35, 0.15])
    monkeypatch.chdir(tmp_path)
    text = run(ReportConfig(runs=runs, out=tmp_path / "results", prefix="x", timings=tmp_path / "none.jsonl",
                            update_readme=False)).read_text()
    assert "| Training setting | Method | F-score | mIoU | mIoU 95% CI | mIoU (present classes) |\n|---|---|---|---|---|---|\n" \
        in text
    assert "| Weakly supervised | PCAS | 45.00 | 40.00 | 30.00 .. 50.00 | 40.00 |\n" in text and "upper bound" not in text


def test_table3_names_the_listeners_the_masks_hear_with(tmp_path) -> None:
    """The last Table 3 row follows metrics/listeners.json: TVP x AST by default, AST alone under the avdigits preset."""
    from pcas_cli.stages.report import heard_row

    cfg = ReportConfig(runs=tmp_path, out=tmp_path / "results", prefix="x")
    assert heard_row(cfg)[1] == "AST + TVP, confirmed by AST (geometric mean; what PCAS uses)"
    (tmp_path / "x-avss/metrics").mkdir(parents=True)
    (tmp_path / "x-avss/metrics/listeners.json").write_text(json.dumps({"listener": "ast", "val": {}}))
    assert heard_row(cfg) == ("listeners", "AST alone (what PCAS uses)")
    (tmp_path / "x-avss/metrics/listeners.json").write_text(json.dumps({"listener": "tvp x ast", "val": {}}))
    assert heard_row(cfg)[1] == "AST + TVP, confirmed by AST (geometric mean; what PCAS uses)"


def test_table3_shows_tvp_prompted_with_another_clips_frames(tmp_path) -> None:
    """metrics/tvp-prompts.json (pcas diagnose --set prompt_check=true) adds Table 3's prompt-check row, and the
    breakdown by sources gets it too; without the file neither has the row."""
    from pcas_cli.stages.report import listener_sources_table, table3

    cfg = ReportConfig(runs=tmp_path, out=tmp_path / "results", prefix="x")
    (tmp_path / "x-avss/metrics").mkdir(parents=True)
    (tmp_path / "x-avss/metrics/audio-tvp.json").write_text(json.dumps({"map": 0.8, "exact_acc": 0.5, "frames": 10}))
    label = "AST + TVP prompted with another clip's frames (does TVP use what it sees?)"
    assert not any(label in line for line in table3(cfg)[0] + listener_sources_table(cfg)[0])
    by_sources = {"silent": {"seconds": 2, "exact": 0.5, "top_n": None},
                  "one": {"seconds": 5, "exact": 0.4, "top_n": 0.6},
                  "overlap": {"seconds": 3, "exact": 0.0, "top_n": 0.0}}
    own = {"map": 0.8, "exact_set": 0.5}
    other = {"map": 0.55, "exact_set": 0.25, "by_sources": by_sources}
    (tmp_path / "x-avss/metrics/tvp-prompts.json").write_text(json.dumps(
        {"val": {"frames": 10}, "prompts": {"listener": "tvp", "own": own, "other_clip": other}}))
    assert f"| {label} | – | – | – | – | 0.550 | 0.250 |" in table3(cfg)[0]
    assert f"| {label} | 50.00 | 40.00 | 60.00 | 0.00 | 0.00 | 2 / 5 / 3 |" in listener_sources_table(cfg)[0]
    # as the Makefile's check writes it (listening=false: no "val" part; the prompts carry their scored seconds)
    (tmp_path / "x-avss/metrics/tvp-prompts.json").write_text(json.dumps(
        {"prompts": {"listener": "tvp", "frames": 10, "own": own, "other_clip": other}}))
    lines, data = table3(cfg)
    assert f"| {label} | – | – | – | – | 0.550 | 0.250 |" in lines and data["tvp-other-prompts"]["avss"]["frames"] == 10
    assert not any(line.startswith("TVP's lead") for line in lines)
    # with `paired_with=ast` (part 8 of pcas diagnose) the lead and its paired interval follow the table
    paired = {"val": {"clips": 6, "map": {"listener": 0.8, "paired_with": 0.7, "difference": 0.1,
                                          "difference_ci95": [-0.02, 0.25]}},
              "test": {"clips": 5, "map": {"listener": 0.6, "paired_with": 0.65, "difference": -0.05,
                                           "difference_ci95": [-0.1, 0.0]}}}
    (tmp_path / "x-avss/metrics/tvp-prompts.json").write_text(json.dumps(
        {"prompts": {"listener": "tvp", "frames": 10, "own": own, "other_clip": other}, "paired": paired}))
    lines, data = table3(cfg)
    assert lines[-1] == ("TVP's lead over the audio-only listener, each alone, in per-second mAP with a 95% paired "
                         "bootstrap interval over the clips (val chose each listener's epoch; test chose nothing): "
                         "AVSS +0.100 (-0.020 .. +0.250) on 6 val clips, -0.050 (-0.100 .. +0.000) on 5 test clips.")
    assert data["tvp_lead_map"]["avss"]["val"]["difference_ci95"] == [-0.02, 0.25]


def test_a_timed_command_records_where_it_ran(tmp_path: Path, monkeypatch) -> None:
    import time

    from pcas_cli.cli import _record_timing

    log = tmp_path / "timings.jsonl"
    monkeypatch.setenv("PCAS_TIMINGS", str(log))
    monkeypatch.setattr("sys.argv", ["pcas", "refine", "--run", "data/runs/x-avss"])
    _record_timing(time.time() - 2.0)
    record = json.loads(log.read_text())
    assert record["command"] == "refine" and record["argv"] == ["--run", "data/runs/x-avss"]
    assert record["seconds"] >= 2.0 and record["machine"] == machine() and " cores, " in machine()
    rows = timing_table(ReportConfig(runs=tmp_path, prefix="x", timings=log))[1]
    assert rows[0]["machine"] == machine()


def test_a_command_that_continued_a_run_is_marked_in_the_timings(tmp_path: Path, monkeypatch) -> None:
    """A training command that resumed an interrupted run timed only its remaining epochs: the table says so."""
    import time

    import pcas_cli.training.loop as loop
    from pcas_cli.cli import _record_timing

    log = tmp_path / "timings.jsonl"
    monkeypatch.setenv("PCAS_TIMINGS", str(log))
    monkeypatch.setattr("sys.argv", ["pcas", "train-visual", "--run", "data/runs/x-avss"])
    monkeypatch.setattr(loop, "RESUMED", ["visual from epoch 2/4"])
    _record_timing(time.time() - 3.0)
    monkeypatch.setattr(loop, "RESUMED", [])
    monkeypatch.setattr("sys.argv", ["pcas", "refine", "--run", "data/runs/x-avss"])
    _record_timing(time.time() - 1.0)
    assert "resumed" not in json.loads(log.read_text().splitlines()[1])
    lines, rows = timing_table(ReportConfig(runs=tmp_path, prefix="x", timings=log))
    assert any(line.startswith("| x-avss | `train-visual` | 3.0 (continued) |") for line in lines)
    assert any(line.startswith("| x-avss | `refine` | 1.0 |") for line in lines)
    assert lines[-1].endswith("covers only the epochs it trained: `train-visual` (x-avss: visual from epoch 2/4).")
