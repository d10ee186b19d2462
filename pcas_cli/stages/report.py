"""`pcas report`: the paper's tables for one family of runs (e.g. synth-s4 / synth-ms3 / synth-avss), from the
metrics JSON files the eval stage wrote, plus per-stage time and peak memory and a picture of typical test frames.

Writes <out>/<prefix>.md and <out>/<prefix>.json, <out>/<prefix>-examples.png, and (for the embedded data) refreshes
the results block of README.md between its markers.

The tables are built from snapshots, not from the run folders themselves: each run folder present is first copied
(its metrics, the bound's training log, its timing records and what the report derives from its HDF5 artifacts, a
few hundred KiB) to <out>/runs/<run>/, replacing that run's older snapshot. A run measured earlier, on another
machine or before its folder was deleted, keeps its cells; every number in the tables can be traced to a committed
metrics file with its provenance.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pcas_cli.console import CONSOLE
from pcas_cli.errors import PcasError
from pcas_cli.metrics import BOOTSTRAP_RESAMPLES
from pcas_cli.provenance import code_version, machine
from pcas_cli.stages.compare import compare
from pcas_cli.stages.crf import crf_choice_line
from pcas_cli.writing import write_json, write_text

README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"

TABLE1_ROWS = [("background", "all background"), ("visible", "every visible object (oracle, no audio)"),
               ("cam", "CAM (visual only)"), ("cam-crf", "CAM + CRF"), ("similarity", "AV similarity (EZ-VSL-like)"),
               ("pcas", "PCAS"), ("pcas-crf", "PCAS + CRF"),
               ("seg", "PCAS + CRF + segmentation network (train-seg)")]
# Table 4: every row trains the same align + refine schedule with the marked modules on (Makefile); "plain" is a
# reference outside that design: the Looking encoder with no align / refine training.
ABLATION_ROWS = [("none", (0, 0, 0)), ("cmc", (1, 0, 0)), ("cmpc", (0, 1, 0)), ("cmcc", (0, 0, 1)),
                 ("cmpc-cmcc", (0, 1, 1)), ("cmc-cmpc", (1, 1, 0)), ("cmc-cmcc", (1, 0, 1)), ("all", (1, 1, 1))]
PLAIN_ROW = ("plain", "no align / refine training (reference)")
# A diagnostic, not a method: PCAS's own maps with each frame's ground-truth sounding classes in place of the
# listener's (pseudo-label's oracle_presence), i.e. how far a perfect listener would take PCAS.
ORACLE_LISTENER_ROW = ("oracle-listener", "Diagnostic", "PCAS with the true sounding classes (oracle listener)")


@dataclass(frozen=True)
class ReportConfig:
    runs: Path = Path("data/runs")  # folder holding the run folders
    out: Path = Path("results")  # where tables, JSON and pictures go
    prefix: str = "synth"  # run family: <prefix>-s4, <prefix>-ms3, <prefix>-avss
    timings: Path = Path("data/timings.jsonl")  # per-command wall time / peak memory log (Makefile sets it); or
    # a folder of snapshots, each with its run's records in timings.jsonl
    # refresh README.md's block for this prefix (see readme_markers), if it has one. None: only when writing to the
    # project's own results folder, so a report written elsewhere (a scratch --out) never rewrites the README
    update_readme: bool | None = None
    # Table 4's seeds to report: those whose rows are current (the Makefile passes the seeds it has just brought up
    # to date); other seeds' metrics may be left from an earlier run under another config. Without 0, Table 4 is
    # left out with a line saying so. None: every seed with a metrics file.
    table4_seeds: tuple[int, ...] | None = None


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def machine_line() -> str:
    import torch

    return f"{time.strftime('%Y-%m-%d')}, {machine()}, torch {torch.__version__}"


def metrics_of(runs: Path, run: str, name: str) -> dict[str, Any] | None:
    return _load(runs / run / "metrics" / f"{name}.json")


def table1(cfg: ReportConfig) -> tuple[list[str], dict[str, Any]]:
    lines = ["| Method | S4 F-score | S4 mIoU | MS3 F-score | MS3 mIoU |", "|---|---|---|---|---|"]
    data: dict[str, Any] = {}
    for key, label in TABLE1_ROWS:
        s4, ms3 = metrics_of(cfg.runs, f"{cfg.prefix}-s4", key), metrics_of(cfg.runs, f"{cfg.prefix}-ms3", key)
        if s4 is None and ms3 is None:
            continue
        data[key] = {"s4": s4 and _pick(s4), "ms3": ms3 and _pick(ms3)}
        lines.append(f"| {label} | {_pct(s4 and s4['fscore'])} | {_pct(s4 and s4['miou'])} | "
                     f"{_pct(ms3 and ms3['fscore'])} | {_pct(ms3 and ms3['miou'])} |")
    return lines, data


def _pick(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("miou", "fscore", "fscore_batch_independent", "miou_present", "fscore_present", "frames_scored")
    return {k: m[k] for k in keys if k in m}


def table2(cfg: ReportConfig) -> tuple[list[str], dict[str, Any]]:
    run = f"{cfg.prefix}-avss"
    sup = metrics_of(cfg.runs, run, "supervised")
    header = ["Training setting", "Method", "F-score", "mIoU", "mIoU 95% CI", "mIoU (present classes)"]
    if sup is not None:  # a run without the fully supervised bound (`make demo`) gets no column of shares of it
        header.append("% of upper bound mIoU")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    data: dict[str, Any] = {}
    rows = [("supervised", "Fully supervised", "same backbone + FPN decoder + audio gate (upper bound)"),
            ("supervised-crf", "Fully supervised", "upper bound + CRF (PCAS + CRF's like-for-like reference)")] + \
           [(k, "Weakly supervised", label) for k, label in TABLE1_ROWS if k not in ("background", "visible")] + \
           [(k, "No training", label) for k, label in TABLE1_ROWS if k in ("background", "visible")] + \
           [ORACLE_LISTENER_ROW]
    found: dict[str, dict[str, Any]] = {}
    for key, setting, label in rows:
        m = metrics_of(cfg.runs, run, key)
        if m is None:
            continue
        found[key] = m
        rel = m["miou"] / sup["miou"] if sup and sup["miou"] > 0 else None
        data[key] = {**_pick(m), "relative_to_supervised": rel}
        ci = m.get("miou_ci95")  # metrics written before 2026-12-03 have none
        cells = [setting, label, _pct(m["fscore"]), _pct(m["miou"]),
                 "–" if ci is None else f"{_pct(ci[0])} .. {_pct(ci[1])}", _pct(m.get("miou_present"))]
        if sup is not None:
            cells.append("–" if rel is None else f"{100 * rel:.1f}%")
        lines.append("| " + " | ".join(cells) + " |")
    if not found:
        return [], {}
    comparisons, data["paired"] = paired_comparisons(found)
    if comparisons:
        lines += ["", comparisons]
    curve = val_curve(cfg.runs / run / "ckpt/supervised.log.jsonl")
    if sup is not None and curve:
        data["supervised_val_curve"] = curve
        lines += ["", bound_convergence_line(curve)]
    return lines, data


# PCAS against the baselines (difference of mIoU) and against the upper bound (share of its mIoU), each over the same
# resampled test clips (paired bootstrap: a hard clip is hard for both rows, so the pair's noise largely cancels).
PAIRED_DIFFERENCES = (("pcas", "cam"), ("pcas-crf", "cam-crf"), ("pcas", "similarity"))
# PCAS + CRF against the bound as the paper compares (fully supervised rows without a CRF) and against the bound with
# the same CRF (like for like: the CRF alone lifts any soft prediction).
PAIRED_SHARES = (("pcas", "supervised"), ("pcas-crf", "supervised"), ("pcas-crf", "supervised-crf"))


def paired_comparisons(found: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """One paragraph under Table 2: 95% paired-bootstrap intervals (`pcas compare`) of PCAS's lead over the
    baselines and of its share of the upper bound, with the JSON behind it."""
    label = {**{k: name for k, name in TABLE1_ROWS}, "supervised": "the upper bound",
             "supervised-crf": "the upper bound + CRF"}
    parts, data, clips = [], {}, 0
    for (a, b), share in [(pair, False) for pair in PAIRED_DIFFERENCES] + [(pair, True) for pair in PAIRED_SHARES]:
        result = a in found and b in found and compare(found[b], found[a])
        if not result or (share and result["share_ci95"] is None):
            continue
        clips = len(found[a]["clips"]["ids"])
        if share:
            (lo, hi), value = result["share_ci95"], result["share"]
            parts.append(f"{label[a]} / {label[b]} {100 * value:.1f}% ({100 * lo:.1f}% .. {100 * hi:.1f}%)")
        else:
            (lo, hi), value = result["difference_ci95"], result["difference"]
            parts.append(f"{label[a]} - {label[b]} {100 * value:+.2f} ({100 * lo:+.2f} .. {100 * hi:+.2f})")
        data[f"{a}/{b}" if share else f"{a}-{b}"] = {"value": value, "ci95": [lo, hi]}
    if not parts:
        return "", data
    return (f"Paired bootstrap over the {clips} scored test clips ({BOOTSTRAP_RESAMPLES} resamples; mIoU x100, 95% "
            "intervals; `pcas compare`): " + "; ".join(parts) + ". An interval that excludes 0 (or the target share) "
            "is a difference another draw of test clips would very likely keep."), data


def val_curve(log: Path) -> list[float]:
    """Val mIoU after each epoch of a training run, from its `<name>.log.jsonl` (empty if none was logged)."""
    if not log.exists():
        return []
    curve = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a killed run
            continue
        if record.get("kind") == "epoch" and "miou" in (record.get("val") or {}):
            curve.append(float(record["val"]["miou"]))
    return curve


# A bound whose val mIoU still rose by more than this (absolute) in its last epoch is flagged as not converged: the
# "% of upper bound" column then flatters the weak rows (issue: a fair upper bound is trained to convergence).
STILL_RISING = 0.005


def bound_convergence_line(curve: list[float]) -> str:
    """One sentence under Table 2: how the upper bound's val mIoU moved over its last epochs."""
    best = int(np.argmax(curve))
    tail = " / ".join(_pct(v) for v in curve[-4:])
    line = (f"Upper bound: {len(curve)} epochs, val mIoU x100 over the last {min(4, len(curve))}: {tail} "
            f"(best epoch {best + 1}).")
    if len(curve) > 1 and best == len(curve) - 1 and curve[-1] - curve[-2] > STILL_RISING:
        line += " **Still rising in its last epoch: not converged, so the percentages above flatter the weak rows.**"
    return line


# Table 3 rows: train-tvp's val scores of each listener (metrics/audio-<stem>.json), and the two combined as align /
# refine / pseudo-label hear (`pcas diagnose --set out=listeners`, metrics/listeners.json). Where the listeners were
# self-trained (train-tvp self_train_epochs / self_train_rounds), their teachers come first: the MIL listener
# <stem>-mil and the intermediate students <stem>-st1, <stem>-st2, ...
TABLE3_LISTENERS = (("ast", "AST"), ("tvp", "AST + TVP"))


DEFAULT_HEARD = "tvp x ast"  # the stage configs' listener x co_listener, as `pcas diagnose` names them


# Table 3's prompt check: tvp.pt prompted by the next val clip's frames (`pcas diagnose --set prompt_check=true`,
# metrics/tvp-prompts.json).
OTHER_PROMPTS = "tvp-other-prompts"
OTHER_PROMPTS_ROW = (OTHER_PROMPTS, "AST + TVP prompted with another clip's frames (does TVP use what it sees?)")

# Table 3 rows scored by `pcas diagnose` rather than train-tvp: stem -> (metrics file, its val scores)
DIAGNOSE_ROWS: dict[str, tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = {
    "listeners": ("listeners", lambda m: m["val"]),
    # the scored seconds: recorded with the prompts since 2026-12-06 (the check runs without diagnose's part 2, "val")
    OTHER_PROMPTS: ("tvp-prompts", lambda m: {**m["prompts"]["other_clip"],
                                              "frames": m["prompts"].get("frames", m.get("val", {}).get("frames"))}),
}


def heard_row(cfg: ReportConfig) -> tuple[str, str]:
    """Table 3's last row, named after the listeners metrics/listeners.json says the masks hear with: TVP confirmed by
    the audio-only listener by default, one listener where a preset says so (the avdigits preset: AST alone)."""
    heard = DEFAULT_HEARD
    for layout in ("avss", "s4", "ms3"):
        if m := metrics_of(cfg.runs, f"{cfg.prefix}-{layout}", "listeners"):
            heard = m.get("listener", DEFAULT_HEARD)
            break
    readable = [dict(TABLE3_LISTENERS).get(n, n) for n in heard.split(" x ")]
    if len(readable) == 1:
        return "listeners", f"{readable[0]} alone (what PCAS uses)"
    return "listeners", f"{readable[0]}, confirmed by {' and '.join(readable[1:])} (geometric mean; what PCAS uses)"


def table3(cfg: ReportConfig) -> tuple[list[str], dict[str, Any]]:
    layouts = [("s4", "S4"), ("ms3", "MS3"), ("avss", "AVSS")]
    lines = ["| Setting | " + " | ".join(f"{n} mAP | {n} exact-set acc." for _, n in layouts) + " |",
             "|---|" + "---|---|" * len(layouts)]
    data: dict[str, Any] = {}

    def row(stem: str, label: str, optional: bool = False) -> bool:
        scores = {layout: listener_scores(cfg.runs, f"{cfg.prefix}-{layout}", stem) for layout, _ in layouts}
        if optional and not any(scores.values()):
            return False
        data[stem] = scores
        cells = []
        for m in scores.values():
            cells += ["–", "–"] if m is None else [f"{m['map']:.3f}", f"{m['exact_acc']:.3f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return True

    for stem, label in TABLE3_LISTENERS:
        row(f"{stem}-mil", f"{label}, MIL only (first teacher of the self-trained {label})", optional=True)
        round_ = 1
        while row(f"{stem}-st{round_}", f"{label}, self-trained round {round_} (teacher of the next)", optional=True):
            round_ += 1
    for stem, label in (*TABLE3_LISTENERS, heard_row(cfg)):
        row(stem, label)
    row(*OTHER_PROMPTS_ROW, optional=True)
    heard_any = any(m is not None for scores in data.values() for m in scores.values())
    if heard_any and (lead := tvp_lead(cfg, layouts)):
        data["tvp_lead_map"] = lead
        lines += ["", "TVP's lead over the audio-only listener, each alone, in per-second mAP with a 95% paired "
                      "bootstrap interval over the clips (val chose each listener's epoch; test chose nothing): "
                      + "; ".join(f"{name} {_lead_cells(lead[layout])}" for layout, name in layouts
                                  if layout in lead) + "."]
    return (lines, data) if heard_any else ([], {})


def tvp_lead(cfg: ReportConfig, layouts: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """layout -> split -> TVP alone minus the audio-only listener alone in per-second mAP, its 95% paired bootstrap
    interval and the clips (`pcas diagnose --set paired_with=ast`, metrics/tvp-prompts.json), where measured."""
    lead = {}
    for layout, _ in layouts:
        paired = (metrics_of(cfg.runs, f"{cfg.prefix}-{layout}", "tvp-prompts") or {}).get("paired")
        if paired:
            lead[layout] = {split: {**paired[split]["map"], "clips": paired[split]["clips"]}
                            for split in ("val", "test") if split in paired}
    return lead


def _lead_cells(by_split: dict[str, dict[str, Any]]) -> str:
    return ", ".join(f"{s['difference']:+.3f} ({s['difference_ci95'][0]:+.3f} .. {s['difference_ci95'][1]:+.3f}) on "
                     f"{s['clips']} {split} clips" for split, s in by_split.items())


def listener_scores(runs: Path, run: str, stem: str) -> dict[str, Any] | None:
    """Per-second val mAP, exact-set accuracy (p > 0.5), scored seconds and (metrics written since 2026-12-03) the
    accuracies by how many classes sound (`by_sources`) of one Table 3 row, or None."""
    if stem in DIAGNOSE_ROWS:
        name, scores_of = DIAGNOSE_ROWS[stem]
        m = metrics_of(runs, run, name)
        v = m and scores_of(m)
        return v and {"map": v["map"], "exact_acc": v["exact_set"], "frames": v["frames"],
                      "by_sources": v.get("by_sources")}
    m = metrics_of(runs, run, f"audio-{stem}")
    return m and {"map": m["map"], "exact_acc": m["exact_acc"], "frames": m["frames"],
                  "by_sources": m.get("by_sources")}


def listener_sources_table(cfg: ReportConfig) -> tuple[list[str], dict[str, Any]]:
    """Table 3's listeners on the AVSS-layout val seconds, split by how many classes sound: where they fail."""
    lines = ["| Listener | silent: nothing heard | one source: exact set | one: top-1 right | overlapped: exact set "
             "| overlapped: true classes ranked first | val seconds (silent / one / overlapped) |",
             "|---|---|---|---|---|---|---|"]
    data: dict[str, Any] = {}
    for stem, label in (*TABLE3_LISTENERS, heard_row(cfg), OTHER_PROMPTS_ROW):
        scores = listener_scores(cfg.runs, f"{cfg.prefix}-avss", stem)
        groups = scores and scores["by_sources"]
        if not groups:
            continue
        data[stem] = groups
        silent, one, overlap = groups["silent"], groups["one"], groups["overlap"]
        lines.append(f"| {label} | {_pct(silent['exact'])} | {_pct(one['exact'])} | {_pct(one['top_n'])} | "
                     f"{_pct(overlap['exact'])} | {_pct(overlap['top_n'])} | "
                     f"{silent['seconds']} / {one['seconds']} / {overlap['seconds']} |")
    return (lines if data else []), data


def ablation_seeds(runs: Path, run: str, current: tuple[int, ...] | None = None) -> list[int]:
    """Extra Table 4 seeds (> 0) with at least one row scored: metrics/ablation-<row>-s<seed>.json (Makefile,
    TABLE4_SEEDS), restricted to the `current` ones when given."""
    found = {int(m["seed"]) for p in (runs / run / "metrics").glob("ablation-*-s*.json")
             if (m := re.fullmatch(r"ablation-.+-s(?P<seed>\d+)\.json", p.name))}
    if current is not None:
        found &= set(current)
    return sorted(found - {0})


def _mean_std(values: list[float]) -> str:
    """'mean ± sample std (n)' x100; just the value when n = 1."""
    a = 100 * np.asarray(values)
    if len(a) == 1:
        return f"{a[0]:.2f}"
    return f"{a.mean():.2f} ± {a.std(ddof=1):.2f} ({len(a)})"


def table4(cfg: ReportConfig) -> tuple[list[str], dict[str, Any]]:
    run = f"{cfg.prefix}-avss"
    if cfg.table4_seeds is not None and 0 not in cfg.table4_seeds:
        if not any((Path(cfg.runs) / run / "metrics").glob("ablation-*.json")):
            return [], {}
        # rows scored before a config change must not be shown as this run's (Makefile: `make reproduce` when the
        # ablation checkpoints are older than their configs)
        return ([f"Not shown: the rows scored in `{run}` predate the current stage configs; "
                 "`make reproduce-ablations` retrains them."], {"stale": True})
    seeds = ablation_seeds(Path(cfg.runs), run, cfg.table4_seeds)
    header = "| CMC | CMPC | CMCC | F-score | mIoU |"
    if seeds:
        header = "| CMC | CMPC | CMCC | F-score (seed 0) | mIoU (seed 0) | F-score over seeds | mIoU over seeds |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    data: dict[str, Any] = {}
    seed0: dict[str, dict[str, Any]] = {}
    for key, flags in ABLATION_ROWS:
        m = metrics_of(cfg.runs, run, f"ablation-{key}")
        if m is None:
            continue
        seed0[key] = m
        data[key] = _pick(m)
        marks = " | ".join("✓" if f else "" for f in flags)
        line = f"| {marks} | {_pct(m['fscore'])} | {_pct(m['miou'])} |"
        if seeds:
            per_seed = {0: m} | {s: ms for s in seeds if (ms := metrics_of(cfg.runs, run, f"ablation-{key}-s{s}"))}
            data[key]["seeds"] = {str(s): _pick(ms) for s, ms in per_seed.items()}
            data[key]["miou_mean"] = float(np.mean([ms["miou"] for ms in per_seed.values()]))
            line += (f" {_mean_std([ms['fscore'] for ms in per_seed.values()])} |"
                     f" {_mean_std([ms['miou'] for ms in per_seed.values()])} |")
        lines.append(line)
    plain = metrics_of(cfg.runs, run, f"ablation-{PLAIN_ROW[0]}")
    if data and plain is not None:
        data[PLAIN_ROW[0]] = _pick(plain)
        lines.append(f"| {PLAIN_ROW[1]} | – | – | {_pct(plain['fscore'])} | {_pct(plain['miou'])} |"
                     + (" – | – |" if seeds else ""))
    if not data:
        return [], {}
    missing = [key for key, _ in ABLATION_ROWS if key not in seed0]
    if missing:
        # a partly run table must say so: a reader would otherwise take the rows shown for the whole design
        data["missing_rows"] = missing
        lines += ["", f"Rows not scored yet (seed 0): {', '.join(missing)}; `make reproduce-ablations` (embedded "
                      "data) or `make bench-avdigits` (AV-Digits) trains them."]
    if seeds:
        lines += ["", *_seed_notes(data, seeds)]
    clip_noise = _removal_clip_noise(seed0, data)
    if clip_noise:
        lines += ["", clip_noise]
    return lines, data


# Table 4's leave-one-out rows: the module, and the row trained with the other two only.
REMOVALS = (("CMC", "cmpc-cmcc"), ("CMPC", "cmc-cmcc"), ("CMCC", "cmc-cmpc"))


def _removal_clip_noise(seed0: dict[str, dict[str, Any]], data: dict[str, Any]) -> str:
    """A line under Table 4: each module's removal gain on seed 0 with its 95% paired-bootstrap interval over the
    test clips (how much of it another draw of test clips could undo; training-seed noise is the seed columns')."""
    parts = []
    for name, key in REMOVALS:
        result = "all" in seed0 and key in seed0 and compare(seed0[key], seed0["all"])
        if not result:
            continue
        lo, hi = result["difference_ci95"]
        data.setdefault("removal_gain_clip_ci95", {})[name] = [lo, hi]
        parts.append(f"{name} {100 * result['difference']:+.2f} ({100 * lo:+.2f} .. {100 * hi:+.2f})")
    if not parts:
        return ""
    return ("Seed 0's full row minus the row without each module, with 95% paired-bootstrap intervals over the "
            f"{len(seed0['all']['clips']['ids'])} test clips (mIoU x100; `pcas compare`): " + ", ".join(parts) + ".")


def _seed_notes(data: dict[str, Any], seeds: list[int]) -> list[str]:
    """Lines under Table 4 when extra seeds exist: what the seed columns are, and what each module adds to the full
    row (per seed and their mean, paired: the same seed trained both rows). Records the gains in `data`."""
    lines = ["Columns over seeds: mean ± sample standard deviation (number of seeds) of rows trained with align / "
             "refine seeds 0, " + ", ".join(map(str, seeds)) + " from the same Looking encoder and listeners "
             f"(`make reproduce-ablations TABLE4_SEEDS=\"0 {' '.join(map(str, seeds))}\"`)."]
    if "all" not in data:
        return lines
    full, parts = data["all"]["seeds"], []
    for name, key in REMOVALS:
        if key not in data:
            continue
        paired = {s: full[s]["miou"] - m["miou"] for s, m in data[key]["seeds"].items() if s in full}
        # paired: over the seeds both rows have, so a seed still being trained cannot tilt the comparison
        gain = float(np.mean(list(paired.values())))
        data.setdefault("removal_gain", {})[name] = {"mean": gain, "per_seed": paired}
        parts.append(f"{name} {100 * gain:+.2f} (per seed " + " / ".join(f"{100 * d:+.2f}" for d in paired.values())
                     + ")")
    lines.append("Full row minus the row without each module (mIoU x100, mean over the seeds both rows have; "
                 "positive = the module helps): " + ", ".join(parts) + ".")
    return lines


def crf_per_class_table(cfg: ReportConfig) -> tuple[list[str], dict[str, Any]]:
    """Per-class IoU of PCAS before and after the CRF (AVSS layout): the CRF can erase a weakly activated class
    entirely while the mean still rises, so each class is shown."""
    run = f"{cfg.prefix}-avss"
    before, after = metrics_of(cfg.runs, run, "pcas"), metrics_of(cfg.runs, run, "pcas-crf")
    if before is None or after is None:
        return [], {}
    lines = ["| class | IoU before CRF | IoU after CRF | change |", "|---|---|---|---|"]
    data: dict[str, Any] = {}
    for name, b in before["per_class"].items():
        a = after["per_class"].get(name)
        if a is None or b.get("iou") is None or a.get("iou") is None:
            continue
        data[name] = {"before": b["iou"], "after": a["iou"]}
        lines.append(f"| {name} | {_pct(b['iou'])} | {_pct(a['iou'])} | {100 * (a['iou'] - b['iou']):+.2f} |")
    choice = derived(cfg, run).get("crf_choice")
    if choice:
        data["crf_choice"] = choice
        lines += ["", crf_choice_line(choice)]
    return lines, data


def crf_choice(path: Path) -> dict[str, Any] | None:
    """The kernel comparison `pcas crf --choose-on-val` stored in a CRF artifact's provenance, if any."""
    from pcas_cli.artifacts import read_predictions

    if not path.exists():
        return None
    with read_predictions(path) as preds:
        return preds.provenance.get("crf_choice")


def listener_hears_right(feats: Any, pcas: Any, i: int) -> np.ndarray:
    """(T,) bool for clip i: the listener's sounding set (presence threshold chosen on val, stored in the PCAS
    predictions) equals the ground-truth set of frame t. Scoring only."""
    from pcas_cli.stages._common import frame_classes_from_masks

    clip = feats.clip(i, ("masks", "mask_valid", "labels"))
    truth = frame_classes_from_masks(clip["masks"], clip["mask_valid"], clip["labels"], feats.task).astype(bool)
    heard = pcas.read("frame_classes", i) > float(pcas.meta["presence_threshold"])
    return (heard == truth).all(axis=1)


def listener_error_data(run: Path) -> dict[str, Any]:
    """PCAS test mIoU on the frames where the listener's sounding set (at the presence threshold chosen on val) is
    exactly right vs wrong (AVSS layout), from the run's HDF5 artifacts: how much of the gap to full supervision is
    listening. Empty where the run lacks them, and for binary (S4 / MS3) runs, whose masks name no class."""
    from pcas_cli.artifacts import read_features, read_predictions
    from pcas_cli.metrics import SemanticScores

    if not (run / "pseudo/test.h5").exists() or not (run / "features/test.h5").exists():
        return {}
    feats, pred = read_features(run / "features/test.h5"), read_predictions(run / "pseudo/test.h5")
    if "presence_threshold" not in pred.meta or feats.task != "semantic":
        return {}
    k = len(feats.classes) + 1
    groups = {"right": SemanticScores(k), "wrong": SemanticScores(k)}
    counts = {"right": 0, "wrong": 0}
    for i in range(len(feats)):
        clip = feats.clip(i, ("masks", "mask_valid"))
        right = listener_hears_right(feats, pred, i)
        masks = pred.read("masks", i)
        for t in np.flatnonzero(clip["mask_valid"]):
            g = "right" if right[t] else "wrong"
            counts[g] += 1
            groups[g].update(masks[t:t + 1], clip["masks"][t:t + 1])
    data: dict[str, Any] = {}
    for g, acc in groups.items():
        if counts[g]:
            r = acc.result()
            data[g] = {"frames": counts[g], "miou": float(r["miou"]), "miou_present": float(r["miou_present"])}
    return data


def listener_error_table(cfg: ReportConfig) -> tuple[list[str], dict[str, Any]]:
    data = derived(cfg, f"{cfg.prefix}-avss").get("listener_errors") or {}
    lines = ["| listener's sounding set | frames | PCAS mIoU | PCAS mIoU (present classes) |", "|---|---|---|---|"]
    lines += [f"| {g} | {d['frames']} | {_pct(d['miou'])} | {_pct(d['miou_present'])} |" for g, d in data.items()]
    return lines, data


def timing_table(cfg: ReportConfig) -> tuple[list[str], list[dict[str, Any]]]:
    """Latest wall time and peak memory per (run, command) from the timings log (or the snapshots' logs)."""
    logs = sorted(cfg.timings.glob("*/timings.jsonl")) if cfg.timings.is_dir() else [cfg.timings]
    records = []
    for log in logs:
        for line in log.read_text().splitlines() if log.exists() else []:
            rec = json.loads(line)
            run = run_of(rec["argv"])
            if run.startswith(cfg.prefix):
                records.append((run, rec))
    # A stage that ran before its run's latest `extract` worked on an older data set: not part of this run any more.
    extracted = {run: rec.get("finished", "") for run, rec in records if rec["command"] == "extract"}
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for run, rec in records:
        if rec["command"] not in _DATA_COMMANDS and rec.get("finished", "") < extracted.get(run, ""):
            continue
        # Keyed by what the command writes, so a rerun with other options replaces the old row instead of adding one.
        latest[(run, rec["command"], *_output_of(rec["argv"]))] = {**rec, "detail": _describe_argv(rec["argv"])}
    rows = [{"run": k[0], "command": f"{k[1]} {v['detail']}".strip(), "seconds": v["seconds"],
             "peak_rss_mb": v["peak_rss_mb"], "machine": v.get("machine"), "resumed": v.get("resumed", [])}
            for k, v in sorted(latest.items())]
    lines = ["| run | command | wall time (s) | peak memory (MiB) |", "|---|---|---|---|"]
    # the extra Table 4 seeds repeat the seed-0 rows' commands: one summary line per run instead of ~35 each
    seeded: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if _EXTRA_SEED.search(r["command"]):
            seeded.setdefault(r["run"], []).append(r)
        else:
            mark = " (continued)" if r["resumed"] else ""
            lines.append(f"| {r['run']} | `{r['command']}` | {r['seconds']:.1f}{mark} | {r['peak_rss_mb']:.0f} |")
    for run, rs in sorted(seeded.items()):
        lines.append(f"| {run} | {len(rs)} commands of the extra Table 4 seeds | {sum(r['seconds'] for r in rs):.1f} "
                     f"| {max(r['peak_rss_mb'] for r in rs):.0f} |")
    total = sum(r["seconds"] for r in rows)
    lines.append(f"| all | | {total:.1f} | {max((r['peak_rss_mb'] for r in rows), default=0):.0f} |")
    continued = [f"`{r['command']}` ({r['run']}: {', '.join(r['resumed'])})" for r in rows if r["resumed"]]
    if continued:
        lines += ["", "(continued): the command continued an interrupted run (make's PCAS_RESUME=auto), so its time "
                      "covers only the epochs it trained: " + "; ".join(continued) + "."]
    return lines, rows


def run_of(argv: list[str]) -> str:
    """The run folder a logged command worked in: its --run / --root, else the folder of its .h5 paths."""
    run = next((Path(argv[i + 1]).name for i, a in enumerate(argv[:-1]) if a in ("--run", "--root")), "")
    return run or next((Path(a).parent.parent.name for a in argv if a.endswith(".h5")), "")


_EXTRA_SEED = re.compile(r"\w-s[1-9]\d*\b")  # align-s1, ablations/cmc-s2, ...: names of extra Table 4 seeds
_DATA_COMMANDS = ("synth", "build-avdigits", "extract")  # make a run's data set (they run before its extract)


def _output_of(argv: list[str]) -> tuple[str, ...]:
    """The options of a logged command that name what it writes, in argv order: --name, --out, --split, --kind
    (baseline) and `--set out=...` (diagnose's report) with their values, and --tvp / --no-tvp (train-tvp writes
    tvp.pt or ast.pt)."""
    named = ("--name", "--out", "--split", "--kind")
    valued = tuple(f"{a}={v}" for a, v in zip(argv, argv[1:])
                   if a in named or (a == "--set" and v.startswith("out=")))
    return valued + tuple(a for a in argv if a in ("--tvp", "--no-tvp"))


def _describe_argv(argv: list[str]) -> str:
    """Options of a logged command without the run/input paths (which name the run, already a column)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--run", "--run-dir", "--root", "--features", "--predictions", "--mnist", "--fsdd"):
            skip = True
            continue
        out.append("/".join(Path(a).parts[-2:]) if "/" in a else a)
    return " ".join(out)


def write_examples(cfg: ReportConfig, out: Path, n_clips: int = 4, failures: bool = False) -> Path | None:
    """A picture of test frames: frame | ground truth | CAM | PCAS | PCAS + CRF | supervised (AVSS-layout run).

    Typical frames: the middle annotated frame of evenly spaced clips. Failures (`failures=True`): in evenly spaced
    clips, the first annotated frame where the listener's sounding set is wrong."""
    from PIL import Image, ImageDraw

    from pcas_cli.artifacts import read_features, read_predictions
    from pcas_cli.datasets.palette import index_to_rgb

    run = cfg.runs / f"{cfg.prefix}-avss"
    sources = [("CAM", run / "baselines/cam/test.h5"), ("PCAS", run / "pseudo/test.h5"),
               ("PCAS + CRF", run / "crf/test.h5"), ("supervised", run / "supervised/test.h5")]
    sources = [(n, p) for n, p in sources if p.exists()]
    feats_path = run / "features/test.h5"
    if not feats_path.exists() or not sources:
        return None
    feats = read_features(feats_path)
    preds = [(n, read_predictions(p)) for n, p in sources]
    pcas = dict(preds).get("PCAS")
    if failures and (pcas is None or "presence_threshold" not in pcas.meta):
        return None
    picks: list[tuple[int, int]] = []
    for i in range(len(feats)):
        annotated = np.flatnonzero(feats.read("mask_valid", i))
        if failures:
            wrong = annotated[~listener_hears_right(feats, pcas, i)[annotated]]
            if len(wrong):
                picks.append((i, int(wrong[0])))
        elif len(annotated):
            picks.append((i, int(annotated[len(annotated) // 2])))
    if not picks:
        return None
    picks = picks[::max(1, len(picks) // n_clips)][:n_clips]
    tiles: list[list[np.ndarray]] = []
    header = ["frame", "ground truth"] + [n for n, _ in preds]
    for i, t in picks:
        clip = feats.clip(i, ("frames", "masks"))
        frame = clip["frames"][t]
        row = [frame, _overlay(frame, index_to_rgb(clip["masks"][t]), clip["masks"][t] > 0)]
        for _, p in preds:
            m = p.read("masks", i)[t]
            row.append(_overlay(frame, index_to_rgb(m), m > 0))
        tiles.append(row)
    zoom = max(1, 160 // tiles[0][0].shape[1])  # small frames are enlarged (nearest) so masks stay readable
    tiles = [[np.kron(t, np.ones((zoom, zoom, 1), np.uint8)) for t in row] for row in tiles]
    h, w = tiles[0][0].shape[:2]
    pad, top = 4, 18
    canvas = Image.new("RGB", (len(header) * (w + pad) + pad, top + len(tiles) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(header):
        draw.text((pad + c * (w + pad), 3), name, fill="black")
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            canvas.paste(Image.fromarray(tile), (pad + c * (w + pad), top + r * (h + pad)))
    path = out / f"{cfg.prefix}-{'failures' if failures else 'examples'}.png"
    tmp = path.with_name(path.name + ".tmp.png")
    canvas.save(tmp)
    os.replace(tmp, path)
    return path


def _overlay(frame: np.ndarray, colours: np.ndarray, mask: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    out = frame.astype(np.float32).copy()
    out[mask] = (1 - alpha) * out[mask] + alpha * colours[mask]
    return out.astype(np.uint8)


LAYOUTS = ("s4", "ms3", "avss")
SNAPSHOT_FILES = ("metrics/*.json", "ckpt/supervised.log.jsonl")  # what the tables read from a run folder
DERIVED = "derived.json"  # a snapshot's values the report computes from its run's HDF5 artifacts, and its origin


def derive(run: Path) -> dict[str, Any]:
    """What the tables need from a run's HDF5 artifacts (too large to snapshot)."""
    return {"listener_errors": listener_error_data(run), "crf_choice": crf_choice(run / "crf/test.h5")}


def derived(cfg: ReportConfig, run: str) -> dict[str, Any]:
    """A snapshot's derived values (cfg.runs: the snapshots folder); empty for a run without a snapshot."""
    path = Path(cfg.runs) / run / DERIVED
    return json.loads(path.read_text()) if path.exists() else {}


def snapshot_run(run: Path, dest: Path, timings: Path) -> None:
    """Copy what the report reads from one run folder to dest, replacing an older snapshot of that run: its metrics,
    the bound's training log, its records of the timings log, and its derived values with when and where the
    snapshot was taken. Written beside dest, then swapped in: a killed report leaves the old snapshot."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for pattern in SNAPSHOT_FILES:
        for src in sorted(run.glob(pattern)):
            (tmp / src.relative_to(run)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp / src.relative_to(run))
    lines = timings.read_text().splitlines() if timings.is_file() else []
    (tmp / "timings.jsonl").write_text("".join(f"{line}\n" for line in lines
                                               if run_of(json.loads(line)["argv"]) == run.name))
    origin = {"taken": time.strftime("%Y-%m-%d"), "machine": machine(), "code_version": code_version()}
    write_json(tmp / DERIVED, {**derive(run), "snapshot": origin})
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def snapshot_runs(cfg: ReportConfig, snapshots: Path) -> list[str]:
    """Snapshot every run of the family whose folder is here and has metrics; returns their names."""
    for leftover in snapshots.glob("*.tmp"):  # from a report killed while snapshotting
        shutil.rmtree(leftover)
    taken = []
    for layout in LAYOUTS:
        run = Path(cfg.runs) / f"{cfg.prefix}-{layout}"
        if any(run.glob("metrics/*.json")):
            snapshot_run(run, snapshots / run.name, Path(cfg.timings))
            taken.append(run.name)
    return taken


def sources_line(view: ReportConfig, rows: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Where each run's numbers come from: when its snapshot was taken, and the machines its timed commands ran on
    (numbers, not only times, differ between CPU models), or the machine that took the snapshot where the timings
    log recorded none (before 2026-12-06)."""
    sources: dict[str, Any] = {}
    for layout in LAYOUTS:
        run = f"{view.prefix}-{layout}"
        if (Path(view.runs) / run / DERIVED).exists():
            origin = derived(view, run)["snapshot"]
            machines = sorted({r["machine"] for r in rows if r["run"] == run and r.get("machine")})
            sources[run] = {**origin, "machines": machines or [origin["machine"]]}
    parts = [f"{run} (snapshot of {s['taken']}, code {s['code_version']}; ran on {' and '.join(s['machines'])})"
             for run, s in sources.items()]
    return "Runs: " + "; ".join(parts) + ".", sources


def check_runs(cfg: ReportConfig, snapshots: Path) -> None:
    """Refuse to write a report (and blank the README's tables) from a runs folder that does not exist, or when
    neither it nor the snapshots hold anything of this run family."""
    runs = Path(cfg.runs)
    if not runs.is_dir():
        raise PcasError(f"{runs}: no such runs folder (pass --runs, the folder holding the run folders)")
    if not any(runs.glob(f"{cfg.prefix}-*/metrics/*.json")) and not any(snapshots.glob(f"{cfg.prefix}-*/{DERIVED}")):
        raise PcasError(f"{runs}: no {cfg.prefix}-* run has metrics yet (run `pcas eval` first, or pass the right "
                        "--runs / --prefix)")


def run(cfg: ReportConfig) -> Path:
    out = Path(cfg.out)
    snapshots = out / "runs"
    check_runs(cfg, snapshots)
    taken = snapshot_runs(cfg, snapshots)
    # every table reads the snapshots: a run measured before (elsewhere, or since deleted) keeps its cells
    view = replace(cfg, runs=snapshots, timings=snapshots)
    sections: list[str] = []
    data: dict[str, Any] = {"machine": machine_line(), "prefix": cfg.prefix}
    for title, fn, key in (
        ("Table 1 analog: binary S4- and MS3-layout data (test split; F-score and mIoU x100)", table1, "table1"),
        ("Table 2 analog: AVSS-layout data, weak vs full supervision (test split, x100)", table2, "table2"),
        ("Table 3 analog: frame-level audio classification on val (per-second mAP, exact-set accuracy)", table3,
         "table3"),
        ("Where the listeners err: AVSS-layout val seconds by how many classes sound (per-second decisions at "
         "p > 0.5 and rankings, x100)", listener_sources_table, "listener_sources"),
        ("Table 4 analog: module ablations on the AVSS-layout data (test split, pseudo-labels before CRF, x100)",
         table4, "table4"),
        ("Error analysis: PCAS on AVSS-layout test frames where the listener hears exactly the right classes, or not "
         "(x100)", listener_error_table, "listener_errors"),
        ("PCAS per-class IoU before and after the dense CRF (AVSS-layout test split, x100)", crf_per_class_table,
         "crf_per_class"),
        ("Time and peak memory per stage (latest run of each command)", timing_table, "timings"),
    ):
        lines, values = fn(view)
        data[key] = values
        if lines and values:  # a table with no row is left out
            sections.append(f"#### {title}\n\n" + "\n".join(lines))
    avss = f"{cfg.prefix}-avss"
    for failures, title in ((False, "Typical test frames (AVSS-layout test split)"),
                            (True, "Failures: test frames where the listener hears the wrong set of classes")):
        picture = write_examples(cfg, out, failures=failures) if avss in taken else None
        kept = out / f"{cfg.prefix}-{'failures' if failures else 'examples'}.png"
        if picture is None and avss not in taken and (snapshots / avss).is_dir() and kept.exists():
            picture = kept  # drawn when the AVSS run was last here
        if picture is not None:
            sections.append(f"#### {title}\n\n![{picture.stem}]({{img}}{picture.name})")
    sources, data["sources"] = sources_line(view, data["timings"])
    body = (f"Written {data['machine']}, from the run snapshots in `{snapshots.as_posix()}/`. {sources}\n\n"
            + "\n\n".join(sections) + "\n")
    md = write_text(out / f"{cfg.prefix}.md", f"# Results: {cfg.prefix} runs\n\n{body.replace('{img}', '')}")
    write_json(out / f"{cfg.prefix}.json", data)
    if refreshes_readme(cfg):
        update_readme(Path("README.md"), body.replace("{img}", f"{out.as_posix()}/"), cfg.prefix)
    CONSOLE.print(f"[green]wrote[/green] {md}")
    return md


def refreshes_readme(cfg: ReportConfig) -> bool:
    """Whether this report rewrites README.md's block: as told, else only when it writes to ./results."""
    if cfg.update_readme is not None:
        return cfg.update_readme
    return Path(cfg.out).resolve() == Path("results").resolve()


def readme_markers(prefix: str) -> tuple[str, str]:
    """The README block a run family's tables go in: the main results block for the embedded data, else its own."""
    if prefix == "synth":
        return README_START, README_END
    return f"<!-- results-{prefix}:start -->", f"<!-- results-{prefix}:end -->"


def update_readme(readme: Path, body: str, prefix: str = "synth") -> None:
    """Replace the text between the prefix's markers; a README without them is left alone."""
    if not readme.exists():
        return
    start, end = readme_markers(prefix)
    text = readme.read_text(encoding="utf-8")
    if start not in text or end not in text:
        return
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    write_text(readme, pattern.sub(lambda _: f"{start}\n{body}{end}", text))
