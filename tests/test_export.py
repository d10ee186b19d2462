"""`pcas export` (pcas_cli.stages.export): predictions -> per-frame PNG masks and overlays, read back exactly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pcas_cli.artifacts import ArtifactWriter
from pcas_cli.cli import main
from pcas_cli.datasets._common import read_binary_png, read_index_png
from pcas_cli.errors import PcasError
from pcas_cli.stages.export import ExportConfig, run

CLASSES = ["dog", "cat", "bird"]
T, H, W = 3, 4, 5


def _artifacts(tmp: Path, task: str, features_id_recorded: str | None = None, unscored: bool = False
               ) -> tuple[Path, Path, dict]:
    """Two clips (the second's last frame is padding); random frames and predicted masks. Returns the paths and
    {clip_id: (frames, masks, frame_valid)}."""
    rng = np.random.default_rng(0)
    top = len(CLASSES) if task == "semantic" else 1
    clips = {cid: (rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8), rng.integers(0, top + 1, (T, H, W)).astype(
        np.uint8), np.array([True, True, valid_last])) for cid, valid_last in (("clip-a", True), ("clip-b", False))}
    feats = tmp / "features" / "test.h5"
    dims = {"T": T, "H": H, "W": W, "F": 2, "M": 3, "C": len(CLASSES)}
    meta = {"classes": CLASSES, "task": task, **({"unscored": True} if unscored else {})}
    with ArtifactWriter(feats, "features", dims, meta, {"stage": "test"}) as wr:
        for cid, (frames, _, valid) in clips.items():
            wr.append(clip_id=cid, subset="x", frames=frames, fbank=np.zeros((T, 2, 3)), labels=np.zeros(3),
                      masks=np.zeros((T, H, W)), mask_valid=valid, frame_valid=valid, visible=np.zeros((T, H, W)))
    from pcas_cli.artifacts import read_features

    recorded = features_id_recorded or read_features(feats).artifact_id
    pred_classes = CLASSES if task == "semantic" else ["sounding"]
    preds = tmp / "pseudo" / "test.h5"
    pdims = {"T": T, "K": len(pred_classes) + 1, "H": H, "W": W, "A": len(CLASSES)}
    prov = {"stage": "test", "inputs": {"features/test.h5": recorded}}
    with ArtifactWriter(preds, "predictions", pdims, {"classes": pred_classes, "task": task}, prov) as wr:
        for cid, (_, masks, _) in clips.items():
            wr.append(clip_id=cid, scores=np.zeros((T, len(pred_classes) + 1, H, W)), masks=masks,
                      frame_classes=np.zeros((T, len(CLASSES))))
    return feats, preds, clips


def test_semantic_masks_read_back_as_class_indices_and_overlays_blend_the_palette(tmp_path):
    feats, preds, clips = _artifacts(tmp_path, "semantic")
    out = run(ExportConfig(predictions=preds, features=feats, out=tmp_path / "export"))
    for cid, (frames, masks, valid) in clips.items():
        written = sorted(p.name for p in (out / cid / "masks").iterdir())
        assert written == [f"{t}.png" for t in range(int(valid.sum()))]  # padding frames are not written
        for t in range(int(valid.sum())):
            png = out / cid / "masks" / f"{t}.png"
            assert Image.open(png).mode == "P"
            np.testing.assert_array_equal(read_index_png(png), masks[t])
            shown = np.asarray(Image.open(png).convert("RGB"))
            assert tuple(shown[masks[t] == 2][0]) == (0, 128, 0)  # class 2 in the VOC colour of AVSS labels_rgb
            blended = np.asarray(Image.open(out / cid / "overlays" / f"{t}.png"))
            fg = masks[t] > 0
            np.testing.assert_array_equal(blended[~fg], frames[t][~fg])
            colour = np.asarray(Image.open(png).convert("RGB")).astype(np.float32)
            np.testing.assert_array_equal(blended[fg], np.rint(0.5 * frames[t][fg] + 0.5 * colour[fg]))
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["classes"] == ["background", *CLASSES] and manifest["frames"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "features", "pseudo"]  # no temporary left


def test_binary_masks_are_0_255_grey_as_avsbench(tmp_path):
    feats, preds, clips = _artifacts(tmp_path, "binary")
    out = run(ExportConfig(predictions=preds, features=feats, out=tmp_path / "export", overlays=False))
    frames, masks, _ = clips["clip-a"]
    png = out / "clip-a" / "masks" / "1.png"
    assert Image.open(png).mode == "L" and set(np.unique(np.asarray(Image.open(png)))) <= {0, 255}
    np.testing.assert_array_equal(read_binary_png(png), masks[1])
    assert not (out / "clip-a" / "overlays").exists()


def test_refusals_and_replacing_an_earlier_export(tmp_path):
    feats, preds, _ = _artifacts(tmp_path, "semantic")
    mine = tmp_path / "my-photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(PcasError, match="my-photos: exists and is not an earlier pcas export"):
        run(ExportConfig(predictions=preds, features=feats, out=mine))
    assert (mine / "holiday.jpg").exists()

    out = tmp_path / "export"
    run(ExportConfig(predictions=preds, features=feats, out=out))
    (out / "clip-a" / "masks" / "stale.png").write_bytes(b"x")
    run(ExportConfig(predictions=preds, features=feats, out=out))  # an earlier export is replaced whole
    assert not (out / "clip-a" / "masks" / "stale.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "features", "my-photos", "pseudo"]

    stale = tmp_path / "stale"
    feats2, preds2, _ = _artifacts(stale, "semantic", features_id_recorded="0" * 16)
    with pytest.raises(PcasError, match="stale/pseudo/test.h5"):
        run(ExportConfig(predictions=preds2, features=feats2, out=tmp_path / "export2"))
    with pytest.raises(PcasError, match="alpha must be in 0..1"):
        ExportConfig(predictions=preds, features=feats, out=out, alpha=2.0)


def test_cli_export_and_its_one_line_error(tmp_path, monkeypatch, capsys):
    feats, preds, _ = _artifacts(tmp_path, "semantic")
    (tmp_path / "taken").write_text("a file")
    monkeypatch.setattr(sys, "argv", ["pcas", "export", "--predictions", str(preds), "--features", str(feats),
                                      "--out", str(tmp_path / "taken")])
    with pytest.raises(SystemExit) as done:
        main()
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and "taken: exists and is not an earlier" in err, err
    monkeypatch.setattr(sys, "argv", ["pcas", "export", "--predictions", str(preds), "--features", str(feats),
                                      "--out", str(tmp_path / "ok"), "--no-overlays"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 0
    assert (tmp_path / "ok" / "clip-b" / "masks" / "1.png").is_file()


def test_own_videos_without_masks_export_but_do_not_score(tmp_path):
    """A test split extracted with --test-without-masks: `pcas eval` refuses it in one line, `pcas export` writes it."""
    from pcas_cli.artifacts import read_features, read_predictions
    from pcas_cli.stages.evaluate import score

    feats, preds, _ = _artifacts(tmp_path, "semantic", unscored=True)
    with pytest.raises(PcasError, match=r"features/test\.h5: extracted with --test-without-masks: .*nothing to score"):
        score(read_features(feats), read_predictions(preds))
    out = run(ExportConfig(predictions=preds, features=feats, out=tmp_path / "export"))
    assert json.loads((out / "export.json").read_text())["frames"] == 5

    import torch

    from pcas_cli.stages.pseudo_label import MapMaker, PseudoLabelConfig

    oracle = PseudoLabelConfig(run=tmp_path / "run", split="test", oracle_presence=True)
    with pytest.raises(PcasError, match="oracle_presence has no true sounding classes"):
        MapMaker(oracle, read_features(feats), torch.device("cpu"))  # refused before any model is loaded
