"""The benchmark machinery (pcas_cli.bench): helpers on hand-computed values, and one quick run of every benchmark
on tiny sizes so that `make bench` cannot rot. No timing is asserted: speed targets live in the benchmark itself."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pcas_cli.bench import (BENCHMARKS, MB, BenchConfig, blocky_maps, clip_nbytes, current_rss_kb, fmt,
                            markdown_table, peak_rss_kb, per_second, reset_peak_rss, retained_fraction, run, targets)
from pcas_cli.errors import PcasError

# --- helpers ---------------------------------------------------------------------------------------------------


def test_fmt_three_significant_figures_and_words():
    assert [fmt(True), fmt(False), fmt(None), fmt(7), fmt(np.int64(7))] == ["yes", "no", "-", "7", "7"]
    assert [fmt(1234.4), fmt(12.345), fmt(0.1234), fmt(-0.5), fmt(float("inf"))] == ["1234", "12.3", "0.12",
                                                                                    "-0.50", "inf"]


def test_markdown_table_layout():
    assert markdown_table(["a", "b"], [[1, 2.5], ["x", None]]) == "| a | b |\n|---|---|\n| 1 | 2.50 |\n| x | - |"


def test_per_second_edges():
    assert per_second(10, 2.0) == 5.0
    assert per_second(0, 0.0) == 0.0
    assert math.isinf(per_second(3, 0.0))


def test_retained_fraction_streaming_vs_holding():
    # 100 MB more data: +2 MB working memory is streaming (0.02), +100 MB is holding every clip (1.0).
    assert retained_fraction(10.0, 12.0, 5.0, 105.0) == pytest.approx(0.02)
    assert retained_fraction(10.0, 110.0, 5.0, 105.0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        retained_fraction(1.0, 2.0, 5.0, 5.0)


def test_clip_nbytes_counts_every_array_field():
    dims = {"T": 2, "H": 3, "W": 4, "F": 5, "M": 6, "C": 7}
    # frames 2*3*4*3 (uint8) + fbank 2*5*6*2 (float16) + labels 7 + masks 24 + visible 24 + two (T,) bool flags
    assert clip_nbytes(dims) == 72 + 120 + 7 + 24 + 24 + 2 + 2


def test_blocky_maps_are_seeded_class_maps():
    a = blocky_maps(np.random.default_rng(3), 4, 30, 71)
    b = blocky_maps(np.random.default_rng(3), 4, 30, 71)
    assert a.shape == (4, 30, 30) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert a.max() < 71 and 0.5 < (a == 0).mean() < 0.9  # ~70% background
    assert (a[:, :5, :5] == a[:, :1, :1]).all()  # 30 px / 7 cells -> blocks of 5 px


def test_peak_rss_sees_a_transient_allocation():
    if not reset_peak_rss():
        pytest.skip("cannot reset the peak RSS here (not Linux)")
    before = current_rss_kb()
    block = np.ones(64 * MB // 8)  # 64 MB, touched
    del block
    assert peak_rss_kb() - before > 60 * 1024
    assert current_rss_kb() - before < 32 * 1024  # freed again: only the peak remembers it


def test_targets_pass_fail_and_quick():
    def mem(ratio: float, kept: float) -> dict:
        return {"peak_ratio": ratio, "retained_fraction": kept, "small": {"clips": 12}, "large": {"clips": 96}}

    results = {"memory": {"extract": mem(1.05, 0.01), "read": mem(1.4, 0.9)},
               "crf": {"parallel": {"frames": 32, "identical": True}}}
    assert [t["passed"] for t in targets(results)] == [True, True, False, False, True]
    assert [t["passed"] for t in targets(results, quick=True)] == [None, None, None, None, True]
    assert targets({}) == []


def test_unknown_benchmark_is_refused(tmp_path):
    with pytest.raises(PcasError, match="unknown"):
        run(BenchConfig(out_dir=tmp_path, which=("memory", "speed")))
    with pytest.raises(PcasError):
        run(BenchConfig(out_dir=tmp_path, which=()))
    assert not (tmp_path / "bench.json").exists()


# --- one quick run of everything -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench")
    path = run(BenchConfig(out_dir=out, quick=True))
    assert path == out / "bench.json"
    return json.loads(path.read_text()), (out / "bench.md").read_text()


def test_quick_run_records_machine_and_every_benchmark(quick_report):
    report, _ = quick_report
    assert report["quick"] is True and set(report["benchmarks"]) == set(BENCHMARKS)
    m = report["machine"]
    assert m["cpu_model"] and m["usable_cores"] >= 1 and m["torch"] and m["torch_threads"] >= 1 and m["date"]


def test_quick_memory_children_measure_both_sizes(quick_report):
    mem = quick_report[0]["benchmarks"]["memory"]
    per_clip = clip_nbytes({"T": 10, "H": 24, "W": 24, "F": 100, "M": 128, "C": 8}) / MB  # AVSS pads to 10 s
    for what in ("extract", "read"):
        small, large = mem[what]["small"], mem[what]["large"]
        assert (small["clips"], large["clips"]) == (2, 4)
        assert small["data_mb"] == pytest.approx(2 * per_clip) and large["data_mb"] == pytest.approx(4 * per_clip)
        assert 100 < small["peak_rss_mb"] and small["baseline_rss_mb"] <= small["peak_rss_mb"]
        assert mem[what]["peak_ratio"] == pytest.approx(large["peak_rss_mb"] / small["peak_rss_mb"])
    ext = quick_report[0]["benchmarks"]["extract"]
    assert ext["clips"] == 4 and ext["clips_per_s"] > 0 and ext["frames"] <= ext["padded_frames"] == 40


def test_quick_models_crf_metrics_numbers(quick_report):
    b = quick_report[0]["benchmarks"]
    train, infer_only = b["models"]["visual"]
    assert train["train_img_per_s"] > 0 and train["infer_img_per_s"] > 0 and "train_img_per_s" not in infer_only
    assert b["models"]["audio"]["train_clips_per_s"] > 0
    assert b["models"]["audio"]["tokens_per_clip"] == 1 + 2 * (8 * 6 + 1)  # cls + 2 s x (48 patches + prompt)
    assert [(s["image_size"], s["labels"]) for s in b["crf"]["serial"]] == [(24, 2), (24, 3)]
    assert all(s["ms_per_frame"] > 0 for s in b["crf"]["serial"])
    assert b["crf"]["parallel"]["identical"] is True
    assert all(b["metrics"][k]["frames_per_s"] > 0 for k in ("semantic", "binary_fscore", "binary_miou"))


def test_quick_markdown_has_machine_targets_and_sections(quick_report):
    report, md = quick_report
    assert md.startswith("# pcas benchmarks (quick")
    assert report["machine"]["cpu_model"] in md
    assert "| crf_many 2 workers output identical to serial (4 frames) | yes | identical | PASS |" in md
    assert md.count("not checked (quick)") == 4  # memory targets need realistic sizes
    for heading in ("## Targets", "## Memory", "## Extract throughput", "## Models", "## Dense CRF", "## Metrics"):
        assert heading in md
    assert report["all_passed"] is True
