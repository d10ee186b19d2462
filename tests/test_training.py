"""The shared training loop, its checkpoints, schedule and datasets, on a toy regression task and a tiny artifact."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pcas_cli.artifacts import ArtifactWriter
from pcas_cli.errors import PcasError
from pcas_cli.training import (AugmentConfig, ClipDataset, FrameDataset, OptimConfig, TrainTask, fit, load_checkpoint,
                               lr_at, save_checkpoint, weights_fingerprint)
from pcas_cli.audio import AUDIOSET_MEAN, AUDIOSET_STD
from pcas_cli.training.data import (colour_augment, crop_box, crop_flip, heard_labels, mel_warp, mix_fbank,
                                    spec_augment)

PROV = {"stage": "toy", "config": {"width": 16}, "seed": 0, "inputs": {"features/train.h5": "abc"}}


# ----------------------------------------------------------------------------------------------------------- schedule
def test_lr_at_hand_values():
    # warm-up 4 of 10 steps, floor 0.1: (s+1)/4 while warming, then 0.1 + 0.9 * (1 + cos(pi * (s-4)/6)) / 2
    assert lr_at(0, 10, 4, 0.1) == pytest.approx(0.25)
    assert lr_at(3, 10, 4, 0.1) == pytest.approx(1.0)
    assert lr_at(4, 10, 4, 0.1) == pytest.approx(1.0)
    assert lr_at(7, 10, 4, 0.1) == pytest.approx(0.55)
    assert lr_at(9, 10, 4, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 - math.sqrt(3) / 2))
    assert lr_at(10, 10, 4, 0.1) == pytest.approx(0.1) and lr_at(50, 10, 4, 0.1) == pytest.approx(0.1)


def test_lr_at_degenerate_cases():
    assert lr_at(0, 5, 0, 0.0) == 1.0  # no warm-up: full lr at once
    assert lr_at(4, 5, 5, 0.0) == 1.0  # all warm-up: nothing to decay over
    with pytest.raises(ValueError):
        lr_at(-1, 5, 0, 0.0)
    with pytest.raises(ValueError):
        lr_at(0, 5, 0, 1.5)


def test_optim_config_validates():
    with pytest.raises(PcasError, match="epochs >= 1"):
        OptimConfig(epochs=0)


# ----------------------------------------------------------------------------------------------------------- toy task
class ToyData(Dataset):
    """y = x . w + 0.5 on 4-d inputs; `noise` adds torch-RNG input jitter (an augmentation, so RNG state matters)."""

    def __init__(self, n: int, noise: float, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.5
        self.noise = noise

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = self.x[i] + self.noise * torch.randn(4) if self.noise else self.x[i]
        return {"x": x, "y": self.y[i]}


class ToyTask(TrainTask):
    def __init__(self, n: int = 64, noise: float = 0.0, dropout: float = 0.0, init_seed: int = 123,
                 scripted_val: list[float] | None = None, crash_at_epoch: int | None = None,
                 select_mode: str = "max") -> None:
        torch.manual_seed(init_seed)
        self.model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 1))
        self.data = ToyData(n, noise)
        self.val = ToyData(32, 0.0, seed=1)
        self.scripted_val = scripted_val
        self.crash_at_epoch = crash_at_epoch
        self.snapshots: list[dict[str, torch.Tensor]] = []
        self.select_metric = "score" if scripted_val else "val_mse"
        self.select_mode = select_mode if scripted_val else "min"

    def param_groups(self, model):
        return [{"params": model[0].parameters()}, {"params": model[3].parameters(), "lr": 0.02}]

    def train_dataset(self):
        return self.data

    def on_epoch_start(self, epoch):
        if epoch == self.crash_at_epoch:
            raise KeyboardInterrupt("simulated crash")

    def loss_step(self, model, batch):
        pred = model(batch["x"]).squeeze(-1)  # (B,)
        mse = ((pred - batch["y"]) ** 2).mean()
        reg = 1e-4 * sum(p.pow(2).sum() for p in model.parameters())
        return {"mse": mse, "reg": reg}  # no "loss": the loop sums the terms

    def evaluate(self, model):
        self.snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        if self.scripted_val:
            return {"score": self.scripted_val[len(self.snapshots) - 1]}
        dev = next(model.parameters()).device
        return {"val_mse": float(((model(self.val.x.to(dev)).squeeze(-1) - self.val.y.to(dev)) ** 2).mean())}


def _cfg(**kw) -> OptimConfig:
    base = dict(optimizer="adam", lr=0.05, epochs=3, warmup_epochs=1, min_lr_ratio=0.1, batch_size=8,
                log_every=2, seed=7, clip_grad_norm=5.0)
    return OptimConfig(**{**base, **kw})


def _log(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------------------------------------- fit
def test_fit_trains_logs_and_checkpoints(tmp_path):
    task = ToyTask()
    res = fit(task, _cfg(epochs=4, log_every=1), tmp_path, "toy", PROV, device="cpu")
    hist = [h["train"]["mse"] for h in res.history]
    assert hist[-1] < 0.5 * hist[0]
    assert all(set(h["train"]) == {"mse", "reg", "loss"} for h in res.history)
    first = res.history[0]["train"]
    assert first["loss"] == pytest.approx(first["mse"] + first["reg"])

    # 64 items / batch 8 = 8 steps per epoch; warm-up 8 steps; each group's lr = its base lr x lr_at(step).
    steps = [r for r in _log(tmp_path / "toy.log.jsonl") if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 33))
    for r in steps:
        mult = lr_at(r["step"] - 1, 32, 8, 0.1)
        assert r["lr"] == pytest.approx([0.05 * mult, 0.02 * mult])
    assert [r["epoch"] for r in _log(tmp_path / "toy.log.jsonl") if r["kind"] == "epoch"] == [1, 2, 3, 4]

    last = load_checkpoint(res.last_path, expect_stage="toy", expect_kind="resume")
    assert (last["step"], last["epoch"], len(last["rng"])) == (32, 4, 1)
    assert set(last["rng"][0]) == {"python", "numpy", "torch", "cuda"}
    assert last["config"]["lr"] == 0.05 and last["provenance"] == PROV
    assert last["optimizer"]["param_groups"][1]["base_lr"] == 0.02
    art = load_checkpoint(res.best_path, expect_stage="toy", expect_kind="artifact")
    assert art["artifact_id"] == weights_fingerprint(art["model"]) and art["provenance"] == PROV
    best_epoch = min(res.history, key=lambda h: h["val"]["val_mse"])["epoch"]
    assert art["epoch"] == best_epoch and art["selected_by"] == {"metric": "val_mse", "mode": "min"}
    assert all(torch.equal(art["model"][k], v) for k, v in task.snapshots[best_epoch - 1].items())
    assert not (tmp_path / "toy.best.pt").exists()  # moved into toy.pt when the run finished


@pytest.mark.parametrize("mode,values,best", [("max", [0.2, 0.9, 0.5], 2), ("min", [0.5, 0.7, 0.1], 3)])
def test_best_on_val_selection(tmp_path, mode, values, best):
    task = ToyTask(scripted_val=values, select_mode=mode)
    res = fit(task, _cfg(), tmp_path, "toy", PROV, device="cpu")
    art = load_checkpoint(res.best_path)
    assert art["epoch"] == best and art["metrics"] == {"score": values[best - 1]}
    assert all(torch.equal(art["model"][k], v) for k, v in task.snapshots[best - 1].items())
    improved = [values[0]] + [v for i, v in enumerate(values[1:], 1)
                              if (v > max(values[:i]) if mode == "max" else v < min(values[:i]))]
    assert [h["best"] for h in res.history] == [v in improved for v in values]


def test_without_validation_best_is_last(tmp_path):
    task = ToyTask()
    task.evaluate = lambda model: None  # type: ignore[method-assign]
    res = fit(task, _cfg(epochs=2), tmp_path, "toy", PROV, device="cpu")
    art = load_checkpoint(res.best_path)
    assert art["epoch"] == 2 and art["selected_by"] is None
    assert all(torch.equal(art["model"][k], v) for k, v in task.model.state_dict().items())


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_bit_for_bit(tmp_path, workers):
    cfg = _cfg(num_workers=workers)
    straight = ToyTask(noise=0.1, dropout=0.2)
    fit(straight, cfg, tmp_path / "a", "toy", PROV, device="cpu")

    crashed = ToyTask(noise=0.1, dropout=0.2, crash_at_epoch=2)
    with pytest.raises(KeyboardInterrupt):
        fit(crashed, cfg, tmp_path / "b", "toy", PROV, device="cpu")
    assert load_checkpoint(tmp_path / "b" / "toy.last.pt")["epoch"] == 2
    assert not (tmp_path / "b" / "toy.pt").exists()  # an unfinished run leaves no artifact
    with open(tmp_path / "b" / "toy.log.jsonl", "a") as f:  # records past the checkpoint, and a line cut short
        f.write('{"kind": "step", "epoch": 3, "step": 17}\n{"kind": "st')

    resumed = ToyTask(noise=0.1, dropout=0.2, init_seed=999)  # different init: weights must come from the checkpoint
    res = fit(resumed, cfg, tmp_path / "b", "toy", PROV, resume=True, device="cpu")
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    a_art, b_art = load_checkpoint(tmp_path / "a" / "toy.pt"), load_checkpoint(res.best_path)
    assert a_art["artifact_id"] == b_art["artifact_id"]
    assert _log(tmp_path / "a" / "toy.log.jsonl") == _log(tmp_path / "b" / "toy.log.jsonl")
    assert [h["epoch"] for h in res.history] == [1, 2, 3]


def test_resume_refuses_changed_settings(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        fit(ToyTask(crash_at_epoch=1), _cfg(), tmp_path, "toy", PROV, device="cpu")
    with pytest.raises(PcasError, match=r"optim\.lr: checkpoint 0\.05, now 0\.02"):
        fit(ToyTask(), _cfg(lr=0.02), tmp_path, "toy", PROV, resume=True, device="cpu")
    changed_input = {**PROV, "inputs": {"features/train.h5": "def"}}
    with pytest.raises(PcasError, match="inputs"):
        fit(ToyTask(), _cfg(), tmp_path, "toy", changed_input, resume=True, device="cpu")
    # Log frequency changes no number: allowed, also where the stage config nests the optimisation settings.
    nested = {**PROV, "config": {**PROV["config"], "optim": {"lr": 0.05, "log_every": 2}}}
    with pytest.raises(KeyboardInterrupt):
        fit(ToyTask(crash_at_epoch=1), _cfg(), tmp_path / "n", "toy", nested, device="cpu")
    nested["config"]["optim"]["log_every"] = 3
    fit(ToyTask(), _cfg(log_every=3), tmp_path / "n", "toy", nested, resume=True, device="cpu")


def test_resume_without_checkpoint_starts_fresh_and_finished_run_is_kept(tmp_path):
    res = fit(ToyTask(), _cfg(epochs=1), tmp_path, "toy", PROV, resume=True, device="cpu")
    art_id = load_checkpoint(res.best_path)["artifact_id"]
    again = fit(ToyTask(init_seed=5), _cfg(epochs=1), tmp_path, "toy", PROV, resume=True, device="cpu")
    assert load_checkpoint(again.best_path)["artifact_id"] == art_id and len(again.history) == 1
    # its published weights deleted: the last epoch's are not the ones val chose, so --resume refuses to republish
    (tmp_path / "toy.pt").unlink()
    with pytest.raises(PcasError, match=r"toy\.last\.pt: a finished run whose published toy\.pt is gone"):
        fit(ToyTask(), _cfg(epochs=1), tmp_path, "toy", PROV, resume=True, device="cpu")


def _crash(tmp_path, cfg=None, epoch=2):
    with pytest.raises(KeyboardInterrupt):
        fit(ToyTask(noise=0.1, crash_at_epoch=epoch), cfg or _cfg(), tmp_path, "toy", PROV, device="cpu")


def test_auto_resume_continues_only_what_reproduces_the_uninterrupted_run(tmp_path, monkeypatch, capsys):
    """resume="auto" (what make uses): continue an interrupted run bit for bit; train afresh, without refusing, when
    the settings, the code, the libraries, the device type or the CPU threads changed, or when a finished run's weights
    are gone."""
    import pcas_cli.training.loop as loop

    straight = fit(ToyTask(noise=0.1), _cfg(), tmp_path / "a", "toy", PROV, device="cpu")
    straight_id = load_checkpoint(straight.best_path)["artifact_id"]
    _crash(tmp_path / "b")
    res = fit(ToyTask(noise=0.1, init_seed=999), _cfg(), tmp_path / "b", "toy", PROV, resume="auto", device="cpu")
    assert "resuming toy" in capsys.readouterr().out and loop.RESUMED[-1] == "toy from epoch 2/3"  # timings log
    assert load_checkpoint(res.best_path)["artifact_id"] == straight_id and len(res.history) == 3

    # A changed setting: trained afresh (init_seed 999 then shows in the weights), where resume=True refuses.
    _crash(tmp_path / "c")
    fresh = fit(ToyTask(noise=0.1, init_seed=999), _cfg(lr=0.02), tmp_path / "fresh", "toy", PROV, device="cpu")
    res = fit(ToyTask(noise=0.1, init_seed=999), _cfg(lr=0.02), tmp_path / "c", "toy", PROV, resume="auto",
              device="cpu")
    assert "made with other optim.lr: training toy from scratch" in " ".join(capsys.readouterr().out.split())
    assert load_checkpoint(res.best_path)["artifact_id"] == load_checkpoint(fresh.best_path)["artifact_id"]

    # Other code, libraries or device type than the interrupted run's: afresh too.
    for key, value in (("code", "0" * 64), ("libraries", {"torch": "0.0"}), ("device", "cuda"), ("threads", 99)):
        _crash(tmp_path / key)
        real = loop._environment
        monkeypatch.setattr(loop, "_environment", lambda run, k=key, v=value: {**real(run), k: v})
        res = fit(ToyTask(noise=0.1), _cfg(), tmp_path / key, "toy", PROV, resume="auto", device="cpu")
        monkeypatch.setattr(loop, "_environment", real)
        assert f"made with other {key}" in capsys.readouterr().out and len(res.history) == 3
        assert load_checkpoint(res.best_path)["artifact_id"] == straight_id  # retrained: the same numbers

    # A finished run is kept while its weights are published, retrained once they are gone.
    kept = fit(ToyTask(noise=0.1, init_seed=5), _cfg(), tmp_path / "a", "toy", PROV, resume="auto", device="cpu")
    assert load_checkpoint(kept.best_path)["artifact_id"] == straight_id
    (tmp_path / "a" / "toy.pt").unlink()
    res = fit(ToyTask(noise=0.1, init_seed=5), _cfg(), tmp_path / "a", "toy", PROV, resume="auto", device="cpu")
    assert "is gone: training toy from scratch" in " ".join(capsys.readouterr().out.split())
    assert load_checkpoint(res.best_path)["artifact_id"] != straight_id  # init_seed 5: trained, not republished

    # An unreadable checkpoint: afresh, not an error.
    (tmp_path / "a" / "toy.last.pt").write_bytes(b"garbage")
    fit(ToyTask(noise=0.1), _cfg(), tmp_path / "a", "toy", PROV, resume="auto", device="cpu")
    assert "not a readable checkpoint" in capsys.readouterr().out


def test_pcas_resume_environment_variable(tmp_path, monkeypatch):
    """make exports PCAS_RESUME=auto; --resume/--no-resume win over it; a bad value is a one-line error."""
    from pcas_cli.cli import _resume_from_env

    for raw, want in (("", None), ("auto", "auto"), ("TRUE", True), ("0", False)):
        monkeypatch.setenv("PCAS_RESUME", raw)
        assert _resume_from_env() == want
    monkeypatch.setenv("PCAS_RESUME", "sometimes")
    with pytest.raises(PcasError, match="PCAS_RESUME='sometimes': use auto, true or false"):
        _resume_from_env()


def test_fit_rejects_bad_setups(tmp_path):
    with pytest.raises(PcasError, match="fewer than one batch"):
        fit(ToyTask(n=4), _cfg(), tmp_path, "toy", PROV, device="cpu")
    diverging = ToyTask()
    diverging.loss_step = lambda model, batch: {"mse": model(batch["x"]).sum() * float("nan")}  # type: ignore
    with pytest.raises(PcasError, match="non-finite"):
        fit(diverging, _cfg(), tmp_path, "toy", PROV, device="cpu")


# ------------------------------------------------------------------------------------------------------- checkpoints
def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(PcasError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(PcasError, match="garbage.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "garbage.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(PcasError, match="not a pcas checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")

    from pcas_cli.training.checkpoint import make_artifact
    state = {"w": torch.arange(4.0), "b": torch.zeros(1, dtype=torch.bfloat16)}
    path = save_checkpoint(tmp_path / "v.pt", make_artifact(state, "train-visual", PROV))
    assert not (tmp_path / "v.pt.tmp").exists()
    assert load_checkpoint(path, expect_stage="train-visual")["artifact_id"] == weights_fingerprint(state)
    with pytest.raises(PcasError, match="expected weights made by stage 'train-tvp'"):
        load_checkpoint(path, expect_stage="train-tvp")
    with pytest.raises(PcasError, match="expected a resume checkpoint"):
        load_checkpoint(path, expect_kind="resume")
    tampered = torch.load(path, weights_only=True)
    tampered["model"]["w"][0] = 9.0
    torch.save(tampered, path)
    with pytest.raises(PcasError, match="do not match the recorded artifact_id"):
        load_checkpoint(path)


def test_weights_fingerprint_sensitivity():
    a = {"w": torch.tensor([1.0, 2.0])}
    assert weights_fingerprint(a) == weights_fingerprint({"w": torch.tensor([1.0, 2.0])})
    assert weights_fingerprint(a) != weights_fingerprint({"w": torch.tensor([1.0, 2.5])})
    assert weights_fingerprint(a) != weights_fingerprint({"v": torch.tensor([1.0, 2.0])})
    assert weights_fingerprint(a) != weights_fingerprint({"w": torch.tensor([1.0, 2.0], dtype=torch.float64)})


# ----------------------------------------------------------------------------------------------------------- datasets
DIMS = {"T": 3, "H": 8, "W": 8, "F": 4, "M": 6, "C": 2}


def _clip(i: int, same_frames: bool = False) -> dict:
    rng = np.random.default_rng(i)
    frames = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    if same_frames:
        frames[:] = frames[0]
    return {
        "clip_id": f"c{i}", "subset": "v2", "frames": frames,
        "fbank": rng.normal(size=(3, 4, 6)).astype(np.float16),
        "labels": np.array([i % 2, 1], np.uint8),
        "masks": rng.integers(0, 3, (3, 8, 8), dtype=np.uint8),
        "mask_valid": np.array([True, False, True]),
        "frame_valid": np.array([True, True, i != 1]),  # clip 1 has 2 real frames
        "visible": np.zeros((3, 8, 8), np.uint8),
    }


@pytest.fixture
def features(tmp_path):
    path = tmp_path / "train.h5"
    with ArtifactWriter(path, "features", DIMS, {"classes": ["a", "b"], "task": "semantic"}, {"stage": "x"}) as w:
        for i in range(3):
            w.append(**_clip(i))
    return path


def test_clip_dataset_items_and_no_masks_by_default(features):
    ds = ClipDataset(features)
    assert len(ds) == 3 and ds.classes == ("a", "b")
    item = ds[1]
    assert set(item) == {"index", "frames", "fbank", "labels", "frame_valid"}
    raw = _clip(1)
    assert item["frames"].shape == (3, 3, 8, 8) and item["frames"].dtype == torch.float32
    assert torch.equal(item["frames"], torch.from_numpy(raw["frames"]).permute(0, 3, 1, 2).float() / 255)
    assert item["fbank"].dtype == torch.float32 and item["fbank"].shape == (3, 4, 6)
    assert torch.equal(item["labels"], torch.tensor([1.0, 1.0]))
    assert item["frame_valid"].tolist() == [True, True, False]
    batch = next(iter(DataLoader(ds, batch_size=3, num_workers=2)))  # lazy per-worker file handles
    assert batch["frames"].shape == (3, 3, 3, 8, 8) and batch["index"].tolist() == [0, 1, 2]


def test_masks_only_on_request(features):
    for bad in (("frames", "masks"), ("mask_valid",), ("visible",)):
        with pytest.raises(ValueError, match="cannot be served"):
            ClipDataset(features, fields=bad)
    item = ClipDataset(features, fields=("labels",), with_masks=True)[2]
    assert set(item) == {"index", "labels", "masks", "mask_valid"}
    assert item["masks"].dtype == torch.int64 and torch.equal(item["masks"], torch.from_numpy(_clip(2)["masks"]).long())


def test_frame_dataset_indexes_valid_frames(features):
    ds = FrameDataset(features, fields=("frames", "labels", "fbank"))
    assert len(ds) == 8  # 3 + 2 + 3 valid frames
    item = ds[4]  # clip 1's frames are pairs 3, 4
    assert (item["clip_index"], item["frame_index"]) == (1, 1)
    raw = _clip(1)
    assert torch.equal(item["image"], torch.from_numpy(raw["frames"][1]).permute(2, 0, 1).float() / 255)
    assert torch.equal(item["fbank"], torch.from_numpy(raw["fbank"][1]).float())
    assert "mask" not in item and "masks" not in item
    assert [ds[k]["clip_index"] for k in range(8)] == [0, 0, 0, 1, 1, 2, 2, 2]


def test_flip_moves_frames_and_masks_together(features):
    ds = FrameDataset(features, fields=("frames",), augment=AugmentConfig(hflip=1.0), with_masks=True)
    item, raw = ds[0], _clip(0)
    assert torch.equal(item["image"], torch.from_numpy(raw["frames"][0]).permute(2, 0, 1).float().flip(-1) / 255)
    assert torch.equal(item["mask"], torch.from_numpy(raw["masks"][0]).long().flip(-1))


def _pseudo_labels(path, clip_ids):
    """A predictions artifact over `clip_ids` whose masks are 10 * clip + frame everywhere (unlike any GT mask)."""
    dims = {"T": 3, "K": 3, "H": 8, "W": 8, "A": 2}
    with ArtifactWriter(path, "predictions", dims, {"classes": ["a", "b"], "task": "semantic"}, {"stage": "x"}) as w:
        for i, cid in enumerate(clip_ids):
            masks = (10 * i + np.arange(3, dtype=np.uint8))[:, None, None] * np.ones((3, 8, 8), np.uint8)
            w.append(clip_id=cid, scores=np.zeros((3, 3, 8, 8), np.float16), masks=masks,
                     frame_classes=np.zeros((3, 2), np.float32))
    return path


def test_frame_dataset_serves_pseudo_labels_instead_of_ground_truth(features, tmp_path):
    pseudo = _pseudo_labels(tmp_path / "pseudo.h5", ["c0", "c1", "c2"])
    ds = FrameDataset(features, fields=("frames", "fbank"), augment=AugmentConfig(hflip=1.0), with_masks=True,
                      masks_from=pseudo)
    assert "masks" not in ds.fields and "mask_valid" not in ds.fields  # the ground truth is never read
    for k in range(len(ds)):
        item = ds[k]
        clip, t = item["clip_index"], item["frame_index"]
        assert item["mask"].dtype == torch.int64 and item["mask"].shape == (8, 8)
        assert torch.all(item["mask"] == 10 * clip + t)
        assert bool(item["mask_valid"])  # every valid frame has a pseudo-label (GT frame 1 has none)
    with pytest.raises(PcasError, match="not those of"):
        FrameDataset(features, with_masks=True, masks_from=_pseudo_labels(tmp_path / "other.h5", ["c0", "x", "c2"]))


def test_clip_augmentation_is_seeded_and_shared_by_all_frames(tmp_path):
    path = tmp_path / "same.h5"
    with ArtifactWriter(path, "features", DIMS, {"classes": ["a", "b"], "task": "semantic"}, {}) as w:
        w.append(**_clip(0, same_frames=True))
    aug = AugmentConfig(crop_scale=(0.3, 0.6), hflip=0.5, time_mask=2, freq_mask=3)
    ds = ClipDataset(path, augment=aug)
    torch.manual_seed(3)
    a = ds[0]
    torch.manual_seed(3)
    b = ds[0]
    torch.manual_seed(4)
    c = ds[0]
    assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["fbank"], b["fbank"])
    assert not torch.equal(a["frames"], c["frames"])
    assert torch.equal(a["frames"][0], a["frames"][1]) and torch.equal(a["frames"][0], a["frames"][2])
    plain = ClipDataset(path)[0]["frames"]
    assert not torch.equal(a["frames"], plain)  # a 30-60 % crop cannot be the identity


def test_crop_box_and_crop_hand_values():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        top, left, ch, cw = crop_box(20, 30, (0.2, 0.5), (0.75, 4 / 3), g)
        assert 0 <= top <= 20 - ch and 0 <= left <= 30 - cw
        assert 0.15 <= ch * cw / 600 <= 0.56  # area fraction within the range, up to rounding
    masks = torch.tensor([[[1, 2, 0, 0], [3, 4, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]])
    images = masks[:, None].float().repeat(1, 3, 1, 1)
    _, out = crop_flip(images, (0, 0, 2, 2), flip=False, masks=masks)
    expect = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])  # nearest 2x upsampling
    assert torch.equal(out[0], expect)
    _, flipped = crop_flip(images, (0, 0, 4, 4), flip=True, masks=masks)
    assert flipped[0, 0].tolist() == [0, 0, 2, 1]


def test_colour_augment_hand_values_and_sharing():
    images = torch.rand(3, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    images[1] = images[0]
    assert colour_augment(images, AugmentConfig()) is images  # off by default
    grey = colour_augment(images, AugmentConfig(grayscale=1.0))
    expect = (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2])  # ITU-R 601 luma
    assert torch.allclose(grey, expect[:, None].expand_as(images), atol=1e-3)
    g = torch.Generator().manual_seed(5)
    out = colour_augment(images, AugmentConfig(color_jitter=0.5, hue_jitter=0.2), g)
    assert out.shape == images.shape and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert torch.equal(out[0], out[1])  # one draw for every frame of the clip
    assert not torch.allclose(out, images)
    again = colour_augment(images, AugmentConfig(color_jitter=0.5, hue_jitter=0.2), torch.Generator().manual_seed(5))
    assert torch.equal(out, again)  # seeded
    # a grey image by hand: brightness b scales it, contrast c blends it with its mean, saturation changes nothing
    x = torch.linspace(0.1, 0.6, 16).view(1, 1, 4, 4).expand(1, 3, 4, 4)
    draws = torch.rand(3, generator=torch.Generator().manual_seed(7))
    b, c, _ = (1.0 + 0.5 * (2.0 * draws - 1.0)).tolist()
    expect = c * (b * x) + (1.0 - c) * (b * x).mean()
    got = colour_augment(x, AugmentConfig(color_jitter=0.5), torch.Generator().manual_seed(7))
    assert torch.allclose(got, expect.clamp(0, 1), atol=1e-5)
    assert AugmentConfig(grayscale=0.1).visual and not AugmentConfig(time_mask=3).visual


def test_spec_augment_masks_contiguous_bands():
    fbank = torch.ones(5, 10, 12)
    out = spec_augment(fbank, AugmentConfig(time_mask=3), torch.Generator().manual_seed(1))
    assert torch.equal(fbank, torch.ones(5, 10, 12))  # input untouched
    widths = []
    for t in range(5):
        rows = (out[t] == 0).all(dim=1).nonzero().flatten().tolist()  # masked time frames of second t
        assert ((out[t] == 0).sum(dim=1) % 12 == 0).all()  # whole rows only
        assert rows == list(range(rows[0], rows[0] + len(rows))) if rows else True
        widths.append(len(rows))
    assert max(widths) <= 3 and sum(widths) > 0
    freq = spec_augment(fbank, AugmentConfig(freq_mask=4), torch.Generator().manual_seed(2))
    assert ((freq == 0).sum(dim=1) % 10 == 0).all() and (freq == 0).any()
    assert spec_augment(fbank, AugmentConfig()) is fbank  # off by default


def test_mix_fbank_adds_powers_hand_values():
    mean, std = -4.0, 2.0

    def norm(log_power: float) -> torch.Tensor:
        return torch.full((2, 3), (log_power - mean) / (2 * std))

    one, three = norm(0.0), norm(math.log(3.0))  # powers 1 and 3
    assert torch.allclose(mix_fbank(one, three, 0.0, mean, std), norm(math.log(4.0)))
    assert torch.allclose(mix_fbank(one, three, -10 * math.log10(3.0), mean, std), norm(math.log(2.0)))  # 3 -> 1
    assert torch.allclose(mix_fbank(one, three, -200.0, mean, std), one)  # far quieter: unchanged


def test_clip_mixing_adds_a_partner_with_the_same_valid_seconds(features):
    fields = ("fbank", "labels", "frame_valid")
    plain = ClipDataset(features, fields=fields)
    ds = ClipDataset(features, fields=fields, augment=AugmentConfig(mix=1.0, mix_gain_db=(0.0, 0.0)))
    mixed = ds[0]  # clips 0 and 2 have 3 valid seconds, clip 1 has 2
    assert mixed["partner"] == 2 and torch.equal(mixed["labels"], plain[0]["labels"])
    assert torch.equal(mixed["partner_labels"], plain[2]["labels"])
    assert torch.allclose(mixed["fbank"], mix_fbank(plain[0]["fbank"], plain[2]["fbank"], 0.0, AUDIOSET_MEAN,
                                                    AUDIOSET_STD))
    alone = ds[1]  # no other clip has its valid seconds: never mixed
    assert alone["partner"] == -1 and not alone["partner_labels"].any()
    assert torch.equal(alone["fbank"], plain[1]["fbank"])
    batch = {"labels": torch.tensor([[1.0, 0.0], [0.0, 0.0]]), "partner_labels": torch.tensor([[0.0, 1.0], [0.0, 0.0]])}
    assert heard_labels(batch).tolist() == [[1.0, 1.0], [0.0, 0.0]]
    assert torch.equal(heard_labels({"labels": batch["labels"]}), batch["labels"])
    with pytest.raises(PcasError, match="augment.mix"):
        FrameDataset(features, augment=AugmentConfig(mix=0.5))


def test_mel_warp_hand_values():
    row = torch.tensor([[0.0, 10.0, 20.0, 30.0, 40.0]])  # one frame, 5 mel bins
    assert torch.equal(mel_warp(row, 1.0), row)
    # factor 2: bin m reads position m / 2 -> 0, 0.5, 1, 1.5, 2
    assert torch.allclose(mel_warp(row, 2.0), torch.tensor([[0.0, 5.0, 10.0, 15.0, 20.0]]))
    # factor 0.8: positions 0, 1.25, 2.5, 3.75, 5 -> clamped to the top bin (4)
    assert torch.allclose(mel_warp(row, 0.8), torch.tensor([[0.0, 12.5, 25.0, 37.5, 40.0]]))
    fbank = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)
    draws = torch.rand(2, generator=torch.Generator().manual_seed(3))
    got = spec_augment(fbank, AugmentConfig(freq_warp=0.1), torch.Generator().manual_seed(3))
    for t, u in enumerate(draws.tolist()):  # one factor per second, drawn in [0.9, 1.1]
        assert torch.allclose(got[t], mel_warp(fbank[t], 1.0 + 0.1 * (2.0 * u - 1.0)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_on_cuda_trains_and_resumes_bit_for_bit(tmp_path):
    cfg = _cfg(amp=True, num_workers=2)
    straight = ToyTask(noise=0.1, dropout=0.2)
    res = fit(straight, cfg, tmp_path / "a", "toy", PROV, device="cuda")
    assert res.history[-1]["train"]["mse"] < res.history[0]["train"]["mse"]
    last = load_checkpoint(res.last_path)
    assert last["scaler"]["scale"] > 0 and last["rng"][0]["cuda"] is not None
    with pytest.raises(KeyboardInterrupt):
        fit(ToyTask(noise=0.1, dropout=0.2, crash_at_epoch=1), cfg, tmp_path / "b", "toy", PROV, device="cuda")
    resumed = ToyTask(noise=0.1, dropout=0.2)
    fit(resumed, cfg, tmp_path / "b", "toy", PROV, resume=True, device="cuda")
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
