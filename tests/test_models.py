"""Models: timm visual encoder wrapper, AST-style audio encoder with TVP, heads and the segmentation decoder."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from pcas_cli.errors import PcasError
from pcas_cli.models import (
    AUDIO_PRESETS,
    AudioEncoder,
    ClassAttentionHead,
    ProjectionHead,
    SegmentationModel,
    build_audio_encoder,
    build_visual_encoder,
    load_audio_weights,
    patch_grid,
)

TINY_VIT = dict(embed_dim=32, depth=1, num_heads=2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _vit(num_classes: int = 3, img_size: int = 32, **kw) -> torch.nn.Module:
    return build_visual_encoder("vit_tiny_p8", num_classes, img_size, **{**TINY_VIT, **kw}).eval()


# ---------------------------------------------------------------- visual encoder


def test_vit_outputs_follow_toco() -> None:
    enc = _vit()
    x = torch.rand(2, 3, 32, 32)
    out = enc(x)
    assert out.grid == (4, 4)
    assert out.patch_tokens.shape == (2, 16, 32) and out.cls_token.shape == (2, 32)
    assert out.logits.shape == (2, 3) and out.pooled.shape == (2, 32)
    # logits score the global-max-pooled patch tokens with a bias-free classifier; pooled is the mean
    torch.testing.assert_close(out.logits, out.patch_tokens.amax(dim=1) @ enc.classifier.weight.T)
    torch.testing.assert_close(out.pooled, out.patch_tokens.mean(dim=1))
    assert enc.classifier.bias is None
    # the class token is the backbone's prefix token after the final norm
    tokens = enc.backbone.forward_features(enc.normalize(x))
    torch.testing.assert_close(out.cls_token, tokens[:, 0])


def test_vit_cam_is_relu_of_classifier_on_tokens() -> None:
    enc = _vit()
    out = enc(torch.rand(2, 3, 32, 32))
    cam = enc.cam(out.patch_tokens, out.grid)
    assert cam.shape == (2, 3, 4, 4) and (cam >= 0).all()
    fmap = out.patch_tokens.transpose(1, 2).reshape(2, 32, 4, 4)
    expected = F.relu(F.conv2d(fmap, enc.classifier.weight[:, :, None, None]))
    torch.testing.assert_close(cam, expected)
    with pytest.raises(ValueError):
        enc.cam(out.patch_tokens, (3, 4))


@pytest.mark.parametrize(("size", "grid"), [(16, (2, 2)), (48, (6, 6)), (64, (8, 8))])
def test_vit_runs_at_other_scales(size: int, grid: tuple[int, int]) -> None:
    # multi-scale CAM runs the same weights at 0.5x / 1.5x / 2x the training size (dynamic_img_size)
    out = _vit()(torch.rand(1, 3, size, size))
    assert out.grid == grid and out.patch_tokens.shape[1] == grid[0] * grid[1]
    assert torch.isfinite(out.logits).all()


def test_normalisation_comes_from_timm_config() -> None:
    enc = _vit()
    assert enc.pixel_mean.flatten().tolist() == pytest.approx([0.5, 0.5, 0.5])  # augreg ViT config
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(enc.normalize(x), (x - 0.5) / 0.5)


@pytest.mark.parametrize("name", ["resnet50", "pvt_v2_b2"])
def test_cnn_like_backbones(name: str) -> None:
    enc = build_visual_encoder(name, 4, 64).eval()
    out = enc(torch.rand(2, 3, 64, 64))
    d = enc.embed_dim
    assert enc.stride == 32 and out.grid == (2, 2)
    assert out.patch_tokens.shape == (2, 4, d) and out.logits.shape == (2, 4)
    torch.testing.assert_close(out.cls_token, out.patch_tokens.mean(dim=1))  # class token = GAP of the last map
    assert enc.pixel_mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    assert enc.cam(out.patch_tokens, out.grid).shape == (2, 4, 2, 2)
    assert [m.shape[-1] for m in enc.pyramid(torch.rand(1, 3, 64, 64))] == [16, 8, 4, 2]


def test_weights_file_roundtrip(tmp_path: Path) -> None:
    src = _vit()
    path = tmp_path / "vit.pt"
    sd = src.backbone.state_dict()
    sd["head.weight"] = torch.zeros(1000, 32)  # a timm classifier head of another size: ignored
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    dst = _vit(weights=path)
    report = dst.weights_report
    assert report is not None and report.loaded == len(src.backbone.state_dict())
    assert report.missing == [] and report.mismatched == [] and report.unexpected == ["head.weight"]
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(dst(x).patch_tokens, src(x).patch_tokens)
    assert not torch.allclose(_vit()(x).patch_tokens, src(x).patch_tokens)  # a fresh init differs


def test_weights_from_a_saved_visual_encoder(tmp_path: Path) -> None:
    src = _vit()
    path = tmp_path / "visual.pt"
    torch.save({"model": src.state_dict()}, path)  # backbone.* plus classifier.weight
    dst = _vit(weights=path)
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(dst(x).patch_tokens, src(x).patch_tokens)


def test_weights_from_a_pcas_checkpoint(tmp_path: Path) -> None:
    """A run's own ckpt/visual.pt (keys "visual.backbone.*" under "model", beside its provenance) starts a backbone."""
    src = _vit()
    path = tmp_path / "visual.pt"
    torch.save({"format": "pcas", "kind": "artifact", "provenance": {"stage": "train-visual"},
                "model": {f"visual.{k}": v for k, v in src.state_dict().items()}}, path)
    dst = _vit(weights=path)
    assert dst.weights_report.loaded == len(src.backbone.state_dict()) and dst.weights_report.missing == []
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(dst(x).patch_tokens, src(x).patch_tokens)


def test_weights_resample_position_embedding(tmp_path: Path) -> None:
    # a checkpoint trained at 32 px (4x4 grid) loads into a model built for 64 px (8x8 grid)
    path = tmp_path / "vit32.pt"
    torch.save(_vit().backbone.state_dict(), path)
    enc = _vit(img_size=64, weights=path)
    assert enc.weights_report.mismatched == [] and enc.weights_report.missing == []
    assert enc.backbone.pos_embed.shape[1] == 1 + 64


def test_weights_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(PcasError, match="garbage.pt"):
        _vit(weights=bad)
    unrelated = tmp_path / "unrelated.pt"
    torch.save({"foo.weight": torch.zeros(3)}, unrelated)
    with pytest.raises(PcasError, match="unrelated.pt"):
        _vit(weights=unrelated)
    with pytest.raises(PcasError, match="missing.pt"):
        _vit(weights=tmp_path / "missing.pt")
    with pytest.raises(PcasError) as bad_file:
        _vit(weights=bad)
    assert "\n" not in str(bad_file.value) and len(str(bad_file.value)) < 400  # one line, however long torch's is
    # position embeddings of another width cannot be resampled: refused, not trained half random
    sd = _vit().backbone.state_dict()
    sd["pos_embed"] = torch.zeros(1, 17, 16)
    torch.save(sd, tmp_path / "narrow.pt")
    with pytest.raises(PcasError, match=r"narrow\.pt: its embeddings do not fit this backbone .*pos_embed"):
        _vit(weights=tmp_path / "narrow.pt")


def test_pretrained_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = timm.create_model

    def offline(name: str, pretrained: bool = False, **kw):
        if pretrained:
            raise OSError("network unreachable")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(PcasError, match="could not download pretrained weights.*--weights FILE"):
        build_visual_encoder("vit_tiny_p8", 3, 32, pretrained=True, **TINY_VIT)


def test_unknown_backbone() -> None:
    with pytest.raises(PcasError, match="unknown visual backbone"):
        build_visual_encoder("no_such_net", 3, 32)


# ---------------------------------------------------------------- audio encoder

N_MELS, FPS = 32, 32  # 2x2 = 4 non-overlapping 16x16 patches per second


def _audio(context: str = "clip", visual_dim: int | None = 24, **kw) -> AudioEncoder:
    return AudioEncoder(5, embed_dim=32, depth=2, num_heads=2, n_mels=N_MELS, frames_per_second=FPS,
                        visual_dim=visual_dim, context=context, **kw).eval()


def test_patch_grid_matches_ast() -> None:
    assert patch_grid(128, 100, 16, (10, 10)) == (12, 9)  # AST overlap on one second
    assert patch_grid(128, 1024, 16, (10, 10)) == (12, 101)  # AST's 10 s AudioSet input
    assert patch_grid(128, 100, 16, (16, 16)) == (8, 6)
    with pytest.raises(ValueError):
        patch_grid(8, 100, 16, (16, 16))


def test_sequence_layout_clip_and_second() -> None:
    clip = _audio("clip").sequence_layout(3, with_prompt=True)
    assert clip.prompt_index.tolist() == [1, 6, 11] and clip.length == 16
    assert clip.patch_index.tolist() == [[2, 3, 4, 5], [7, 8, 9, 10], [12, 13, 14, 15]]
    bare = _audio("clip").sequence_layout(2, with_prompt=False)
    assert bare.prompt_index is None and bare.patch_index.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    sec = _audio("second").sequence_layout(3, with_prompt=True)
    assert sec.prompt_index.tolist() == [1, 1, 1] and sec.length == 6
    assert sec.patch_index.tolist() == [[2, 3, 4, 5]] * 3


@pytest.mark.parametrize("context", ["clip", "second"])
def test_prompts_sit_beside_their_second(context: str) -> None:
    enc = _audio(context)
    fbank, prompt = torch.randn(2, 3, FPS, N_MELS), torch.randn(2, 3, 24)
    seq, layout = enc.assemble(fbank, prompt)
    patches, prompts = enc.patch_tokens(fbank), enc.prompt_tokens(prompt)  # (B, T, P, D), (B, T, D)
    rows = seq if context == "clip" else seq.reshape(2, 3, layout.length, -1)
    for t in range(3):
        if context == "clip":
            got_prompt, got_patches = rows[:, layout.prompt_index[t]], rows[:, layout.patch_index[t]]
        else:
            got_prompt, got_patches = rows[:, t, layout.prompt_index[t]], rows[:, t, layout.patch_index[t]]
        torch.testing.assert_close(got_prompt, prompts[:, t])
        torch.testing.assert_close(got_patches, patches[:, t])
    torch.testing.assert_close(seq[:, 0], (enc.cls_token + enc.cls_pos)[0].expand(seq.shape[0], -1))


@pytest.mark.parametrize("context", ["clip", "second"])
@pytest.mark.parametrize("seconds", [5, 10])
@pytest.mark.parametrize("with_prompt", [True, False])
def test_audio_output_shapes(context: str, seconds: int, with_prompt: bool) -> None:
    enc = _audio(context)
    prompt = torch.randn(2, seconds, 24) if with_prompt else None
    out = enc(torch.randn(2, seconds, FPS, N_MELS), prompt)
    assert out.tokens.shape == (2, seconds, 32) and out.logits.shape == (2, seconds, 5)
    assert torch.isfinite(out.logits).all()


def test_second_context_prompt_only_changes_its_second() -> None:
    enc = _audio("second")
    fbank, prompt = torch.randn(1, 5, FPS, N_MELS), torch.randn(1, 5, 24)
    base = enc(fbank, prompt).tokens
    changed = prompt.clone()
    changed[:, 2] += 1.0
    new = enc(fbank, changed).tokens
    assert not torch.allclose(new[:, 2], base[:, 2])
    keep = [0, 1, 3, 4]
    torch.testing.assert_close(new[:, keep], base[:, keep])


def test_clip_context_prompt_changes_its_second() -> None:
    enc = _audio("clip")
    fbank, prompt = torch.randn(1, 5, FPS, N_MELS), torch.randn(1, 5, 24)
    base = enc(fbank, prompt).tokens
    changed = prompt.clone()
    changed[:, 2] += 1.0
    assert not torch.allclose(enc(fbank, changed).tokens[:, 2], base[:, 2])


def test_clip_context_hides_invalid_seconds() -> None:
    enc = _audio("clip")
    fbank, prompt = torch.randn(1, 4, FPS, N_MELS), torch.randn(1, 4, 24)
    valid = torch.tensor([[True, True, False, False]])
    base = enc(fbank, prompt, valid).tokens
    noisy_fbank, noisy_prompt = fbank.clone(), prompt.clone()
    noisy_fbank[:, 2:] = torch.randn_like(noisy_fbank[:, 2:]) * 10
    noisy_prompt[:, 2:] = 5.0
    torch.testing.assert_close(enc(noisy_fbank, noisy_prompt, valid).tokens[:, :2], base[:, :2])
    # without the mask the padding seconds leak into the valid ones
    assert not torch.allclose(enc(noisy_fbank, noisy_prompt).tokens[:, :2], enc(fbank, prompt).tokens[:, :2])
    none_valid = enc(fbank, prompt, torch.zeros(1, 4, dtype=torch.bool))
    assert torch.isfinite(none_valid.logits).all()


def test_gradient_reaches_prompt_projection() -> None:
    enc = _audio("clip").train()
    prompt = torch.randn(2, 3, 24, requires_grad=True)
    enc(torch.randn(2, 3, FPS, N_MELS), prompt).logits.sum().backward()
    proj = enc.prompt_proj[0].weight.grad
    assert proj is not None and proj.abs().sum() > 0 and prompt.grad.abs().sum() > 0


def test_audio_tvp_off_and_input_checks() -> None:
    no_tvp = _audio(visual_dim=None)
    assert no_tvp.prompt_proj is None
    with pytest.raises(ValueError, match="visual_dim"):
        no_tvp(torch.randn(1, 2, FPS, N_MELS), torch.randn(1, 2, 24))
    with pytest.raises(ValueError, match="frames"):
        no_tvp(torch.randn(1, 2, FPS + 1, N_MELS))
    with pytest.raises(ValueError, match="at most"):
        no_tvp(torch.randn(1, 11, FPS, N_MELS))


@pytest.mark.parametrize("n_mels, fps", [(128, 100), (64, 100), (128, 98)])
def test_conv_stem_gives_the_patch_grid(n_mels: int, fps: int) -> None:
    """The conv stem replaces the 16x16 patch convolution on the same token grid (8 x 6 at 128 x 100)."""
    kw = dict(embed_dim=16, depth=1, num_heads=2, n_mels=n_mels, frames_per_second=fps, visual_dim=8,
              context="second")
    patch, conv = AudioEncoder(3, **kw), AudioEncoder(3, stem="conv", **kw)
    assert conv.grid == patch.grid == patch_grid(n_mels, fps, 16, (16, 16)) and conv.num_patches == patch.num_patches
    out = conv(torch.randn(2, 3, fps, n_mels), torch.randn(2, 3, 8))
    assert out.logits.shape == (2, 3, 3) and torch.isfinite(out.logits).all()
    out.logits.sum().backward()
    assert all(p.grad is not None for p in conv.patch_embed.parameters())


def test_timm_stem_gives_the_patch_grid_and_skips_padding_seconds() -> None:
    """A timm CNN stem keeps the patch grid; all-zero padding seconds never reach its BatchNorm, so in train mode a
    clip's real seconds get the same tokens whether or not padding is batched with them."""
    kw = dict(embed_dim=16, depth=1, num_heads=2, n_mels=128, frames_per_second=100, visual_dim=8, context="second")
    enc = AudioEncoder(3, stem="timm:resnet18", **kw)
    assert enc.grid == AudioEncoder(3, **kw).grid == (8, 6)
    fbank = torch.randn(2, 2, 100, 128)
    padded = torch.cat([fbank, torch.zeros(2, 3, 100, 128)], dim=1)  # 3 padding seconds per clip
    torch.manual_seed(0)
    alone = enc.patch_tokens(fbank)
    with_padding = enc.patch_tokens(padded)
    torch.testing.assert_close(with_padding[:, :2], alone)
    out = enc(padded, torch.randn(2, 5, 8), second_valid=torch.tensor([[True] * 2 + [False] * 3] * 2))
    assert out.logits.shape == (2, 5, 3)
    out.logits[:, :2].sum().backward()
    assert all(p.grad is not None for p in enc.patch_embed.body.parameters() if p.requires_grad)
    with pytest.raises(PcasError, match="timm:nonexistent_cnn"):
        AudioEncoder(3, stem="timm:nonexistent_cnn", **kw)


def test_per_second_input_norm_ignores_level_and_keeps_padding_silent() -> None:
    kw = dict(embed_dim=16, depth=1, num_heads=2, n_mels=N_MELS, frames_per_second=FPS, context="second")
    enc = AudioEncoder(3, input_norm="second", **kw).eval()
    fbank = torch.randn(1, 2, FPS, N_MELS)
    shifted = fbank * 3.0 + 5.0  # another recording level / noise floor, same spectro-temporal pattern
    torch.testing.assert_close(enc(shifted).logits, enc(fbank).logits, atol=1e-3, rtol=1e-3)
    plain = AudioEncoder(3, **kw).eval()
    assert not torch.allclose(plain(shifted).logits, plain(fbank).logits, atol=1e-3)
    padded = torch.cat([fbank, torch.zeros(1, 1, FPS, N_MELS)], dim=1)
    assert torch.isfinite(enc(padded).logits).all()
    with pytest.raises(ValueError, match="input_norm"):
        AudioEncoder(3, input_norm="clip", **kw)


def test_class_attention_head_hand_values() -> None:
    """Each class averages its own patch logits with its own softmax weights over the patches."""
    head = ClassAttentionHead(embed_dim=2, num_classes=2)
    with torch.no_grad():
        head.classify.weight.copy_(torch.eye(2))  # l_{p,c} = x_{p,c}
        head.classify.bias.zero_()
        head.attend.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))  # s_{p,0} = x_{p,0}; s_{p,1} = 0
        head.attend.bias.zero_()
    patches = torch.tensor([[[0.0, 2.0], [math.log(3.0), 4.0]]])  # (1, P=2, D=2)
    # class 0: weights softmax(0, log 3) = (1/4, 3/4), logits (0, log 3); class 1: uniform weights, logits (2, 4)
    expected = torch.tensor([[0.75 * math.log(3.0), 3.0]])
    torch.testing.assert_close(head(patches), expected)


def test_attention_head_pool_keeps_the_mean_token() -> None:
    """head_pool="attention" changes only how logits are pooled: a_t is still the mean patch token, and a class
    heard in one patch is not averaged away by the others."""
    kw = dict(embed_dim=16, depth=1, num_heads=2, n_mels=N_MELS, frames_per_second=FPS, context="second")
    mean, attention = AudioEncoder(3, **kw).eval(), AudioEncoder(3, head_pool="attention", **kw).eval()
    trunk = {k: v for k, v in mean.state_dict().items() if not k.startswith("head.")}
    assert not attention.load_state_dict(trunk, strict=False).unexpected_keys
    assert isinstance(attention.head, ClassAttentionHead)
    fbank = torch.randn(2, 3, FPS, N_MELS)
    out = attention(fbank)
    torch.testing.assert_close(out.tokens, mean(fbank).tokens)  # same trunk, same initialisation
    assert out.logits.shape == (2, 3, 3) and torch.isfinite(out.logits).all()
    out.logits.sum().backward()
    assert attention.head.attend.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="head_pool"):
        AudioEncoder(3, head_pool="max", **kw)


def test_conv_stem_rejects_overlap_and_unknown_stems() -> None:
    with pytest.raises(ValueError, match="non-overlapping"):
        AudioEncoder(3, embed_dim=16, depth=1, num_heads=2, patch_stride=(10, 10), stem="conv")
    with pytest.raises(ValueError, match="stem must be"):
        AudioEncoder(3, embed_dim=16, depth=1, num_heads=2, stem="mlp")


def test_ast_overlap_stride_token_count() -> None:
    enc = AudioEncoder(3, embed_dim=16, depth=1, num_heads=2, n_mels=128, frames_per_second=100,
                       patch_stride=(10, 10), visual_dim=8)
    assert enc.num_patches == 108
    assert enc.sequence_layout(5, with_prompt=True).length == 1 + 5 * 109
    out = enc(torch.randn(1, 2, 100, 128), torch.randn(1, 2, 8))
    assert out.logits.shape == (1, 2, 3)


def test_audio_weights_roundtrip(tmp_path: Path) -> None:
    src = _audio("clip")
    path = tmp_path / "audio.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    dst = _audio("clip")
    report = load_audio_weights(dst, path)
    assert report.missing == [] and report.loaded == len(src.state_dict())
    fbank, prompt = torch.randn(1, 2, FPS, N_MELS), torch.randn(1, 2, 24)
    torch.testing.assert_close(dst(fbank, prompt).logits, src(fbank, prompt).logits)


def test_stage_audio_encoder_starts_from_a_weights_file(tmp_path: Path, capsys) -> None:
    """`audio.weights` in a stage config (train-tvp, train-supervised) loads the file and says in one line how."""
    from pcas_cli.stages._common import audio_architecture, build_audio

    src = _audio("second", visual_dim=None)
    torch.save(src.state_dict(), tmp_path / "audio.pt")
    spec = {"num_classes": 5, "n_mels": N_MELS, "frames_per_second": FPS, "max_seconds": 10, "tvp": False,
            "audio": {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_stride": [16, 16], "context": "second",
                      "weights": str(tmp_path / "audio.pt")}}
    dst = build_audio(spec).eval()
    assert f"weights {tmp_path / 'audio.pt'}: {len(src.state_dict())} tensors loaded, 0 left as initialised" in \
        " ".join(capsys.readouterr().out.split())
    fbank = torch.randn(1, 2, FPS, N_MELS)
    torch.testing.assert_close(dst(fbank).logits, src(fbank).logits)
    # where a listener started from is not part of what it is (a teacher and its student still match)
    assert audio_architecture(spec) == audio_architecture({**spec, "audio": {**spec["audio"], "weights": ""}})


@pytest.mark.parametrize("ast_layout", [False, True])
def test_audio_init_from_vit_checkpoint(tmp_path: Path, ast_layout: bool) -> None:
    # an ImageNet ViT (4x4 grid, one prefix token) or an AST-like checkpoint ("module.v.", cls + dist tokens, and
    # AudioSet's classifier beside the encoder as "module.mlp_head.*", as in the released AST files)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=64, embed_dim=32, depth=2, num_heads=2)
    sd = vit.state_dict()
    if ast_layout:
        sd["dist_token"] = torch.zeros(1, 1, 32)
        pos = sd["pos_embed"]  # AST order: cls, dist, grid
        sd["pos_embed"] = torch.cat([pos[:, :1], torch.zeros(1, 1, 32), pos[:, 1:]], dim=1)
        sd = {f"module.v.{k}": v for k, v in sd.items()}
        sd.update({"module.mlp_head.0.weight": torch.ones(32), "module.mlp_head.1.weight": torch.zeros(527, 32)})
    path = tmp_path / "vit.pt"
    torch.save(sd, path)
    enc = _audio("clip")  # one second = 2x2 patches
    report = load_audio_weights(enc, path)
    torch.testing.assert_close(enc.blocks[1].attn.qkv.weight, vit.blocks[1].attn.qkv.weight)
    torch.testing.assert_close(enc.patch_embed.weight, vit.patch_embed.proj.weight.sum(dim=1, keepdim=True))
    grid = vit.pos_embed[0, 1:].reshape(4, 4, 32)[1:3, 1:3].reshape(1, 4, 32)  # centre 2x2 of the 4x4 grid
    torch.testing.assert_close(enc.pos_embed, grid)
    torch.testing.assert_close(enc.cls_pos, vit.pos_embed[:, :1])
    assert "time_embed" in report.missing and "head.weight" in report.missing and report.mismatched == []


def test_build_audio_encoder_presets(tmp_path: Path) -> None:
    enc = build_audio_encoder("tiny", 4, visual_dim=8, n_mels=N_MELS, frames_per_second=FPS, depth=1)
    assert enc.embed_dim == AUDIO_PRESETS["tiny"]["embed_dim"] and len(enc.blocks) == 1
    with pytest.raises(PcasError, match="unknown audio encoder preset"):
        build_audio_encoder("huge", 4, visual_dim=8)
    junk = tmp_path / "junk.pt"
    torch.save({"x": torch.zeros(1)}, junk)
    with pytest.raises(PcasError, match="junk.pt"):
        build_audio_encoder("tiny", 4, visual_dim=8, n_mels=N_MELS, frames_per_second=FPS, weights=junk)


# ---------------------------------------------------------------- heads and segmentation


def test_projection_head_is_unit_norm() -> None:
    head = ProjectionHead(32, 16, hidden=64, num_layers=3)
    z = head(torch.randn(4, 5, 32))
    assert z.shape == (4, 5, 16)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(4, 5))
    assert sum(isinstance(m, torch.nn.Linear) for m in head.modules()) == 3


@pytest.mark.parametrize(("name", "size", "kw"), [("vit_tiny_p8", 32, TINY_VIT), ("resnet50", 64, {}),
                                                  ("resnet18_os8", 32, {})])
def test_segmentation_model_shapes(name: str, size: int, kw: dict) -> None:
    enc = build_visual_encoder(name, 3, size, **kw)
    model = SegmentationModel(enc, num_outputs=4).eval()
    x = torch.rand(2, 3, size, size)
    assert model(x).shape == (2, 4, size, size)
    # the decoder itself predicts at 1/4 of the input, not at the backbone stride
    assert model.decode(enc.pyramid(x)).shape[-2:] == (size // 4, size // 4)


def test_resnet18_os8_keeps_the_vit_tiny_grid() -> None:
    """The CNN preset for CPU runs gives the same token grid as ViT-tiny patch 8 (CAMs at 1/8 of the frame)."""
    cnn = build_visual_encoder("resnet18_os8", 3, 80).eval()
    vit = build_visual_encoder("vit_tiny_p8", 3, 80, **TINY_VIT).eval()
    x = torch.rand(1, 3, 80, 80)
    with torch.no_grad():
        out_cnn, out_vit = cnn(x), vit(x)
    assert out_cnn.grid == out_vit.grid == (10, 10)
    assert out_cnn.patch_tokens.shape == (1, 100, cnn.embed_dim) and out_cnn.logits.shape == (1, 3)


@pytest.mark.parametrize("backbone,kwargs", [("vit_tiny_p8", {"depth": 1}), ("resnet50", {}), ("pvt_v2_b2", {})])
@pytest.mark.parametrize("with_prompt", [True, False])
def test_tvp_with_each_backbone(backbone: str, kwargs: dict, with_prompt: bool) -> None:
    """TVP end to end: each backbone's pooled frame token prompts its second; per-second outputs for T seconds."""
    import torch

    from pcas_cli.models import AudioEncoder, build_visual_encoder

    b, t, classes = 2, 3, 4
    visual = build_visual_encoder(backbone, classes, 64, **kwargs).eval()
    frames = torch.rand(b * t, 3, 64, 64)
    with torch.no_grad():
        prompts = visual(frames).pooled.view(b, t, -1)  # (B, T, Dv): v_t of each second's frame
    audio = AudioEncoder(classes, embed_dim=32, depth=1, num_heads=2, visual_dim=visual.embed_dim, context="clip")
    layout = audio.sequence_layout(t, with_prompt=with_prompt)
    out = audio(torch.randn(b, t, 100, 128), visual_prompt=prompts if with_prompt else None)
    assert out.tokens.shape == (b, t, 32) and out.logits.shape == (b, t, classes)
    if with_prompt:  # the prompt of second s sits right before second s's patch tokens
        assert torch.equal(layout.prompt_index + 1, layout.patch_index[:, 0])
    else:
        assert layout.prompt_index is None


def test_audio_architecture_fills_fields_older_checkpoints_lack() -> None:
    """A teacher saved before `stem` / `input_norm` / `head_pool` existed matches a student built with their
    defaults, and not one built with another value."""
    from pcas_cli.stages._common import audio_architecture

    old = {"num_classes": 3, "n_mels": 128, "frames_per_second": 100, "max_seconds": 5, "tvp": False,
           "audio": {"embed_dim": 16, "depth": 1, "num_heads": 2, "patch_stride": [16, 16], "context": "second"}}
    new = {**old, "audio": {**old["audio"], "stem": "patch", "input_norm": "none", "head_pool": "mean"}}
    assert audio_architecture(old) == audio_architecture(new)
    other = {**old, "audio": {**old["audio"], "head_pool": "attention"}}
    assert audio_architecture(old) != audio_architecture(other)
