"""End-to-end CPU smoke test: every stage on a tiny generated data set, through the real CLI.

Checks the artifacts chain, that metrics are real numbers, that stale inputs are refused, and that val/test
predictions never read that split's ground truth (corrupting it leaves predictions unchanged).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pcas_cli.artifacts import ArtifactWriter, read_features, read_predictions
from pcas_cli.cli import app
from pcas_cli.errors import PcasError

TINY_VISUAL = ["--set", "model.overrides={depth = 1}"]
TINY_OPTIM = ["--set", "optim.batch_size=8"]


def pcas(*args: str) -> None:
    result = CliRunner().invoke(app, list(args), catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output


def synth_tiny(raw: Path) -> None:
    pcas("synth", "--layout", "avss", "--root", str(raw), "--videos", "8", "--set", "image_size=48",
         "--set", "val_videos=3", "--set", "test_videos=3", "--set", "workers=1")


def run_every_stage(raw: Path, run: Path, device: str) -> None:
    """Every stage of the pipeline on `raw`, training and labelling on `device`."""
    pcas("extract", "--layout", "avss", "--root", str(raw), "--run", str(run), "--image-size", "32")
    r = ["--run", str(run), "--epochs", "1", "--device", device]
    pcas("train-visual", *r, *TINY_VISUAL, *TINY_OPTIM)
    tiny_audio = ["--set", "audio.embed_dim=32", "--set", "audio.depth=1", "--set", "audio.num_heads=2"]
    pcas("train-tvp", *r, *tiny_audio, *TINY_OPTIM)
    pcas("train-tvp", *r, "--no-tvp", *tiny_audio, *TINY_OPTIM)
    pcas("train-tvp", *r, "--no-tvp", *tiny_audio, *TINY_OPTIM, "--name", "ast-st", "--set", "teacher=ast")
    pcas("align", *r, *TINY_OPTIM)
    pcas("refine", *r, *TINY_OPTIM, "--set", "cmcc_params.crop_size=16")
    quick = ["--run", str(run), "--device", device, "--set", "scales=[1.0]"]
    for split in ("val", "test"):
        pcas("pseudo-label", *quick, "--split", split)
        pcas("pseudo-label", *quick, "--split", split, "--weights", "visual", "--listener", "", "--out",
             "baselines/cam")
    pcas("crf", "--features", str(run / "features/test.h5"), "--predictions", str(run / "pseudo/test.h5"),
         "--out", str(run / "crf/test.h5"), "--workers", "1")
    pcas("train-supervised", *r, *TINY_VISUAL, *TINY_OPTIM)
    # final segmentation network on the train split's refined pseudo-labels
    pcas("pseudo-label", *quick, "--split", "train")
    pcas("crf", "--features", str(run / "features/train.h5"), "--predictions", str(run / "pseudo/train.h5"),
         "--out", str(run / "crf/train.h5"), "--workers", "1")
    pcas("train-seg", *r, *TINY_VISUAL, *TINY_OPTIM)
    pcas("baseline", "--run", str(run), "--kind", "visible")
    for name, pred in (("pcas", "crf/test.h5"), ("cam", "baselines/cam/test.h5"), ("supervised", "supervised/test.h5"),
                       ("visible", "baselines/visible/test.h5"), ("seg", "seg/test.h5")):
        pcas("eval", "--features", str(run / "features/test.h5"), "--predictions", str(run / pred),
             "--out", str(run / f"metrics/{name}.json"), "--name", name)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("pipeline")
    synth_tiny(base / "raw")
    run_every_stage(base / "raw", base / "run", "cpu")
    return base / "run"


def test_own_videos_without_test_masks_are_labelled_and_exported_not_scored(run_dir: Path, tmp_path: Path) -> None:
    """The README's own-videos path on a trained run: its test clips lose their masks, `extract --test-without-masks`
    reads them anyway, pseudo-label and crf label them, export writes the PNGs, and eval refuses in one line."""
    import csv

    raw, run = tmp_path / "raw", tmp_path / "run"
    shutil.copytree(run_dir.parent / "raw", raw)
    shutil.copytree(run_dir, run)
    with (raw / "metadata.csv").open() as f:
        tests = [row for row in csv.DictReader(f) if row["split"] == "test"]
    for row in tests:
        for kind in ("labels_semantic", "labels_rgb"):
            shutil.rmtree(raw / row["label"] / row["uid"] / kind, ignore_errors=True)
    pcas("extract", "--layout", "avss", "--root", str(raw), "--run", str(run), "--image-size", "32",
         "--test-without-masks", "--set", 'splits=["test"]')
    assert not read_features(run / "features/test.h5").read("mask_valid", slice(None)).any()
    pcas("pseudo-label", "--run", str(run), "--device", "cpu", "--set", "scales=[1.0]", "--split", "test")
    pcas("crf", "--features", str(run / "features/test.h5"), "--predictions", str(run / "pseudo/test.h5"),
         "--out", str(run / "crf/test.h5"), "--workers", "1")
    pcas("export", "--predictions", str(run / "crf/test.h5"), "--features", str(run / "features/test.h5"),
         "--out", str(tmp_path / "export"))
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == sorted([r["uid"] for r in tests] +
                                                                            ["export.json"])
    refused = CliRunner().invoke(app, ["eval", "--features", str(run / "features/test.h5"), "--predictions",
                                       str(run / "crf/test.h5")])
    assert isinstance(refused.exception, PcasError) and "extracted with --test-without-masks" in str(
        refused.exception), refused.output  # main() prints it as one line and exits 2 (tests/test_cli.py)


def test_every_stage_writes_its_artifact(run_dir: Path) -> None:
    for rel in ("ckpt/visual.pt", "ckpt/tvp.pt", "ckpt/ast.pt", "ckpt/align.pt", "ckpt/refine.pt",
                "ckpt/supervised.pt", "pseudo/val.h5", "pseudo/test.h5", "crf/test.h5", "metrics/audio-tvp.json",
                "pseudo/train.h5", "crf/train.h5", "ckpt/seg.pt", "seg/val.h5", "seg/test.h5"):
        assert (run_dir / rel).exists(), rel
    for name in ("pcas", "cam", "supervised", "visible", "seg"):
        m = json.loads((run_dir / f"metrics/{name}.json").read_text())
        assert 0.0 <= m["miou"] <= 1.0 and 0.0 <= m["fscore"] <= 1.0
    # The oracle "every visible object" baseline marks every sounding object, so it has perfect recall: its
    # mIoU is strictly positive and background IoU high; a sanity check that eval and the pipeline agree.
    visible = json.loads((run_dir / "metrics/visible.json").read_text())
    assert visible["miou"] > 0.2
    # Table 3's listener scores split the scored seconds by how many classes sound, and together count all of them
    listener = json.loads((run_dir / "metrics/audio-tvp.json").read_text())
    assert sum(g["seconds"] for g in listener["by_sources"].values()) == listener["frames"] > 0


def test_align_chooses_the_listener_threshold_on_val(run_dir: Path) -> None:
    """threshold_on_val: align trains with the candidate of best val F1, and records the choice and the val split."""
    r = ["--run", str(run_dir), "--epochs", "1", "--device", "cpu", "--name", "align-valth"]
    pcas("align", *r, *TINY_OPTIM, "--set", "threshold_on_val=true", "--set", "threshold_candidates=[0.05, 0.95]")
    from pcas_cli.training.checkpoint import load_checkpoint

    prov = load_checkpoint(run_dir / "ckpt/align-valth.pt")["provenance"]
    choice = prov["audio_threshold_choice"]
    assert set(choice["val_f1"]) == {"0.05", "0.95"} and prov["audio_threshold"] == choice["chosen"]
    assert choice["chosen"] == max((0.05, 0.95), key=lambda t: (choice["val_f1"][str(t)], -abs(t - 0.5)))
    assert prov["inputs"]["features/val.h5"] == read_features(run_dir / "features/val.h5").artifact_id
    assert prov["config"]["threshold_on_val"] is True


def _label_val_then_test(run_dir: Path, tmp_path: Path, out: str, *settings: str) -> Path:
    """A copy of the pipeline run, pseudo-labelled on val (choosing its settings) then test into <out>/."""
    run2 = tmp_path / "run"
    shutil.copytree(run_dir, run2)
    for split in ("val", "test"):
        pcas("pseudo-label", "--run", str(run2), "--device", "cpu", "--set", "scales=[1.0]", *settings,
             "--out", out, "--split", split)
    return run2


def test_visual_gate_is_swept_on_val_and_read_by_test(run_dir: Path, tmp_path: Path) -> None:
    run2 = _label_val_then_test(run_dir, tmp_path, "gated", "--set", "visual_gates=[0.0, 1.0]")
    val, test = read_predictions(run2 / "gated/val.h5"), read_predictions(run2 / "gated/test.h5")
    sweep = val.meta["threshold_sweep_val_miou"]
    assert {k.rsplit("/", 1)[1] for k in sweep} == {"0.0", "1.0"}  # both gates scored on val
    assert float(test.meta["visual_gate"]) == float(val.meta["visual_gate"]) in (0.0, 1.0)
    cam = read_predictions(run_dir / "baselines/cam/val.h5")  # visual-only: no listener, so nothing to gate
    assert {k.rsplit("/", 1)[1] for k in cam.meta["threshold_sweep_val_miou"]} == {"0.0"}


def test_provenance_chain(run_dir: Path) -> None:
    test_feats = read_features(run_dir / "features/test.h5")
    pred = read_predictions(run_dir / "pseudo/test.h5")
    assert pred.provenance["inputs"]["features/test.h5"] == test_feats.artifact_id
    assert pred.provenance["inputs"]["pseudo/val.h5"] == read_predictions(run_dir / "pseudo/val.h5").artifact_id
    assert pred.provenance["stage"] == "pseudo-label" and "code_version" in pred.provenance


def test_presence_is_the_geometric_mean_of_tvp_and_the_audio_only_listener(run_dir: Path) -> None:
    """align / refine / pseudo-label hear with tvp.pt confirmed by ast.pt: p_t = sqrt(p_tvp * p_ast)."""
    import torch

    from pcas_cli.stages._common import build_audio_cache, listen, listener, listener_names

    ckpt, feats, cpu = run_dir / "ckpt", read_features(run_dir / "features/val.h5"), torch.device("cpu")
    alone = [build_audio_cache(feats, *listener(ckpt / f"{n}.pt", cpu)[:2], cpu).probs for n in ("tvp", "ast")]
    both, ids = listen(ckpt, listener_names("tvp", "ast"), feats, cpu, "val")
    torch.testing.assert_close(both.probs, (alone[0] * alone[1]).sqrt(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(alone[0], alone[1])  # two different listeners, so the test can fail
    tvp_only, tvp_ids = listen(ckpt, listener_names("tvp", ""), feats, cpu, "val")
    torch.testing.assert_close(tvp_only.probs, alone[0])
    torch.testing.assert_close(both.tokens, tvp_only.tokens)  # a_t always comes from the first listener
    assert set(ids) == {"ckpt/tvp.pt", "ckpt/ast.pt"} and set(tvp_ids) == {"ckpt/tvp.pt"}
    assert both.tokens.shape[-1] == 32
    for artifact in (read_predictions(run_dir / "pseudo/val.h5"), read_predictions(run_dir / "pseudo/test.h5")):
        assert artifact.provenance["inputs"]["ckpt/ast.pt"] == ids["ckpt/ast.pt"]
    assert listener_names("tvp", "tvp") == ("tvp",)


def _rewrite_features(path: Path, change) -> None:
    """Rewrite a features artifact clip by clip with `change(clip) -> clip`, keeping its meta and dims."""
    src = read_features(path)
    rows = [change(src.clip(i)) for i in range(len(src))]
    dims, meta, prov = src.dims, src.meta, src.provenance
    src.close()
    with ArtifactWriter(path, "features", dims, meta, prov) as w:
        for row in rows:
            w.append(**row)


def test_test_predictions_never_read_test_ground_truth(run_dir: Path, tmp_path: Path) -> None:
    run2 = tmp_path / "run"
    shutil.copytree(run_dir, run2)
    rng = np.random.default_rng(0)

    def corrupt(clip: dict) -> dict:
        clip["masks"] = rng.integers(0, 3, clip["masks"].shape).astype(np.uint8)
        clip["labels"] = 1 - clip["labels"]
        clip["mask_valid"] = ~clip["mask_valid"]
        clip["visible"] = np.zeros_like(clip["visible"])
        return clip

    _rewrite_features(run2 / "features/test.h5", corrupt)
    pcas("pseudo-label", "--run", str(run2), "--device", "cpu", "--set", "scales=[1.0]", "--split", "test")
    a, b = read_predictions(run_dir / "pseudo/test.h5"), read_predictions(run2 / "pseudo/test.h5")
    for i in range(len(a)):
        np.testing.assert_array_equal(a.read("scores", i), b.read("scores", i))
        np.testing.assert_array_equal(a.read("masks", i), b.read("masks", i))


def test_oracle_presence_diagnostic_keeps_exactly_the_true_sounding_classes(run_dir: Path, tmp_path: Path) -> None:
    """`oracle_presence` (a diagnostic row, never a result) hears each frame's ground-truth classes, so its masks
    hold no other class; it refuses the train split, whose pseudo-labels train later stages."""
    from pcas_cli.stages._common import frame_classes_from_masks

    run2 = _label_val_then_test(run_dir, tmp_path, "oracle-listener", "--set", "oracle_presence=true")
    feats, pred = read_features(run2 / "features/test.h5"), read_predictions(run2 / "oracle-listener/test.h5")
    assert pred.provenance["config"]["oracle_presence"] is True
    for i in range(len(feats)):
        clip = feats.clip(i, ("masks", "mask_valid", "labels"))
        truth = frame_classes_from_masks(clip["masks"], clip["mask_valid"], clip["labels"], feats.task)
        np.testing.assert_array_equal(pred.read("frame_classes", i), truth)
        masks = pred.read("masks", i)
        for t in range(len(masks)):
            predicted = set(np.unique(masks[t]).tolist()) - {0}
            assert predicted <= {c + 1 for c in np.flatnonzero(truth[t])}
    with pytest.raises(PcasError, match="val / test diagnostic"):
        pcas("pseudo-label", "--run", str(run2), "--device", "cpu", "--set", "oracle_presence=true",
             "--out", "oracle-listener", "--split", "train")


def test_stale_inputs_are_refused(run_dir: Path, tmp_path: Path) -> None:
    run2 = tmp_path / "run"
    shutil.copytree(run_dir, run2)

    def shift(clip: dict) -> dict:
        clip["frames"] = (clip["frames"].astype(np.int16) + 1).clip(0, 255).astype(np.uint8)
        return clip

    _rewrite_features(run2 / "features/train.h5", shift)  # train features changed after visual.pt was made
    with pytest.raises(PcasError, match="stale input"):
        pcas("train-tvp", "--run", str(run2), "--epochs", "1", "--device", "cpu")
    # test features changed after the pseudo-labels and their CRF were made (the run folder has moved, too): both
    # the CRF and scoring refuse, whichever path the inputs were recorded under
    _rewrite_features(run2 / "features/test.h5", shift)
    for stage, predictions in (("crf", "pseudo/test.h5"), ("eval", "crf/test.h5")):
        with pytest.raises(PcasError, match=rf"{predictions}: stale input: it was made from \S*features/test\.h5"):
            pcas(stage, "--features", str(run2 / "features/test.h5"), "--predictions", str(run2 / predictions),
                 "--out", str(tmp_path / f"{stage}.out"))


def test_choices_taken_from_val_need_val_made_alike(run_dir: Path, tmp_path: Path) -> None:
    """Test predictions use val's thresholds, and the CRF val's kernel, only where val was made the same way."""
    run2 = tmp_path / "run"
    shutil.copytree(run_dir, run2)
    with pytest.raises(PcasError, match=r"pseudo/test\.h5: made otherwise than \S*pseudo/val\.h5, whose choices it "
                                        r"uses \(differing: weights\)"):
        pcas("pseudo-label", "--run", str(run2), "--split", "test", "--weights", "align", "--device", "cpu", "--set",
             "scales=[1.0]")
    shutil.copy(run2 / "baselines/cam/val.h5", run2 / "pseudo/val.h5")  # val labelled by the CAM baseline instead
    with pytest.raises(PcasError, match=r"pseudo/test\.h5: made otherwise than \S*pseudo/val\.h5, .*differing: "
                                        r"listener, out, weights"):
        pcas("crf", "--features", str(run2 / "features/test.h5"), "--predictions", str(run2 / "pseudo/test.h5"),
             "--out", str(tmp_path / "crf.h5"), "--workers", "1")


def test_audio_only_listener_does_not_depend_on_the_looking_encoder(run_dir: Path, tmp_path: Path) -> None:
    """ast.pt never reads visual.pt, so a retrained Looking encoder leaves it fresh; tvp.pt (prompted by it) is
    refused as stale."""
    from pcas_cli.training.checkpoint import load_checkpoint

    assert "ckpt/visual.pt" not in load_checkpoint(run_dir / "ckpt/ast.pt")["provenance"]["inputs"]
    assert "ckpt/visual.pt" in load_checkpoint(run_dir / "ckpt/tvp.pt")["provenance"]["inputs"]
    run2 = tmp_path / "run"
    shutil.copytree(run_dir, run2)
    r = ["--run", str(run2), "--epochs", "1", "--device", "cpu", *TINY_OPTIM]
    pcas("train-visual", *r, *TINY_VISUAL, "--seed", "7")  # another Looking encoder
    assert load_checkpoint(run2 / "ckpt/visual.pt")["artifact_id"] != load_checkpoint(
        run_dir / "ckpt/visual.pt")["artifact_id"]
    pcas("align", *r, "--name", "align-ast", "--set", "listener=ast", "--set", 'co_listener=""')
    with pytest.raises(PcasError, match="tvp.pt: stale input"):
        pcas("align", *r, "--name", "align-tvp")


def test_train_seg_refuses_missing_wrong_or_stale_pseudo_labels(run_dir: Path, tmp_path: Path) -> None:
    from pcas_cli.training.checkpoint import load_checkpoint

    seg = load_checkpoint(run_dir / "ckpt/seg.pt")
    assert seg["provenance"]["stage"] == "train-seg"
    assert seg["provenance"]["inputs"]["crf/train.h5"] == read_predictions(run_dir / "crf/train.h5").artifact_id
    run2 = tmp_path / "run"
    shutil.copytree(run_dir, run2)
    args = ("train-seg", "--run", str(run2), "--epochs", "1", "--device", "cpu", *TINY_VISUAL)
    _rewrite_features(run2 / "features/train.h5", lambda clip: {**clip, "frames": 255 - clip["frames"]})
    with pytest.raises(PcasError, match="stale input"):
        pcas(*args)  # crf/train.h5 was made from the old train features
    shutil.copy(run2 / "crf/test.h5", run2 / "crf/train.h5")
    with pytest.raises(PcasError, match="holds the 'test' split"):
        pcas(*args)
    (run2 / "crf/train.h5").unlink()
    with pytest.raises(PcasError, match="not found"):
        pcas(*args)


def test_diagnose_reports_listener_heard_frames_and_probe(run_dir: Path) -> None:
    pcas("diagnose", "--run", str(run_dir), "--device", "cpu", "--probe-steps", "3", "--set", "audio.embed_dim=16",
         "--set", "audio.depth=1", "--set", "audio.num_heads=2", "--set", "audio.input_norm=second",
         "--set", 'patch_labels=["align", "refine"]')
    report = json.loads((run_dir / "metrics/diagnose.json").read_text())
    assert [p["weights"] for p in report["patch_labels"]] == ["align", "refine"]
    for p in report["patch_labels"]:
        assert 0.0 <= p["precision"] <= 1.0 and 0.0 < p["base_rate"] < 1.0 and (p["high"], p["low"]) == (0.7, 0.35)
        # CMCC crops on every train frame, under ToCo's rule and the paper's (as trained, the default): an ignored
        # cell counting 0 instead of 0.5 toward a crop's share can only turn positives negative
        ignored_half, ignored_zero = p["cmcc_crops"]
        assert (ignored_half["ignored_score"], ignored_zero["ignored_score"]) == (0.5, 0.0)
        assert ignored_zero["trained_with"] and not ignored_half["trained_with"]
        assert ignored_half["frames"] == ignored_zero["frames"] > 0
        assert 0.0 <= ignored_half["negative_crops"] <= ignored_zero["negative_crops"] <= 1.0
        # the generated data has visible-object maps: where the similarity points, every frame's best patch once
        where = p["similarity_regions"]
        assert sum(r["best_patch_share"] for r in where.values()) == pytest.approx(1.0)
        assert where["sounding_object"]["frames"] > 0 and 0.0 <= where["background"]["mean_similarity"] <= 1.0
    with pytest.raises(PcasError, match="no projection heads"):
        pcas("diagnose", "--run", str(run_dir), "--device", "cpu", "--set", 'patch_labels=["visual"]',
             "--set", "out=visual-heads")
    for split in ("train", "val"):
        assert 0.0 <= report[split]["map"] <= 1.0 and 0.0 < report[split]["chance_map"] < 1.0
    assert [h["threshold"] for h in report["heard"]] == [0.3, 0.5, 0.7]
    shares = [h["frames_heard"] for h in report["heard"]]
    assert shares == sorted(shares, reverse=True)  # a higher threshold never hears more
    probe = report["probe"]
    assert probe["steps"] == 3 and 0.0 <= probe["val_map"] <= 1.0
    for split in ("train", "val"):  # the probe's seconds split by how many classes sound, and none lost
        assert sum(g["seconds"] for g in probe[f"{split}_by_sources"].values()) == probe["seconds"][split]
    assert report["listener"] == "tvp x ast" and set(report["listener_ids"]) == {"ckpt/tvp.pt", "ckpt/ast.pt"}
    assert 0.0 <= report["val"]["exact_set"] <= 1.0 and 0.0 <= report["val"]["silent_heard"] <= 1.0


def test_prompt_check_scores_tvp_with_its_own_and_another_clips_frames(run_dir: Path) -> None:
    """Clip i heard with clip i+1's frames as TVP prompts; with its own frames the listener scores as train-tvp
    scored it; an audio-only listener is refused. With paired_with, both listeners alone on val and test."""
    from pcas_cli.metrics_cls import mean_average_precision
    from pcas_cli.stages._common import (build_audio_cache, frames_to_tensor, listen, listener, second_targets,
                                         visual_prompts)

    feats, cpu = read_features(run_dir / "features/val.h5"), torch.device("cpu")
    audio, prompt_visual, _ = listener(run_dir / "ckpt/tvp.pt", cpu)
    own, other = (build_audio_cache(feats, audio, prompt_visual, cpu, prompt_shift=s).probs for s in (0, 1))
    clip, next_frames = feats.clip(0), feats.read("frames", 1)
    with torch.no_grad():
        out = audio(torch.from_numpy(clip["fbank"].astype(np.float32))[None],
                    visual_prompt=visual_prompts(prompt_visual, frames_to_tensor(next_frames, cpu))[None],
                    second_valid=torch.from_numpy(clip["frame_valid"])[None])
    torch.testing.assert_close(other[0], torch.sigmoid(out.logits[0]))
    assert not torch.allclose(own, other)  # the prompts reach the listener, so the check can fail
    pcas("diagnose", "--run", str(run_dir), "--device", "cpu", "--listener", "tvp", "--set", 'co_listener=""',
         "--set", "listening=false", "--set", "prompt_check=true", "--set", "paired_with=ast",
         "--set", "out=tvp-prompts")
    report = json.loads((run_dir / "metrics/tvp-prompts.json").read_text())
    assert "train" not in report and "val" not in report  # listening=false: parts 1-2 (every train clip) skipped
    prompts = report["prompts"]
    trained = json.loads((run_dir / "metrics/audio-tvp.json").read_text())
    assert prompts["frames"] == trained["frames"]  # the seconds scored (what Table 3 reports beside the scores)
    assert prompts["own"]["map"] == pytest.approx(trained["map"], abs=1e-6)
    assert prompts["own"]["exact_set"] == pytest.approx(trained["exact_acc"], abs=1e-6)
    assert 0.0 <= prompts["other_clip"]["map"] <= 1.0
    # part 8: each listener alone scores as train-tvp scored it; the lead is their difference
    paired, audio_only = report["paired"]["val"], json.loads((run_dir / "metrics/audio-ast.json").read_text())
    assert paired["frames"] == trained["frames"] and paired["clips"] == len(feats)
    for key, theirs in (("map", "map"), ("exact_set", "exact_acc")):
        s = paired[key]
        assert s["listener"] == pytest.approx(trained[theirs], abs=1e-6)
        assert s["paired_with"] == pytest.approx(audio_only[theirs], abs=1e-6)
        assert s["difference"] == pytest.approx(s["listener"] - s["paired_with"])
        assert s["difference_ci95"][0] <= s["difference_ci95"][1]
    test = report["paired"]["test"]  # and on test, scored against its masks by hand
    targets, has = second_targets(read_features(run_dir / "features/test.h5"))
    ast_test = listen(run_dir / "ckpt", ("ast",), read_features(run_dir / "features/test.h5"), cpu, "test")[0]
    assert test["map"]["paired_with"] == pytest.approx(
        mean_average_precision(ast_test.probs.numpy()[has], targets[has]), abs=1e-6)
    with pytest.raises(PcasError, match="hears audio only"):
        pcas("diagnose", "--run", str(run_dir), "--device", "cpu", "--listener", "ast", "--set", 'co_listener=""',
             "--set", "prompt_check=true", "--set", "out=ast-prompts")
    with pytest.raises(PcasError, match="paired_with names the examined listener itself"):
        pcas("diagnose", "--run", str(run_dir), "--device", "cpu", "--listener", "ast", "--set", 'co_listener=""',
             "--set", "listening=false", "--set", "paired_with=ast", "--set", "out=ast-ast")


def test_vision_check_gates_the_listener_by_what_is_visible(run_dir: Path) -> None:
    """The listener's val probabilities times the visible classes (oracle) and times visual.pt's probabilities ** a:
    a = 0 leaves the listener unchanged, and the oracle row equals zeroing the invisible classes by hand."""
    from pcas_cli.metrics_cls import mean_average_precision
    from pcas_cli.stages._common import classes_in_masks, listen, second_targets

    pcas("diagnose", "--run", str(run_dir), "--device", "cpu", "--listener", "ast", "--set", 'co_listener=""',
         "--set", "vision_check=true", "--set", "vision_exponents=[0.0, 1.0]", "--set", "out=vision")
    v = json.loads((run_dir / "metrics/vision.json").read_text())["vision"]
    feats = read_features(run_dir / "features/val.h5")
    targets, has = second_targets(feats)
    probs = listen(run_dir / "ckpt", ("ast",), feats, torch.device("cpu"), "val")[0].probs.numpy()
    visible = np.stack([classes_in_masks(feats.read("visible", i), len(feats.classes)) for i in range(len(feats))])
    assert v["listener"]["map"] == pytest.approx(mean_average_precision(probs[has], targets[has]), abs=1e-6)
    assert v["visible_oracle"]["map"] == pytest.approx(
        mean_average_precision((probs * visible)[has], targets[has]), abs=1e-6)
    assert [f["exponent"] for f in v["fused"]] == [0.0, 1.0]
    assert v["fused"][0]["map"] == pytest.approx(v["listener"]["map"]) and 0.0 < v["looking_map_visible"] <= 1.0
    assert v["fused"][1]["exact_set"] != v["fused"][0]["exact_set"] or v["fused"][1]["map"] != v["listener"]["map"]
    with pytest.raises(PcasError, match="vision_check needs a listener"):
        pcas("diagnose", "--run", str(run_dir), "--device", "cpu", "--listener", "", "--set", "vision_check=true")


def test_diagnose_visual_probe(run_dir: Path) -> None:
    """The visual probe trains the configured backbone on the visible classes and scores val both ways."""
    pcas("diagnose", "--run", str(run_dir), "--device", "cpu", "--listener", "", "--set", "visual_probe_steps=2",
         "--set", "model.backbone=resnet18_os8", "--set", "out=visual-probe")
    p = json.loads((run_dir / "metrics/visual-probe.json").read_text())["visual_probe"]
    assert p["steps"] == 2 and p["backbone"] == "resnet18_os8" and p["frames"]["train"] > 0
    for key in ("val_map_visible", "val_map_video_labels", "chance_map_visible", "chance_map_video_labels"):
        assert 0.0 < p[key] <= 1.0


def test_visible_classes_hand_values() -> None:
    from pcas_cli.stages._common import classes_in_masks as visible_classes

    visible = np.zeros((2, 3, 3), np.uint8)
    visible[0, 0, 0], visible[0, 2, 2], visible[1, 1, 1] = 3, 1, 3  # frame 0: classes 2 and 0; frame 1: class 2
    assert visible_classes(visible, 4).tolist() == [[True, False, True, False], [False, False, True, False]]


def test_patch_label_scores_hand_values() -> None:
    from pcas_cli.stages.diagnose import patch_label_scores

    labels = torch.tensor([1, 1, 0, 0, 255, 1])  # 3 labelled sounding, 2 not, 1 ignored
    truth = torch.tensor([True, False, True, False, True, False])  # 3 patches really sounding
    s = patch_label_scores(labels, truth)
    assert s == {"positive_share": 0.5, "precision": 1 / 3, "recall": 1 / 3, "negatives_sounding": 0.5,
                 "ignored_share": 1 / 6, "base_rate": 0.5}


def test_crop_counts_hand_values() -> None:
    from pcas_cli.stages.diagnose import crop_counts, crop_shares

    positive = torch.tensor([[True, False, False], [True, True, True], [False, False, False]])
    counts = crop_counts(positive)  # 3 frames, 9 crops, 5 negative, only frame 0 has both kinds
    assert counts.tolist() == [3, 9, 5, 1]
    assert crop_shares(counts + crop_counts(positive[:1])) == {"frames": 4, "negative_crops": 7 / 12,
                                                                "frames_with_both": 2 / 4}


def test_similarity_by_region_hand_values() -> None:
    from pcas_cli.stages.diagnose import region_shares, similarity_by_region

    similarity = torch.tensor([[0.9, 0.2, 0.5, 0.0], [0.1, 0.3, 1.0, 0.4]])
    sounding = torch.tensor([[True, False, False, False], [True, False, False, False]])
    visible = torch.tensor([[True, True, False, False], [True, False, False, False]])  # frame 1: no silent object
    sums = similarity_by_region(similarity, sounding, visible)
    # rows: sounding object, silent object, background; columns: frames with it, sum of its mean, frames with the best
    assert sums == pytest.approx(np.array([[2, 0.9 + 0.1, 1], [1, 0.2, 0], [2, 0.25 + 1.7 / 3, 1]]))
    shares = region_shares(sums)
    assert shares["sounding_object"] == pytest.approx({"frames": 2, "mean_similarity": 0.5, "best_patch_share": 0.5})
    assert shares["silent_object"] == pytest.approx({"frames": 1, "mean_similarity": 0.2, "best_patch_share": 0.0})
    assert shares["background"] == pytest.approx({"frames": 2, "mean_similarity": (0.25 + 1.7 / 3) / 2,
                                                  "best_patch_share": 0.5})


def test_second_decisions_hand_values() -> None:
    from pcas_cli.stages.diagnose import second_decisions

    probs = np.array([[[0.9, 0.1], [0.6, 0.7], [0.2, 0.3], [0.8, 0.2]]])  # 1 clip, 4 seconds, 2 classes
    targets = np.array([[[1, 0], [1, 0], [0, 0], [0, 0]]], bool)  # seconds 2 and 3 are silent
    has = np.array([[True, True, True, True]])
    d = second_decisions(probs, targets, has, 0.5)
    assert d["exact_set"] == 0.5  # seconds 0 and 2 right; 1 hears an extra class; 3 hears a silent one
    assert d["silent_heard"] == 0.5 and d["silent_seconds"] == 2
    has[0, 3] = False  # a second without a mask is not scored
    d = second_decisions(probs, targets, has, 0.5)
    assert {k: d[k] for k in ("exact_set", "silent_heard", "silent_seconds")} == {"exact_set": 2 / 3,
                                                                                  "silent_heard": 0.0,
                                                                                  "silent_seconds": 1}
    assert d["by_sources"]["silent"] == {"seconds": 1, "exact": 1.0, "top_n": None}  # only scored seconds count
    assert d["by_sources"]["one"] == {"seconds": 2, "exact": 0.5, "top_n": 0.5}  # second 1 ranks class 1 first


def test_self_trained_listener_learns_from_its_teacher(run_dir: Path, tmp_path: Path) -> None:
    """A listener self-trained from ast.pt records the teacher, trains MIL + per-second terms, starts from the
    teacher's weights, and refuses a teacher it cannot start from."""
    from pcas_cli.training.checkpoint import load_checkpoint

    ast, student = load_checkpoint(run_dir / "ckpt/ast.pt"), load_checkpoint(run_dir / "ckpt/ast-st.pt")
    assert student["provenance"]["inputs"]["ckpt/ast.pt"] == ast["artifact_id"]
    rows = [json.loads(line) for line in (run_dir / "ckpt/ast-st.log.jsonl").read_text().splitlines()]
    assert set([row for row in rows if row["kind"] == "epoch"][-1]["train"]) == {"mil", "second", "loss"}
    assert (run_dir / "metrics/audio-ast-st.json").exists()
    run2 = tmp_path / "run"
    shutil.copytree(run_dir, run2)
    tiny_audio = ["--set", "audio.embed_dim=32", "--set", "audio.depth=1", "--set", "audio.num_heads=2"]
    r = ["train-tvp", "--run", str(run2), "--epochs", "1", "--device", "cpu", *tiny_audio, *TINY_OPTIM]
    pcas(*r, "--no-tvp", "--name", "frozen", "--set", "teacher=ast", "--set", "optim.lr=1e-12")
    frozen = load_checkpoint(run2 / "ckpt/frozen.pt")["model"]  # (almost) no step away from where it started
    assert frozen.keys() == ast["model"].keys()
    assert all(torch.allclose(frozen[k].float(), ast["model"][k].float(), rtol=0.0, atol=1e-8) for k in frozen)
    pcas(*r, "--tvp", "--name", "tvp-st", "--set", "teacher=tvp")  # a TVP teacher hears with the student's prompts
    # TVP grafted onto the audio-only listener: it starts as ast.pt, plus a fresh prompt projection
    pcas(*r, "--tvp", "--name", "graft", "--set", "teacher=ast", "--set", "optim.lr=1e-12")
    graft = load_checkpoint(run2 / "ckpt/graft.pt")
    assert {k for k in graft["model"] if k not in ast["model"]} == {
        f"audio.prompt_proj.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")}
    assert all(torch.allclose(graft["model"][k].float(), v.float(), rtol=0.0, atol=1e-8)
               for k, v in ast["model"].items())
    assert set(graft["provenance"]["inputs"]) >= {"ckpt/ast.pt", "ckpt/visual.pt"}
    assert graft["provenance"]["model_spec"]["tvp"]
    pcas(*r, "--no-tvp", "--name", "mixed", "--set", "teacher=ast", "--set", "augment.mix=1.0")  # clip mixing
    assert load_checkpoint(run2 / "ckpt/mixed.pt")["provenance"]["config"]["augment"]["mix"] == 1.0
    tvp_student = load_checkpoint(run2 / "ckpt/tvp-st.pt")["provenance"]["inputs"]
    assert tvp_student["ckpt/tvp.pt"] == load_checkpoint(run2 / "ckpt/tvp.pt")["artifact_id"]
    pcas(*r, "--no-tvp", "--name", "st", "--set", "self_train_epochs=1", "--set", "self_train_rounds=2")  # one stage
    chain = ("st-mil", "st-st1", "st")  # each taught by the one before
    ckpts = {stem: load_checkpoint(run2 / f"ckpt/{stem}.pt") for stem in chain}
    for teacher, stem in zip(chain, chain[1:]):
        assert ckpts[stem]["provenance"]["inputs"][f"ckpt/{teacher}.pt"] == ckpts[teacher]["artifact_id"], stem
        assert ckpts[stem]["provenance"]["config"]["teacher"] == teacher, stem
        assert (run2 / f"metrics/audio-{stem}.json").exists()
    for args, message in (((*r, "--no-tvp", "--set", "teacher=ast"), "cannot teach itself"),
                          ((*r, "--no-tvp", "--name", "x", "--set", "teacher=ast", "--set", "self_train_epochs=1"),
                           "not both"),
                          ((*r, "--no-tvp", "--name", "x", "--set", "teacher=tvp"), "architecture differs"),
                          ((*r, "--no-tvp", "--name", "x", "--set", "self_train_epochs=1", "--set",
                            "self_train_rounds=0"), "at least 1"),
                          ((*r, "--no-tvp", "--name", "x", "--set", "teacher=nope"), "no such teacher")):
        with pytest.raises(PcasError, match=message):
            pcas(*args)


def test_teacher_probabilities_match_what_later_stages_hear(run_dir: Path) -> None:
    """A TVP teacher's probabilities in train-tvp (cached prompts) equal `listen`'s (prompts computed per clip), the
    path align / refine / pseudo-label hear through."""
    from pcas_cli.stages._common import audio_from_checkpoint, listen, open_features, visual_from_checkpoint
    from pcas_cli.stages.train_tvp import listener_probs, prompt_cache

    cpu = torch.device("cpu")
    train = open_features(run_dir, "train")
    heard, _ = listen(run_dir / "ckpt", ("tvp",), train, cpu, "train")
    bundle, _ = visual_from_checkpoint(run_dir / "ckpt/visual.pt", "train-visual")
    audio, _ = audio_from_checkpoint(run_dir / "ckpt/tvp.pt")
    prompts = prompt_cache(train, bundle.visual, cpu)
    torch.testing.assert_close(listener_probs(audio, train, prompts, cpu), heard.probs, rtol=1e-5, atol=1e-6)
    no_prompts = listener_probs(audio, train, torch.zeros_like(prompts), cpu)
    assert not torch.allclose(no_prompts, heard.probs, atol=1e-4)  # the prompts matter: the check can fail


def test_table4_control_trains_the_classifier_alone(run_dir: Path, tmp_path: Path) -> None:
    """With CMC, CMPC and CMCC all off, align / refine train the classification loss alone (Table 4's control), and
    refine starts from any visual-model checkpoint, whatever its name (the stage is read from the file)."""
    run2 = tmp_path / "run"
    shutil.copytree(run_dir, run2)
    r = ["--run", str(run2), "--epochs", "1", "--device", "cpu", *TINY_OPTIM]
    pcas("align", *r, "--name", "ctrl", "--no-cmc", "--set", "visual_lr_scale=0.5", "--set", "optim.log_every=1")
    steps = [json.loads(line) for line in (run2 / "ckpt/ctrl.log.jsonl").read_text().splitlines()]
    lrs = [row["lr"] for row in steps if row["kind"] == "step"]  # [visual encoder + classifier, projection heads]
    assert lrs and all(len(lr) == 2 and lr[0] == pytest.approx(0.5 * lr[1]) for lr in lrs)
    # "ctrl" does not say which stage made it
    pcas("refine", *r, "--name", "refine-none", "--init", "ctrl", "--no-cmc", "--no-cmpc", "--no-cmcc")
    wrong = CliRunner().invoke(app, ["refine", *r, "--name", "x", "--init", "tvp"])  # a listener is no visual model
    assert wrong.exit_code != 0 and "made by stage 'train-visual' or 'align' or 'refine'" in str(wrong.exception)
    for name in ("ctrl", "refine-none"):
        rows = [json.loads(line) for line in (run2 / f"ckpt/{name}.log.jsonl").read_text().splitlines()]
        epochs = [row for row in rows if row["kind"] == "epoch"]
        assert epochs and set(epochs[-1]["train"]) == {"cls", "loss"}  # no contrastive term was computed
    from pcas_cli.training.checkpoint import load_checkpoint

    inputs = load_checkpoint(run2 / "ckpt/refine-none.pt")["provenance"]["inputs"]
    assert inputs["ckpt/ctrl.pt"] == load_checkpoint(run2 / "ckpt/ctrl.pt")["artifact_id"]
    pcas("pseudo-label", "--run", str(run2), "--device", "cpu", "--set", "scales=[1.0]", "--split", "val",
         "--weights", "refine-none", "--out", "ablations/none")
    assert (run2 / "ablations/none/val.h5").exists()
    # the diagnostic oracle labels (ground-truth regions) train CMPC / CMCC in their place, and say so
    pcas("refine", *r, "--name", "refine-oracle", "--init", "ctrl", "--no-cmc", "--cmpc", "--cmcc",
         "--set", 'oracle_patch_labels="sounding-background"', "--set", "cmcc_params.crop_size=16")
    rows = [json.loads(line) for line in (run2 / "ckpt/refine-oracle.log.jsonl").read_text().splitlines()]
    assert {"cmpc", "cmcc"} <= set([row for row in rows if row["kind"] == "epoch"][-1]["train"])
    config = load_checkpoint(run2 / "ckpt/refine-oracle.pt")["provenance"]["config"]
    assert config["oracle_patch_labels"] == "sounding-background"
    with pytest.raises(PcasError, match="oracle_patch_labels = 'masks': expected"):
        pcas("refine", *r, "--name", "x", "--init", "ctrl", "--set", 'oracle_patch_labels="masks"')


def test_report_snapshots_a_real_run_and_rebuilds_its_tables_without_it(run_dir: Path, tmp_path: Path,
                                                                         monkeypatch) -> None:
    """`pcas report` over a real AVSS-layout run: the values it derives from HDF5 artifacts (listener errors, the
    pictures) are taken into the snapshot, so the same tables come back once the run folder is gone."""
    monkeypatch.chdir(tmp_path)
    runs, out = tmp_path / "runs", tmp_path / "results"
    runs.mkdir()
    (runs / "p-avss").symlink_to(run_dir)
    pcas("report", "--runs", str(runs), "--out", str(out), "--prefix", "p", "--no-update-readme")
    text = (out / "p.md").read_text()
    derived = json.loads((out / "runs/p-avss/derived.json").read_text())
    feats = read_features(run_dir / "features/test.h5")
    annotated = sum(int(feats.read("mask_valid", i).sum()) for i in range(len(feats)))
    assert sum(g["frames"] for g in derived["listener_errors"].values()) == annotated
    for section in ("#### Error analysis", "![p-examples](p-examples.png)", "| Fully supervised |"):
        assert section in text
    assert (out / "runs/p-avss/metrics/pcas.json").exists() and (out / "p-examples.png").exists()
    (runs / "p-avss").unlink()
    pcas("report", "--runs", str(runs), "--out", str(out), "--prefix", "p", "--no-update-readme")
    assert (out / "p.md").read_text().split("\n\n", 2)[2] == text.split("\n\n", 2)[2]


# ---- CUDA (marker `gpu`: `make test-gpu`, run where a GPU exists; CI has none) -------------------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CHECKPOINTS = ("visual", "tvp", "ast", "ast-st", "align", "refine", "supervised", "seg")
PREDICTIONS = ("pseudo/val.h5", "pseudo/test.h5", "baselines/cam/test.h5", "crf/test.h5", "pseudo/train.h5",
               "supervised/test.h5", "seg/test.h5")


def _prediction_differences(a: Path, b: Path) -> dict[str, float]:
    """Largest absolute score difference and share of differing mask pixels between two prediction artifacts."""
    pa, pb = read_predictions(a), read_predictions(b)
    score_diff, mask_diff, pixels = 0.0, 0, 0
    for i in range(pa.n):
        sa, sb = (p.read("scores", i).astype(np.float32) for p in (pa, pb))
        ma, mb = pa.read("masks", i), pb.read("masks", i)
        score_diff = max(score_diff, float(np.abs(sa - sb).max()))
        mask_diff, pixels = mask_diff + int((ma != mb).sum()), pixels + ma.size
    return {"scores": score_diff, "masks": mask_diff / pixels}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, needs_cuda])])
def test_every_stage_repeats_bit_for_bit(tmp_path: Path, device: str) -> None:
    """Same seed, same data, same numbers, on the CPU and on the GPU: two runs of every stage give identical weights
    and identical predictions (seed_everything asks for deterministic kernels; on CUDA it sets cuBLAS's workspace)."""
    from pcas_cli.training.checkpoint import load_checkpoint

    synth_tiny(tmp_path / "raw")
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        run_every_stage(tmp_path / "raw", run, device)
    weights = {n: [load_checkpoint(r / f"ckpt/{n}.pt")["artifact_id"] for r in runs] for n in CHECKPOINTS}
    differing = [n for n, (a, b) in weights.items() if a != b]
    differing += [f"{rel}: {d}" for rel in PREDICTIONS
                  if (d := _prediction_differences(*(r / rel for r in runs)))["scores"] or d["masks"]]
    assert not differing, differing


@pytest.mark.gpu
@needs_cuda
def test_labelling_on_cuda_matches_the_cpu(run_dir: Path, tmp_path: Path) -> None:
    """The CPU run's weights give the same pseudo-labels on the GPU (up to float rounding: cuDNN may use TF32)."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    for split in ("val", "test"):
        pcas("pseudo-label", "--run", str(run), "--device", "cuda", "--set", "scales=[1.0]", "--split", split)
    d = _prediction_differences(run_dir / "pseudo/test.h5", run / "pseudo/test.h5")
    assert d["scores"] < 2e-2 and d["masks"] < 1e-2, d
