"""The contrastive stages' report of how much audio evidence the listener gives them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pcas_cli.artifacts import ArtifactWriter, read_features
from pcas_cli.stages._common import AudioCache
from pcas_cli.errors import PcasError
from pcas_cli.stages._contrast import batch_generator, choose_threshold, random_boxes, sounding_share


def test_sounding_share_counts_real_frames_with_a_heard_labelled_class(tmp_path):
    dims = {"T": 2, "H": 4, "W": 4, "F": 3, "M": 5, "C": 2}
    labels = [np.array([1, 0], np.uint8), np.array([0, 1], np.uint8)]
    valid = [np.array([True, True]), np.array([True, False])]  # clip 1's second frame is padding
    path = tmp_path / "train.h5"
    with ArtifactWriter(path, "features", dims, {"classes": ["a", "b"], "task": "semantic"}, {"stage": "x"}) as w:
        for i in range(2):
            w.append(clip_id=f"c{i}", subset="v2", frames=np.zeros((2, 4, 4, 3), np.uint8),
                     fbank=np.zeros((2, 3, 5), np.float16), labels=labels[i], masks=np.zeros((2, 4, 4), np.uint8),
                     mask_valid=np.zeros(2, bool), frame_valid=valid[i], visible=np.zeros((2, 4, 4), np.uint8))
    probs = torch.tensor([[[0.9, 0.0], [0.2, 0.9]],  # clip 0 (label a): heard at t=0 only (b is not labelled)
                          [[0.6, 0.4], [0.0, 0.9]]])  # clip 1 (label b): not heard at t=0; t=1 is padding
    cache = AudioCache(tokens=torch.zeros(2, 2, 3), probs=probs, clip_ids=["c0", "c1"])
    feats = read_features(path)
    assert sounding_share(cache, feats, 0.5) == pytest.approx(1 / 3)  # 1 of the 3 real frames
    assert sounding_share(cache, feats, 0.3) == pytest.approx(2 / 3)  # clip 1, t=0: b at 0.4
    assert sounding_share(cache, feats, 0.95) == 0.0


def test_head_grad_scale_zero_trains_the_heads_and_leaves_the_encoder_to_the_other_terms():
    from pcas_cli.models import build_visual_encoder
    from pcas_cli.stages._common import PCASModel, ProjectionConfig, scale_grad

    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = scale_grad(x, 0.25)
    assert torch.equal(y, x)  # forward unchanged
    (3 * y).sum().backward()
    assert torch.allclose(x.grad, torch.full((2,), 0.75))  # gradient 3 scaled by 0.25

    torch.manual_seed(0)
    visual = build_visual_encoder("vit_tiny_p8", 3, 32, embed_dim=16, depth=1, num_heads=2)
    model = PCASModel(visual, audio_dim=8, proj=ProjectionConfig(dim=4, hidden=8))
    images, audio = torch.rand(2, 3, 32, 32), torch.randn(2, 8)
    grads = {}
    for scale in (1.0, 0.0):
        model.zero_grad()
        out = model(images, audio_tokens=audio, head_grad_scale=scale)
        (out["z_video"].sum() + out["z_cls"].sum() + (out["z_patch"] * out["z_audio"][:, None]).sum()).backward()
        grads[scale] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    encoder = [n for n in grads[1.0] if n.startswith("visual.")]
    assert encoder and all(grads[1.0][n].abs().sum() > 0 for n in encoder if "head" not in n)
    assert all(grads[0.0][n].abs().sum() == 0 for n in grads[0.0] if n.startswith("visual."))  # none reaches it
    for n in ("proj_audio", "proj_patch", "proj_cls"):  # the heads' gradients are the same either way
        for k in grads[1.0]:
            if k.startswith(n):
                assert torch.allclose(grads[1.0][k], grads[0.0][k])


def test_threshold_on_val_picks_the_best_f1_of_heard_classes_against_the_masks(tmp_path):
    dims = {"T": 2, "H": 2, "W": 2, "F": 3, "M": 5, "C": 2}
    labels = [np.array([1, 0], np.uint8), np.array([0, 1], np.uint8)]
    masks = [np.array([[[1, 0], [0, 0]], [[0, 0], [0, 0]]], np.uint8),  # clip 0: a sounds at t=0, t=1 silent
             np.array([[[0, 2], [0, 0]], [[2, 2], [0, 0]]], np.uint8)]  # clip 1: b sounds at t=0 and t=1
    path = tmp_path / "val.h5"
    with ArtifactWriter(path, "features", dims, {"classes": ["a", "b"], "task": "semantic"}, {"stage": "x"}) as w:
        for i in range(2):
            w.append(clip_id=f"c{i}", subset="v2", frames=np.zeros((2, 2, 2, 3), np.uint8),
                     fbank=np.zeros((2, 3, 5), np.float16), labels=labels[i], masks=masks[i],
                     mask_valid=np.ones(2, bool), frame_valid=np.ones(2, bool), visible=np.zeros((2, 2, 2), np.uint8))
    probs = torch.tensor([[[0.45, 0.9], [0.25, 0.0]],  # clip 0: b is heard but not labelled, so never counts
                          [[0.0, 0.35], [0.9, 0.75]]])
    cache = AudioCache(tokens=torch.zeros(2, 2, 3), probs=probs, clip_ids=["c0", "c1"])
    feats = read_features(path)
    chosen, f1 = choose_threshold(cache, feats, (0.2, 0.3, 0.4, 0.5, 0.8))
    # 3 sounding (frame, class) pairs. 0.2: 3 TP + the silent second (a at 0.25) -> 6/7; 0.3: all 3, nothing else;
    # 0.4: misses b at 0.35 -> 4/5; 0.5: only b at 0.75 -> 2/4; 0.8: nothing heard.
    assert f1 == pytest.approx({"0.2": 6 / 7, "0.3": 1.0, "0.4": 0.8, "0.5": 0.5, "0.8": 0.0})
    assert chosen == 0.3
    assert choose_threshold(cache, feats, (0.3, 0.32))[0] == 0.32  # a tie goes to the candidate nearer 0.5
    with pytest.raises(PcasError, match="empty"):
        choose_threshold(cache, feats, ())


def test_oracle_patch_labels_take_each_patch_s_majority_region():
    """The diagnostic labels (oracle_patch_labels) on a 4x4 frame, 2x2 patches of 2x2 pixels: background (0),
    a silent object (1) and a sounding object (2)."""
    from pcas_cli.losses import IGNORE
    from pcas_cli.stages._contrast import patch_labels_from_regions

    region = torch.tensor([[[2, 2, 1, 1],
                            [2, 0, 1, 1],  # top-left patch: 3 of 4 pixels sounding; top-right: silent object
                            [0, 0, 0, 2],
                            [0, 0, 1, 1]]])  # bottom-left: background; bottom-right: 2 of 4 pixels silent
    valid = torch.tensor([True])
    label = {kind: patch_labels_from_regions(region, valid, (2, 2), kind)[0].tolist()
             for kind in ("sounding", "sounding-background", "objects")}
    assert label["sounding"] == [1, 0, 0, 0]
    assert label["sounding-background"] == [1, IGNORE, 0, IGNORE]
    assert label["objects"] == [1, 1, 0, 1]
    # a frame in which nothing sounds: no sounding labels; the object labels still stand; an invalid frame: nothing
    quiet = torch.where(region == 2, torch.ones_like(region), region)
    assert patch_labels_from_regions(quiet, valid, (2, 2), "sounding").tolist() == [[IGNORE] * 4]
    assert patch_labels_from_regions(quiet, valid, (2, 2), "objects").tolist() == [[1, 1, 0, 1]]
    assert patch_labels_from_regions(region, ~valid, (2, 2), "objects").tolist() == [[IGNORE] * 4]


def test_oracle_regions_follow_the_image_s_flip_and_need_visible_maps(tmp_path):
    from pcas_cli.training.data import AugmentConfig, FrameDataset

    dims = {"T": 1, "H": 2, "W": 3, "F": 3, "M": 5, "C": 2}
    frames = np.zeros((1, 2, 3, 3), np.uint8)
    frames[0, :, 0] = 255  # the image's left column is white
    masks = np.array([[[1, 0, 0], [0, 0, 0]]], np.uint8)  # a sounding pixel top-left
    visible = np.array([[[1, 0, 2], [0, 0, 0]]], np.uint8)  # and a silent object top-right

    def write(path, has_visible):
        meta = {"classes": ["a", "b"], "task": "semantic", **({"has_visible": True} if has_visible else {})}
        with ArtifactWriter(path, "features", dims, meta, {"stage": "x"}) as w:
            w.append(clip_id="c0", subset="v2", frames=frames, fbank=np.zeros((1, 3, 5), np.float16),
                     labels=np.array([1, 1], np.uint8), masks=masks, mask_valid=np.ones(1, bool),
                     frame_valid=np.ones(1, bool), visible=visible)

    write(tmp_path / "train.h5", True)
    item = FrameDataset(tmp_path / "train.h5", oracle_regions=True)[0]
    assert item["region"].tolist() == [[2, 0, 1], [0, 0, 0]] and bool(item["region_valid"])
    flipped = FrameDataset(tmp_path / "train.h5", augment=AugmentConfig(hflip=1.0), oracle_regions=True)[0]
    assert flipped["region"].tolist() == [[1, 0, 2], [0, 0, 0]] and float(flipped["image"][0, 0, 2]) == 1.0
    write(tmp_path / "real.h5", False)
    with pytest.raises(PcasError, match="real.h5: has no visible-object maps"):
        FrameDataset(tmp_path / "real.h5", oracle_regions=True)


def test_cmcc_crops_leave_the_global_random_stream_alone() -> None:
    """Table 4's rows with and without CMCC must see the same augmented frames: the crops draw from a generator of
    their own, the same for the same batch, different for another batch or seed."""
    clip, frame = torch.tensor([3, 3, 7]), torch.tensor([0, 1, 4])

    def boxes(seed: int = 0, c: torch.Tensor = clip) -> torch.Tensor:
        return random_boxes(3, 4, 0.4, batch_generator(seed, c, frame))

    torch.manual_seed(0)
    first = boxes()
    after_crops = torch.rand(5)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(5), after_crops)  # the global stream did not move
    assert torch.equal(boxes(), first)
    assert not torch.equal(boxes(seed=1), first) and not torch.equal(boxes(c=torch.tensor([3, 3, 8])), first)
    assert first.min() >= 0 and first.max() <= 1 and torch.allclose(first[..., 2:] - first[..., :2], torch.tensor(0.4))
