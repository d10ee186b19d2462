"""`pcas eval` on tiny hand-made artifacts: refusals and end-to-end numbers (pcas_cli.stages.evaluate)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pcas_cli.artifacts import ArtifactWriter, read_features, read_predictions
from pcas_cli.errors import PcasError
from pcas_cli.stages.evaluate import EvalConfig, run, score

F_13_23 = 0.65 / 1.15
SEM_CLASSES = ["dog", "cat", "bird"]


def write_features(path: Path, clips: list[dict], classes: list[str], task: str) -> Path:
    """clips: dicts with clip_id, masks (T, H, W), mask_valid (T,), frame_valid (T,)."""
    t, h, w = clips[0]["masks"].shape
    dims = {"T": t, "H": h, "W": w, "F": 2, "M": 3, "C": len(classes)}
    with ArtifactWriter(path, "features", dims, {"classes": classes, "task": task}, {"stage": "test"}) as wr:
        for c in clips:
            wr.append(clip_id=c["clip_id"], subset="x", frames=np.zeros((t, h, w, 3)), fbank=np.zeros((t, 2, 3)),
                      labels=np.zeros(len(classes)), masks=c["masks"], mask_valid=c["mask_valid"],
                      frame_valid=c["frame_valid"], visible=np.zeros((t, h, w)))
    return path


def write_predictions(path: Path, clips: list[dict], classes: list[str], task: str, audio_classes: int = 3,
                      inputs: dict[str, str] | None = None) -> Path:
    """clips: dicts with clip_id, scores (T, K, H, W), masks (T, H, W)."""
    t, k, h, w = clips[0]["scores"].shape
    dims = {"T": t, "K": k, "H": h, "W": w, "A": audio_classes}
    prov = {"stage": "test", "inputs": inputs or {}}
    with ArtifactWriter(path, "predictions", dims, {"classes": classes, "task": task}, prov) as wr:
        for c in clips:
            wr.append(clip_id=c["clip_id"], scores=c["scores"], masks=c["masks"],
                      frame_classes=np.zeros((t, audio_classes)))
    return path


# Binary: T = 2 frames of 1 x 2 pixels. Clip a: frame 0 = "A" (gt [1, 0]), clip b: frame 0 = "B" (gt [0, 1]); both
# predict prob [0.8, 0.2] (mask [1, 0]). Frame 1 of each clip has no ground-truth mask and a wrong prediction, so
# scoring it would change every number.
def binary_fixture(tmp_path: Path, ids: tuple[str, str] = ("a", "b"), classes: list[str] | None = None,
                   width: int = 2, inputs: dict[str, str] | None = None) -> tuple[Path, Path]:
    feats = []
    for cid, gt in zip(("a", "b"), ([1, 0], [0, 1])):
        masks = np.zeros((2, 1, 2), np.uint8)
        masks[0, 0] = gt
        feats.append({"clip_id": cid, "masks": masks, "mask_valid": np.array([True, False]),
                      "frame_valid": np.array([True, True])})
    preds = []
    for cid in ids:
        scores = np.zeros((2, 2, 1, width), np.float32)
        scores[0, 1, 0, :2] = [0.8, 0.2]
        scores[1, 1] = 0.9
        scores[:, 0] = 1 - scores[:, 1]
        masks = (scores[:, 1] > 0.5).astype(np.uint8)
        preds.append({"clip_id": cid, "scores": scores, "masks": masks})
    f = write_features(tmp_path / "features" / "test.h5", feats, ["dog", "cat"], "binary")
    p = write_predictions(tmp_path / "crf" / "test.h5", preds, classes or ["sounding"], "binary", inputs=inputs)
    return f, p


# Semantic: one clip, T = 3 frames of 2 x 2 pixels; frames 0 and 1 as in test_metrics (SEM_GT / SEM_PRED), frame 2 is
# padding (frame_valid False, all-background GT) predicted all background.
def semantic_fixture(tmp_path: Path, pred_classes: list[str] | None = None) -> tuple[Path, Path]:
    gt = np.array([[[0, 1], [1, 1]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]], np.uint8)
    pred = np.array([[[0, 1], [0, 1]], [[2, 0], [0, 0]], [[0, 0], [0, 0]]], np.uint8)
    feats = [{"clip_id": "v", "masks": gt, "mask_valid": np.array([True, True, False]),
              "frame_valid": np.array([True, True, False])}]
    classes = pred_classes or SEM_CLASSES
    scores = np.eye(len(classes) + 1, dtype=np.float32)[pred].transpose(0, 3, 1, 2)  # (T, K, H, W) one-hot
    f = write_features(tmp_path / "features" / "test.h5", feats, SEM_CLASSES, "semantic")
    p = write_predictions(tmp_path / "pseudo" / "test.h5", [{"clip_id": "v", "scores": scores, "masks": pred}],
                          classes, "semantic")
    return f, p


def test_binary_end_to_end_writes_json(tmp_path):
    f, p = binary_fixture(tmp_path)
    out = tmp_path / "metrics" / "test.json"
    m = run(EvalConfig(features=f, predictions=p, out=out, f_batch_frames=1, name="crf-test"))
    on_disk = json.loads(out.read_text())
    assert on_disk == json.loads(json.dumps(m))
    assert not (out.parent / "test.json.tmp").exists()
    assert on_disk["name"] == "crf-test" and on_disk["task"] == "binary"
    assert on_disk["frames_scored"] == 2  # the two frames without a mask are not scored
    assert on_disk["miou"] == pytest.approx(0.5, abs=1e-6)  # IoU 1 (A) and 0 (B)
    assert on_disk["fscore"] == pytest.approx((1 + F_13_23) / 2, abs=1e-6)  # batches of one frame: max 1, 13/23
    assert on_disk["fscore_batch_independent"] == pytest.approx(F_13_23, abs=1e-6)
    assert on_disk["protocol"]["f_batch_frames"] == 1
    assert on_disk["features_id"] == read_features(f).artifact_id
    assert on_disk["predictions_id"] == read_predictions(p).artifact_id


def test_binary_batch_of_two_and_default_out(tmp_path):
    f, p = binary_fixture(tmp_path)
    m = run(EvalConfig(features=f, predictions=p, f_batch_frames=2))
    assert m["fscore"] == pytest.approx(F_13_23, abs=1e-6)
    assert m["name"] == "crf"
    assert json.loads((tmp_path / "crf" / "test.metrics.json").read_text())["fscore"] == m["fscore"]


def test_semantic_end_to_end_and_padded_frames(tmp_path):
    f, p = semantic_fixture(tmp_path)
    out = tmp_path / "m.json"
    m = run(EvalConfig(features=f, predictions=p, out=out))
    assert m["frames_scored"] == 2 and m["padded_frames_scored"] == 0
    assert m["miou"] == pytest.approx((0.625 + 2 / 3) / 4)  # background 0.625, dog 2/3, cat (FP only) 0, bird 0
    assert m["miou_present"] == pytest.approx((0.625 + 2 / 3) / 2)
    assert m["fscore"] == pytest.approx(((F_13_23 + 13 / 14) / 2 + 26 / 29) / 4)
    assert list(m["per_class"]) == ["background", *SEM_CLASSES]
    assert m["per_class"]["cat"] == {"iou": 0.0, "fscore": 0.0, "frames": 1, "gt_frames": 0}
    assert m["per_class"]["bird"]["frames"] == 0
    assert json.loads(out.read_text())["miou"] == pytest.approx(m["miou"])
    # the clips' statistics behind the bootstrap interval add up to the official per-class sums
    clips = m["clips"]
    per_class_frames = np.sum(clips["count"], axis=0)
    assert per_class_frames.tolist() == [r["frames"] for r in m["per_class"].values()]
    assert np.sum(clips["iou_sum"], axis=0)[:2] / per_class_frames[:2] == pytest.approx([0.625, 2 / 3])
    lo, hi = m["miou_ci95"]
    assert 0.0 <= lo <= hi <= 1.0
    # The official quirk also scores the padded frame: a perfect all-background frame raises background IoU to 0.75.
    padded = run(EvalConfig(features=f, predictions=p, out=out, avss_padded_frames=True))
    assert padded["frames_scored"] == 3 and padded["padded_frames_scored"] == 1
    assert padded["miou"] == pytest.approx((0.75 + 2 / 3) / 4)
    assert padded["protocol"]["avss_padded_frames"] is True


def test_score_is_callable_on_readers(tmp_path):
    f, p = binary_fixture(tmp_path)
    with read_features(f) as fr, read_predictions(p) as pr:
        r = score(fr, pr, f_batch_frames=2)
    assert r["miou"] == pytest.approx(0.5, abs=1e-6) and r["fscore"] == pytest.approx(F_13_23, abs=1e-6)


def _refused(f: Path, p: Path) -> str:
    with pytest.raises(PcasError) as e:
        run(EvalConfig(features=f, predictions=p, out=p.parent / "m.json"))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(p))
    assert not (p.parent / "m.json").exists()
    return msg


def test_refuses_other_clips(tmp_path):
    f, p = binary_fixture(tmp_path, ids=("a", "c"))
    assert "1 missing" in _refused(f, p)


def test_refuses_other_clip_order(tmp_path):
    f, p = binary_fixture(tmp_path, ids=("b", "a"))
    assert "another order" in _refused(f, p)


def test_refuses_other_size(tmp_path):
    f, p = binary_fixture(tmp_path, width=3)
    assert "dimension W" in _refused(f, p)


def test_refuses_binary_predictions_with_wrong_classes(tmp_path):
    f, p = binary_fixture(tmp_path, classes=["dog"])
    assert "sounding" in _refused(f, p)


def test_refuses_semantic_class_mismatch(tmp_path):
    f, p = semantic_fixture(tmp_path, pred_classes=["dog", "bird", "cat"])
    assert "position 1" in _refused(f, p)


def test_refuses_semantic_predictions_on_binary_features(tmp_path):
    f, _ = binary_fixture(tmp_path)
    scores = np.zeros((2, 3, 1, 2), np.float32)
    p = write_predictions(tmp_path / "sem.h5", [{"clip_id": c, "scores": scores, "masks": np.zeros((2, 1, 2))}
                                                for c in ("a", "b")], ["dog", "cat"], "semantic")
    assert "binary masks" in _refused(f, p)


def test_refuses_stale_features(tmp_path):
    # The predictions record features/test.h5 as an input with another fingerprint: that file was re-created since.
    f, p = binary_fixture(tmp_path, inputs={"features/test.h5": "0" * 64})
    assert "stale input" in _refused(f, p)


def test_accepts_recorded_features_with_same_fingerprint(tmp_path):
    f, _ = binary_fixture(tmp_path)
    f, p = binary_fixture(tmp_path, inputs={"features/test.h5": read_features(f).artifact_id})
    assert run(EvalConfig(features=f, predictions=p, f_batch_frames=2))["frames_scored"] == 2


def test_compare_paired_bootstrap_and_refusals(tmp_path):
    """`pcas compare`: the fixture's predictions (clip a right, clip b wrong: mIoU 0.5) against perfect ones."""
    from pcas_cli.stages.compare import CompareConfig, run as compare_run

    f, p = binary_fixture(tmp_path)
    weak = run(EvalConfig(features=f, predictions=p, out=tmp_path / "weak.json", name="weak"))
    assert weak["clips"]["ids"] == ["a", "b"] and weak["clips"]["count"] == [[1], [1]]
    assert np.ravel(weak["clips"]["iou_sum"]) == pytest.approx([1.0, 0.0])
    perfect_scores = []
    for gt in ([1, 0], [0, 1]):
        scores = np.zeros((2, 2, 1, 2), np.float32)
        scores[:, 1, 0] = gt
        scores[:, 0] = 1 - scores[:, 1]
        perfect_scores.append(scores)
    p2 = write_predictions(tmp_path / "perfect" / "test.h5",
                           [{"clip_id": c, "scores": s, "masks": s[:, 1] > 0.5} for c, s in zip("ab", perfect_scores)],
                           ["sounding"], "binary")
    run(EvalConfig(features=f, predictions=p2, out=tmp_path / "perfect.json", name="perfect"))
    same, better = compare_run(CompareConfig(reference=tmp_path / "weak.json",
                                             others=(tmp_path / "weak.json", tmp_path / "perfect.json")))
    assert same["difference"] == 0.0 and same["difference_ci95"] == (0.0, 0.0) and same["share_ci95"] == (1.0, 1.0)
    # each resample: perfect 1, weak = the share of clip a drawn, so the lead = the share of b (0, 1/2 or 1)
    assert better["difference"] == pytest.approx(0.5) and better["difference_ci95"] == pytest.approx((0.0, 1.0))
    # a metrics file from before the clips' statistics, a missing one, another split: one line naming the file
    old = json.loads((tmp_path / "weak.json").read_text())
    del old["clips"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    other = json.loads((tmp_path / "weak.json").read_text())
    other["clips"]["ids"] = ["a", "c"]
    (tmp_path / "other.json").write_text(json.dumps(other))
    regenerated = {**json.loads((tmp_path / "weak.json").read_text()), "features_id": "another data set"}
    (tmp_path / "regenerated.json").write_text(json.dumps(regenerated))  # same clip ids, other ground truth
    for name, why in (("old.json", "re-run pcas eval"), ("missing.json", "no such metrics file"),
                      ("other.json", "scored other clips"), ("regenerated.json", "ground truth")):
        with pytest.raises(PcasError) as e:
            compare_run(CompareConfig(reference=tmp_path / "weak.json", others=(tmp_path / name,)))
        assert str(e.value).startswith(str(tmp_path / name)) and why in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(PcasError, match="resamples"):
        compare_run(CompareConfig(reference=tmp_path / "weak.json", others=(tmp_path / "weak.json",), resamples=0))
