from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from pcas_cli.artifacts import ArtifactWriter, read_features, read_predictions, tmp_path_for
from pcas_cli.config import load_config
from pcas_cli.crf import CRF_PRESETS, CRFParams, crf_many, dense_crf, dense_crf_present, get_preset, resolve_workers
from pcas_cli.errors import PcasError
from pcas_cli.stages.crf import CRFConfig, as_probs, made_with_threshold, present_channels, run, with_background

REPO = Path(__file__).resolve().parents[1]


# --- fixtures: a two-colour image with a noisy, misplaced unary -------------------------------------------------------

def _two_colour(h: int = 24, w: int = 24, edge: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Left of `edge` black, right white; returns the (H, W, 3) image and the true (H, W) foreground."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:, edge:] = 255
    truth = np.zeros((h, w), np.int64)
    truth[:, edge:] = 1
    return image, truth


def _noisy_fg(h: int, w: int, edge: int, shift: int, seed: int) -> np.ndarray:
    """Foreground probability 0.6 right of (edge - shift), 0.4 left of it, plus noise: boundary off by `shift`."""
    rng = np.random.default_rng(seed)
    fg = np.full((h, w), 0.4)
    fg[:, edge - shift:] = 0.6
    return np.clip(fg + rng.normal(0.0, 0.15, (h, w)), 0.02, 0.98)


def _binary_probs(fg: np.ndarray) -> np.ndarray:
    return np.stack([1.0 - fg, fg]).astype(np.float32)  # (2, H, W)


# --- presets ------------------------------------------------------------------------------------------------------

def test_presets_match_reference_values():
    as_tuple = {name: (p.gauss_sxy, p.gauss_compat, p.bilateral_sxy, p.bilateral_srgb, p.bilateral_compat,
                       p.iterations, p.unary) for name, p in CRF_PRESETS.items()}
    assert as_tuple == {
        "toco_cam": (3, 3, 36, 3, 4, 10, "softmax"),
        "toco_seg": (1, 1, 121, 5, 4, 10, "softmax"),
        "psa": (3, 3, 80, 13, 10, 10, "softmax"),
    }
    with pytest.raises(ValueError, match="known"):
        get_preset("nope")
    with pytest.raises(ValueError):
        CRFParams(1, 1, 1, 1, 1, unary="labels")  # type: ignore[arg-type]


def test_scaled_preset_changes_only_spatial_widths():
    p = CRF_PRESETS["psa"].scaled(0.25)
    assert (p.gauss_sxy, p.bilateral_sxy) == (0.75, 20.0)
    assert (p.gauss_compat, p.bilateral_srgb, p.bilateral_compat) == (3, 13, 10)
    with pytest.raises(ValueError):
        CRF_PRESETS["psa"].scaled(0.0)


# --- dense_crf ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["toco_cam", "psa"])
def test_crf_snaps_misplaced_boundary_to_colour_edge(preset):
    image, truth = _two_colour()
    probs = _binary_probs(_noisy_fg(24, 24, 12, shift=3, seed=0))
    before = (probs.argmax(0) == truth).mean()
    refined = dense_crf(image, probs, CRF_PRESETS[preset])
    assert refined.shape == (2, 24, 24) and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-5)
    assert before < 0.8
    assert (refined.argmax(0) == truth).mean() == 1.0


def test_crf_non_square_image_width_first():
    # 16 rows x 40 columns with a vertical edge at column 25: a swapped (H, W) would scramble the layout.
    image, truth = _two_colour(h=16, w=40, edge=25)
    probs = _binary_probs(_noisy_fg(16, 40, 25, shift=3, seed=1))
    refined = dense_crf(image, probs, CRF_PRESETS["toco_cam"])
    assert (refined.argmax(0) == truth).mean() == 1.0


def test_crf_zero_iterations_returns_normalised_unary():
    image, _ = _two_colour(8, 8, 4)
    probs = _binary_probs(np.full((8, 8), 0.7))
    out = dense_crf(image, probs, dataclasses.replace(CRF_PRESETS["psa"], iterations=0))
    np.testing.assert_allclose(out[1], 0.7, atol=1e-5)  # no message passing: softmax(-unary) = p


def test_crf_input_checks_and_single_label():
    image, _ = _two_colour(8, 8, 4)
    probs = _binary_probs(np.full((8, 8), 0.5))
    with pytest.raises(ValueError, match="uint8"):
        dense_crf(image.astype(np.float32), probs, CRF_PRESETS["psa"])
    with pytest.raises(ValueError, match="image must be"):
        dense_crf(image[:, :5], probs, CRF_PRESETS["psa"])
    assert dense_crf(image, probs[:1], CRF_PRESETS["psa"]).tolist() == np.ones((1, 8, 8)).tolist()


def test_dense_crf_present_runs_on_present_channels_only():
    image, truth = _two_colour()
    fg = _noisy_fg(24, 24, 12, shift=3, seed=2)
    probs = np.zeros((4, 24, 24), np.float32)  # background, three classes; class 2 is the sounding one
    probs[0], probs[2] = 0.9 * (1 - fg), 0.9 * fg
    probs[1], probs[3] = 0.05, 0.05
    params = CRF_PRESETS["toco_cam"]
    out = dense_crf_present(image, probs, [2], params)
    assert out[1].max() == 0.0 and out[3].max() == 0.0
    np.testing.assert_array_equal(out[[0, 2]], dense_crf(image, probs[[0, 2]], params))
    assert (out.argmax(0) == 2 * truth).mean() == 1.0
    only_bg = dense_crf_present(image, probs, [], params)
    assert only_bg[0].min() == 1.0 and only_bg[1:].max() == 0.0
    with pytest.raises(ValueError, match="out of range"):
        dense_crf_present(image, probs, [4], params)


def _many_items(n: int) -> list:
    items = []
    for i in range(n):
        image, _ = _two_colour(20, 20, 6 + i)
        fg = _noisy_fg(20, 20, 6 + i, shift=2, seed=10 + i)
        probs = np.zeros((3, 20, 20), np.float32)
        probs[0], probs[1 + i % 2] = 1 - fg, fg
        items.append((image, probs, [1 + i % 2] if i % 3 else [1, 2]))
    return items


def test_crf_many_parallel_identical_to_serial():
    items = _many_items(7)
    params = CRF_PRESETS["toco_cam"]
    serial = list(crf_many(iter(items), params, workers=1))
    parallel = list(crf_many(iter(items), params, workers=2, chunksize=2, prefetch=1))
    assert len(serial) == len(parallel) == 7
    for (image, probs, present), a, b in zip(items, serial, parallel):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, dense_crf_present(image, probs, present, params))
    assert list(crf_many([], params, workers=2)) == []


def test_resolve_workers():
    assert resolve_workers(3) == 3 and resolve_workers(0) >= 1
    with pytest.raises(ValueError):
        resolve_workers(-1)


# --- stage helpers ------------------------------------------------------------------------------------------------

def test_as_probs_and_present_channels():
    scores = np.zeros((3, 2, 2), np.float16)
    scores[1, 0, 0], scores[0, 0, 0] = 3.0, 1.0  # unnormalised -> [0.25, 0.75, 0]
    p = as_probs(scores)
    np.testing.assert_allclose(p[:, 0, 0], [0.25, 0.75, 0.0])
    np.testing.assert_allclose(p[:, 1, 1], [1.0, 0.0, 0.0])  # an all-zero pixel becomes background
    assert present_channels(p, 0.01) == [1]
    assert present_channels(p[:1], 0.01) == []


# --- the `pcas crf` stage on tiny artifacts -------------------------------------------------------------------------

T, H, W = 2, 16, 16
CLASSES = ["guitar", "dog"]


def _features(path: Path, ids=("c0", "c1", "c2"), masks: np.ndarray | None = None) -> Path:
    dims = {"T": T, "H": H, "W": W, "F": 3, "M": 4, "C": len(CLASSES)}
    meta = {"classes": CLASSES, "task": "semantic"}
    with ArtifactWriter(path, "features", dims, meta, {"stage": "extract"}) as w:
        for i, cid in enumerate(ids):
            image, _ = _two_colour(H, W, 8)
            w.append(clip_id=cid, subset="v2", frames=np.stack([image] * T), fbank=np.zeros((T, 3, 4)),
                     labels=np.array([1, 0]), masks=np.zeros((T, H, W)) if masks is None else masks,
                     mask_valid=np.ones(T, bool),
                     frame_valid=np.array([True, i != 2]), visible=np.zeros((T, H, W)))
    return path


def _predictions(path: Path, ids=("c0", "c1", "c2"), size: int = H, inputs: dict | None = None, seed: int = 100
                 ) -> Path:
    dims = {"T": T, "K": 1 + len(CLASSES), "H": size, "W": size, "A": len(CLASSES)}
    meta = {"classes": CLASSES, "audio_classes": CLASSES, "task": "semantic"}
    prov = {"stage": "pseudo-label", "inputs": inputs if inputs is not None else {}}
    with ArtifactWriter(path, "predictions", dims, meta, prov) as w:
        for i, cid in enumerate(ids):
            scores = np.zeros((T, 3, size, size), np.float32)
            for t in range(T):
                fg = _noisy_fg(size, size, size // 2, shift=2, seed=seed + 10 * i + t)
                scores[t, 0], scores[t, 1] = 1 - fg, fg  # class "dog" (channel 2) absent
            w.append(clip_id=cid, scores=scores, masks=scores.argmax(1), frame_classes=np.full((T, 2), 0.25 * i))
    return path


@pytest.fixture
def pair(tmp_path):
    feats = _features(tmp_path / "features.h5")
    preds = _predictions(tmp_path / "pseudo.h5")
    return feats, preds


def _cfg(feats: Path, preds: Path, out: Path, **kw) -> CRFConfig:
    return CRFConfig(features=feats, predictions=preds, out=out, **{"workers": 1, **kw})


def test_stage_refines_valid_frames_and_copies_the_rest(pair, tmp_path):
    feats, preds = pair
    out = run(_cfg(feats, preds, tmp_path / "crf.h5"))
    src, dst = read_predictions(preds), read_predictions(out)
    assert dst.meta == src.meta and dst.dims == src.dims and dst.clip_ids() == ["c0", "c1", "c2"]
    assert dst.provenance["stage"] == "crf" and dst.provenance["config"]["crf_params"]["bilateral_sxy"] == 36
    assert set(dst.provenance["inputs"].values()) == {src.artifact_id, read_features(feats).artifact_id}
    _, truth = _two_colour(H, W, 8)
    for i in range(3):
        a, b = src.clip(i), dst.clip(i)
        np.testing.assert_array_equal(a["frame_classes"], b["frame_classes"])
        assert b["scores"][:, 2].max() == 0  # the absent class stays absent
        valid_ts = [0, 1] if i != 2 else [0]
        for t in valid_ts:
            assert (a["masks"][t] == truth).mean() < 0.95
            assert (b["masks"][t] == truth).mean() == 1.0
            np.testing.assert_array_equal(b["masks"][t], b["scores"][t].astype(np.float32).argmax(0))
    np.testing.assert_array_equal(dst.clip(2)["scores"][1], src.clip(2)["scores"][1])  # padding frame copied
    np.testing.assert_array_equal(dst.clip(2)["masks"][1], src.clip(2)["masks"][1])


def test_stage_parallel_gives_the_same_artifact(pair, tmp_path):
    feats, preds = pair
    a = read_predictions(run(_cfg(feats, preds, tmp_path / "serial.h5", workers=1)))
    b = read_predictions(run(_cfg(feats, preds, tmp_path / "parallel.h5", workers=2)))
    # Workers and output path are not part of the provenance, so identical content gives an identical fingerprint.
    assert a.artifact_id == b.artifact_id
    for i in range(3):
        np.testing.assert_array_equal(a.read("scores", i), b.read("scores", i))


def test_stage_resumes_an_interrupted_run(pair, tmp_path):
    feats, preds = pair
    ref = read_predictions(run(_cfg(feats, preds, tmp_path / "ref.h5")))
    out = tmp_path / "crf.h5"
    # An interrupted run with the same provenance left one finished clip; mark it to see that it is kept.
    w = ArtifactWriter(out, "predictions", ref.dims, ref.meta, ref.provenance)
    marked = ref.clip(0)
    marked["masks"] = np.full_like(marked["masks"], 7)
    w.append(**marked)
    w.abort(keep_partial=True)
    assert tmp_path_for(out).exists()
    got = read_predictions(run(_cfg(feats, preds, out, workers=2)))
    assert got.read("masks", 0).max() == 7  # continued, not redone
    for i in (1, 2):
        np.testing.assert_array_equal(got.read("masks", i), ref.read("masks", i))
        np.testing.assert_array_equal(got.read("scores", i), ref.read("scores", i))
    # resume=False (or another provenance) recomputes everything.
    w = ArtifactWriter(out, "predictions", ref.dims, ref.meta, ref.provenance)
    w.append(**marked)
    w.abort(keep_partial=True)
    again = read_predictions(run(_cfg(feats, preds, out, resume=False)))
    assert again.artifact_id == ref.artifact_id


def test_stage_refuses_mismatched_artifacts(tmp_path):
    feats = _features(tmp_path / "features.h5")
    other_ids = _predictions(tmp_path / "ids.h5", ids=("c0", "c1", "zz"))
    with pytest.raises(PcasError, match=r"ids\.h5.*clip ids differ"):
        run(_cfg(feats, other_ids, tmp_path / "a.h5"))
    # pcas eval scores the output clip by clip in the features' order, so the CRF refuses any other order too.
    reordered = _predictions(tmp_path / "order.h5", ids=("c1", "c0", "c2"))
    with pytest.raises(PcasError, match=r"order\.h5.*another order"):
        run(_cfg(feats, reordered, tmp_path / "e.h5"))
    other_size = _predictions(tmp_path / "size.h5", size=8)
    with pytest.raises(PcasError, match=r"size\.h5.*dimension H = 8"):
        run(_cfg(feats, other_size, tmp_path / "b.h5"))
    stale = _predictions(tmp_path / "stale.h5", inputs={str(feats): "0" * 64})
    with pytest.raises(PcasError, match="stale"):
        run(_cfg(feats, stale, tmp_path / "c.h5"))
    with pytest.raises(PcasError, match="preset"):
        run(_cfg(feats, _predictions(tmp_path / "ok.h5"), tmp_path / "d.h5", preset="nope"))
    assert not list(tmp_path.glob("[abcde].h5*"))


def test_stage_config_file_loads():
    cfg = load_config(CRFConfig, "crf", REPO / "stages" / "crf.toml", overrides={"workers": 2})
    assert cfg.preset == "toco_cam" and cfg.workers == 2 and cfg.resume is True
    assert isinstance(cfg.features, Path)


def _split_tree(tmp_path: Path, val_masks: np.ndarray | None, test_masks: np.ndarray | None = None) -> tuple:
    """features/{val,test}.h5 and pseudo/{val,test}.h5 as a run lays them out."""
    (tmp_path / "features").mkdir(parents=True)
    (tmp_path / "pseudo").mkdir()
    fv = _features(tmp_path / "features" / "val.h5", masks=val_masks)
    ft = _features(tmp_path / "features" / "test.h5", masks=test_masks)
    _predictions(tmp_path / "pseudo" / "val.h5", inputs={str(fv): read_features(fv).artifact_id})
    pt = _predictions(tmp_path / "pseudo" / "test.h5", inputs={str(ft): read_features(ft).artifact_id}, seed=500)
    return ft, pt


def test_choose_on_val_picks_the_kernel_with_the_best_val_miou(tmp_path):
    _, truth = _two_colour(H, W, 8)
    feats, preds = _split_tree(tmp_path, val_masks=np.stack([truth] * T))  # val masks: the colour edge
    cfg = _cfg(feats, preds, tmp_path / "crf.h5", choose_on_val=True, candidates=("none", "toco_cam"))
    out = read_predictions(run(cfg))
    choice = out.provenance["crf_choice"]
    assert choice["chosen"] == "toco_cam" and choice["val_miou"]["toco_cam"] > choice["val_miou"]["none"]
    assert "bg_threshold" not in choice  # made without a recorded background threshold: only the kernel is chosen
    assert str(tmp_path / "pseudo" / "val.h5") in out.provenance["inputs"]  # val's predictions are an input
    fixed = read_predictions(run(_cfg(feats, preds, tmp_path / "fixed.h5", preset="toco_cam")))
    for i in range(3):
        np.testing.assert_array_equal(out.read("masks", i), fixed.read("masks", i))
    # The test split's masks are never read: other test masks, the same refined predictions.
    other = _split_tree(tmp_path / "other", val_masks=np.stack([truth] * T), test_masks=np.ones((T, H, W)))
    again = read_predictions(run(_cfg(*other, tmp_path / "again.h5", choose_on_val=True,
                                      candidates=("none", "toco_cam"))))
    for i in range(3):
        np.testing.assert_array_equal(again.read("scores", i), out.read("scores", i))


def test_choose_on_val_keeps_the_predictions_when_no_crf_scores_best(tmp_path):
    val_preds_masks = read_predictions(_predictions(tmp_path / "probe.h5")).read("masks", 0)  # clip c0's masks
    feats, preds = _split_tree(tmp_path, val_masks=val_preds_masks)  # val masks = the unrefined c0 predictions
    out = read_predictions(run(_cfg(feats, preds, tmp_path / "crf.h5", choose_on_val=True,
                                    candidates=("none", "toco_cam"))))
    assert out.provenance["crf_choice"]["chosen"] == "none"
    src = read_predictions(preds)
    for i in range(3):
        np.testing.assert_array_equal(out.read("scores", i), src.read("scores", i))


def test_choose_on_val_needs_the_val_split(pair, tmp_path):
    feats, preds = pair
    with pytest.raises(PcasError, match=r"val\.h5: not found"):
        run(_cfg(feats, preds, tmp_path / "a.h5", choose_on_val=True))
    with pytest.raises(PcasError, match="crf kernel 'psa@x'"):
        run(_cfg(feats, preds, tmp_path / "b.h5", preset="psa@x"))
    assert not (tmp_path / "a.h5").exists()


# --- the background threshold, chosen after the CRF -------------------------------------------------------------

def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def test_with_background_moves_the_threshold_exactly():
    # softmax([0.3, 0.7]) moved to threshold 0.7: background and class tie, 0.5 each (by hand)
    p = _softmax(np.array([0.3, 0.7])[:, None, None])
    np.testing.assert_allclose(p[0, 0, 0], 1 / (1 + np.exp(0.4)), rtol=1e-6)
    np.testing.assert_allclose(with_background(p, np.exp(0.7 - 0.3))[:, 0, 0], [0.5, 0.5], rtol=1e-6)
    # three channels, one absent (probability 0): equal to the softmax at the new threshold; the absent stays 0
    maps = np.array([0.9, 0.2])
    before = np.append(_softmax(np.array([0.3, *maps])), 0.0)[:, None, None]
    after = np.append(_softmax(np.array([0.55, *maps])), 0.0)[:, None, None]
    np.testing.assert_allclose(with_background(before, np.exp(0.55 - 0.3)), after, rtol=1e-6)
    assert with_background(before, 1.0) is before


RAMP = (np.arange(W) + 0.5) / W  # a class map rising from left (0.03) to right (0.97)


def _thresholded(path: Path, b0: float, inputs: dict, stage: str = "pseudo-label") -> Path:
    """Predictions as pcas pseudo-label writes them: softmax over [b0, class maps], class "guitar" = RAMP."""
    dims = {"T": T, "K": 1 + len(CLASSES), "H": H, "W": W, "A": len(CLASSES)}
    meta = {"classes": CLASSES, "audio_classes": CLASSES, "task": "semantic", "bg_threshold": b0}
    logits = np.stack([np.full((H, W), b0), np.tile(RAMP, (H, 1)), np.full((H, W), -np.inf)])  # dog absent
    probs = np.stack([_softmax(logits)] * T).astype(np.float16)  # (T, K, H, W)
    with ArtifactWriter(path, "predictions", dims, meta, {"stage": stage, "inputs": inputs}) as w:
        for cid in ("c0", "c1", "c2"):
            w.append(clip_id=cid, scores=probs, masks=probs.argmax(1), frame_classes=np.zeros((T, 2)))
    return path


def _thresholded_tree(root: Path, b0: float, val_masks: np.ndarray, stage: str = "pseudo-label") -> tuple:
    (root / "features").mkdir(parents=True)
    (root / "pseudo").mkdir()
    fv = _features(root / "features" / "val.h5", masks=val_masks)
    ft = _features(root / "features" / "test.h5")  # test masks all background: never read
    _thresholded(root / "pseudo" / "val.h5", b0, {str(fv): read_features(fv).artifact_id}, stage)
    pt = _thresholded(root / "pseudo" / "test.h5", b0, {str(ft): read_features(ft).artifact_id}, stage)
    return ft, pt


def test_choose_on_val_picks_the_background_threshold_of_pseudo_labels(tmp_path):
    # Val truth: the right half (RAMP > 0.5). The predictions were made with threshold 0.3, i.e. RAMP > 0.3; moving
    # it to 0.5 reproduces the truth exactly, so 0.5 must win; test is labelled with val's choice.
    truth = np.tile(RAMP > 0.5, (T, H, 1)).astype(np.int64)
    feats, preds = _thresholded_tree(tmp_path, 0.3, truth)
    assert made_with_threshold(read_predictions(preds)) == 0.3
    out = read_predictions(run(_cfg(feats, preds, tmp_path / "crf.h5", choose_on_val=True, candidates=("none",),
                                    bg_thresholds=(0.2, 0.5, 0.7))))
    choice = out.provenance["crf_choice"]
    assert (choice["chosen"], choice["bg_threshold"], choice["made_with_bg_threshold"]) == ("none", 0.5, 0.3)
    grid = choice["val_miou_grid"]["none"]
    assert sorted(grid) == ["0.2", "0.3", "0.5", "0.7"]  # b0 is always tried
    assert choice["val_miou"]["none"] == grid["0.5"] > max(grid["0.2"], grid["0.3"], grid["0.7"])
    assert out.meta["crf_bg_threshold"] == 0.5 and out.meta["bg_threshold"] == 0.3
    for i in range(3):
        masks, scores = out.read("masks", i), out.read("scores", i).astype(np.float32)
        valid = [0, 1] if i != 2 else [0]  # clip c2's second frame is padding: copied unchanged
        for t in valid:
            np.testing.assert_array_equal(masks[t], np.tile(RAMP > 0.5, (H, 1)))
            np.testing.assert_allclose(scores[t, 0, 0], _softmax(np.stack([np.full(W, 0.5), RAMP]))[0], atol=2e-3)
            assert (scores[t, 2] == 0).all()  # the absent class stays absent
        if i == 2:
            np.testing.assert_array_equal(masks[1], np.tile(RAMP > 0.3, (H, 1)))


def test_choose_on_val_refines_at_the_chosen_threshold(tmp_path):
    # With a CRF kernel, the CRF's unary is the softmax at the chosen threshold, not at the one the masks had.
    # Val truth all background: threshold 1.0 (above every map value) beats the masks' own 0.3.
    feats, preds = _thresholded_tree(tmp_path, 0.3, np.zeros((T, H, W), np.int64))
    out = read_predictions(run(_cfg(feats, preds, tmp_path / "crf.h5", choose_on_val=True,
                                    candidates=("toco_cam",), bg_thresholds=(1.0,))))
    b = out.provenance["crf_choice"]["bg_threshold"]
    assert b == 1.0
    image, _ = _two_colour(H, W, 8)
    probs = _softmax(np.stack([np.full((H, W), b), np.tile(RAMP, (H, 1)), np.full((H, W), -np.inf)]))
    expected = dense_crf_present(image, probs.astype(np.float32), [1], CRF_PRESETS["toco_cam"])
    np.testing.assert_allclose(out.read("scores", 0)[0].astype(np.float32), expected, atol=2e-2)


def test_only_pseudo_label_predictions_get_a_background_threshold(tmp_path):
    # A refined artifact (or a model's) is no softmax over [threshold, maps]: its background cannot be moved.
    truth = np.tile(RAMP > 0.5, (T, H, 1)).astype(np.int64)
    feats, preds = _thresholded_tree(tmp_path, 0.3, truth, stage="crf")
    assert made_with_threshold(read_predictions(preds)) is None
    out = read_predictions(run(_cfg(feats, preds, tmp_path / "crf.h5", choose_on_val=True, candidates=("none",),
                                    bg_thresholds=(0.5,))))
    assert "bg_threshold" not in out.provenance["crf_choice"] and "crf_bg_threshold" not in out.meta
    np.testing.assert_array_equal(out.read("masks", 0), read_predictions(preds).read("masks", 0))
