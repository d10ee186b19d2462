"""The one training loop shared by every PCAS training stage (train-visual, train-tvp, align, refine, supervised).

A stage supplies a `TrainTask` (model, parameter groups, training set, loss step, optional validation) and an
`OptimConfig`; `fit` does the rest, alone or under `torchrun --nproc-per-node N` (DistributedDataParallel):

    setup (seed, device, optimiser, loader, DDP)  ->  [resume from <name>.last.pt]
    for each epoch: train steps (per-step lr, AMP, clipping) -> validate on rank 0 -> checkpoint <name>.last.pt
    publish the best-on-val weights as <name>.pt (the stage's output artifact; only a finished run leaves one)

Files in `ckpt_dir`: `<name>.pt` (artifact), `<name>.last.pt` (resume state), `<name>.log.jsonl` (one JSON per log
step and per epoch), `<name>.best.pt` (best weights so far, while the run is unfinished).

Determinism: every process seeds python/numpy/torch with `seed + rank`; the sampler shuffles with `seed + epoch`
(DistributedSampler, also when alone, so a 2-process run sees the same global batches as a 1-process run); the
DataLoader generator that seeds workers is re-seeded from (seed, epoch, rank) at each epoch. Workers are therefore
not persistent: persistent workers would carry RNG state across epochs that a resumed run cannot reproduce.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pcas_cli.config import to_dict
from pcas_cli.console import CONSOLE, progress
from pcas_cli.errors import PcasError
from pcas_cli.provenance import library_versions, source_fingerprint, torch_threads
from pcas_cli.seed import seed_everything
from pcas_cli.training import distributed as D
from pcas_cli.training.checkpoint import (FORMAT, FORMAT_VERSION, capture_rng, check_same_run, cpu_state,
                                          differing_keys, jsonable, load_checkpoint, make_artifact, restore_rng,
                                          save_checkpoint)
from pcas_cli.training.schedule import OptimConfig, lr_at

# Settings that may change between an interrupted run and its resumption without changing any number it computes.
_RESUME_SAFE = ("log_every", "tensorboard")
# How `fit` treats `<name>.last.pt`: False never reads it; True continues from it and refuses changed settings (the
# user asked to resume); "auto" continues it only where that gives the numbers an uninterrupted run would (same
# settings, code, libraries and device type, and a finished run's weights still published), else trains afresh.
Resume = bool | Literal["auto"]
# This process's resumptions ("<name> from epoch e/n"): the timings log marks a command that continued a run, whose
# wall time then covers only the epochs it trained.
RESUMED: list[str] = []
# The package source this process runs, hashed at import (not at the first checkpoint, after edits on disk).
_SOURCE = source_fingerprint()


class TrainTask:
    """What a training stage supplies to `fit`. Subclass it; `model`, `train_dataset` and `loss_step` are required.

    Loss convention: `loss_step` returns a dict of named scalar tensors. If it holds "loss", that is the total used for
    backward and the other entries are only logged (unweighted terms, accuracies, ...); otherwise the loop sums every
    entry (each already weighted) into "loss". Every entry is logged, per step and as an epoch mean.

    `loss_step` receives the model to call: under DDP it is the DistributedDataParallel wrapper, and gradients are
    synchronised only for a forward that goes through it, so call `model(...)` (use `unwrap(model)` only to read
    attributes). Batches arrive on the training device.
    """

    model: nn.Module
    select_metric: str | None = None  # key of evaluate()'s dict used to pick the best epoch (None: the last epoch)
    select_mode: Literal["max", "min"] = "max"  # whether a larger or smaller select_metric is better
    find_unused_parameters: bool = False  # DDP: set when some trainable parameters get no gradient in a step

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Optimiser groups: dicts with "params" and optionally "lr"/"weight_decay" (default: one group of all)."""
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def train_dataset(self) -> Dataset:
        raise NotImplementedError

    def collate(self, items: list[Any]) -> Any:
        """Batch a list of dataset items (default: torch's default_collate)."""
        return torch.utils.data.default_collate(items)

    def on_epoch_start(self, epoch: int) -> None:
        """Hook before each epoch (0-based); must depend only on `epoch`, so a resumed run repeats it exactly."""

    def loss_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> dict[str, float] | None:
        """Validation metrics, run on rank 0 under `torch.no_grad()` with `model.eval()`; None = no validation."""
        return None


@dataclass
class FitResult:
    best_path: Path  # <name>.pt: the selected weights (best on val, or the last epoch)
    last_path: Path  # <name>.last.pt: full resume state
    history: list[dict[str, Any]]  # one record per epoch: train loss means, val metrics, whether it was best


@dataclass
class _Run:
    """Everything the epoch loop mutates, in one place."""

    task: TrainTask
    cfg: OptimConfig
    info: D.DistInfo
    name: str
    stage: str
    provenance: dict[str, Any]
    ckpt_dir: Path
    model: nn.Module  # the bare module: what checkpoints and evaluate() see
    wrapped: nn.Module  # what loss_step calls (DDP wrapper when distributed)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loader: DataLoader
    sampler: DistributedSampler
    generator: torch.Generator
    total_steps: int
    warmup_steps: int
    step: int = 0
    epoch: int = 0  # epochs completed
    best: dict[str, Any] | None = None  # {"epoch", "value"} of the best validation so far
    history: list[dict[str, Any]] = field(default_factory=list)

    def path(self, suffix: str) -> Path:
        return self.ckpt_dir / f"{self.name}{suffix}"

    @property
    def amp(self) -> bool:
        return self.cfg.amp and self.info.device.type == "cuda"


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def fit(task: TrainTask, cfg: OptimConfig, ckpt_dir: Path | str, name: str, provenance: dict[str, Any],
        resume: Resume = False, device: str = "auto") -> FitResult:
    """Train `task.model`, checkpoint every epoch, and publish the selected weights as `<ckpt_dir>/<name>.pt`.

    Args:
        task: the stage's model, data, loss and validation.
        cfg: optimisation settings (`batch_size` is the global batch).
        ckpt_dir: folder for the artifact, the resume checkpoint and the log.
        name: file stem, e.g. "tvp".
        provenance: `make_provenance(...)` of the stage; stored in both checkpoints, its "stage" names the stage.
            Its "config", "seed" and "inputs" must hold only what shapes the numbers (not --resume or --device):
            resuming refuses any change in them, or in `cfg` (except log_every and tensorboard).
        resume: True continues from `<name>.last.pt` (a fresh start when there is none; changed settings are
            refused); "auto" continues it only when the rerun would compute the same numbers (see `Resume`).
        device: "auto" (CUDA if available), "cpu", "cuda" or "cuda:<i>".
    """
    info = D.init_distributed(device)
    try:
        result = _fit(task, cfg, Path(ckpt_dir), name, jsonable(provenance), resume, info)
    except BaseException:
        if info.initialized_here and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # no barrier: the other ranks may be gone
        raise
    D.shutdown(info)
    return result


def _fit(task: TrainTask, cfg: OptimConfig, ckpt_dir: Path, name: str, provenance: dict[str, Any], resume: Resume,
         info: D.DistInfo) -> FitResult:
    seed_everything(cfg.seed + info.rank)
    run = _build_run(task, cfg, info, ckpt_dir, name, provenance)
    state = _resume_state(run, resume)
    if state is not None:
        _restore(run, state)
    if info.is_main:
        _reset_outputs(run, keep_log=state is not None)
    D.barrier()
    if run.epoch < cfg.epochs:
        with _MetricsLog(run) as log, progress() as bar:
            bar_id = bar.add_task(f"{name}", total=run.total_steps, completed=run.step, info="")
            for epoch in range(run.epoch, cfg.epochs):
                sums = _train_epoch(run, epoch, log, lambda info_: bar.update(bar_id, advance=1, info=info_))
                _end_epoch(run, sums, log)
    if info.is_main:
        _publish(run)
    return FitResult(run.path(".pt"), run.path(".last.pt"), run.history)


def _build_run(task: TrainTask, cfg: OptimConfig, info: D.DistInfo, ckpt_dir: Path, name: str,
               provenance: dict[str, Any]) -> _Run:
    if cfg.batch_size % info.world_size:
        raise PcasError(f"batch_size {cfg.batch_size} is the global batch and must divide evenly over "
                        f"{info.world_size} processes")
    model = task.model.to(info.device)
    optimizer = _build_optimizer(task.param_groups(model), cfg)
    loader, sampler, generator = _build_loader(task, cfg, info)
    steps = len(loader)
    if steps == 0:
        raise PcasError(f"{name}: the training set has {len(loader.dataset)} items, fewer than one batch of "
                        f"{cfg.batch_size}; lower batch_size")
    wrapped: nn.Module = model
    if info.distributed:
        wrapped = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                                          find_unused_parameters=task.find_unused_parameters)
    return _Run(task=task, cfg=cfg, info=info, name=name, stage=str(provenance.get("stage", name)),
                provenance=provenance, ckpt_dir=ckpt_dir, model=model, wrapped=wrapped, optimizer=optimizer,
                scaler=torch.amp.GradScaler(info.device.type, enabled=cfg.amp and info.device.type == "cuda"),
                loader=loader, sampler=sampler, generator=generator, total_steps=steps * cfg.epochs,
                warmup_steps=round(cfg.warmup_epochs * steps))


def _build_optimizer(groups: list[dict[str, Any]], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam/AdamW over the task's groups; each group remembers its own base lr as "base_lr" for the schedule."""
    prepared = []
    for g in groups:
        params = [p for p in g["params"] if p.requires_grad]
        if params:
            prepared.append({**g, "params": params, "lr": g.get("lr", cfg.lr), "base_lr": g.get("lr", cfg.lr),
                             "weight_decay": g.get("weight_decay", cfg.weight_decay)})
    if not prepared:
        raise ValueError("param_groups() gave no trainable parameters")
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(prepared, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def _build_loader(task: TrainTask, cfg: OptimConfig, info: D.DistInfo
                  ) -> tuple[DataLoader, DistributedSampler, torch.Generator]:
    dataset = task.train_dataset()
    # DistributedSampler even for one process: rank r takes perm[r::W] of the same (seed + epoch) permutation, so
    # W processes with batch B/W see exactly the global batches one process with batch B sees.
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    generator = torch.Generator()
    # The default collate is passed as a plain function: a bound method would ship the whole task (model included)
    # to every worker under the spawn/forkserver start methods.
    collate = task.collate if type(task).collate is not TrainTask.collate else torch.utils.data.default_collate
    loader = DataLoader(dataset, batch_size=cfg.batch_size // info.world_size, sampler=sampler,
                        num_workers=cfg.num_workers, collate_fn=collate, pin_memory=info.device.type == "cuda",
                        drop_last=True, generator=generator, worker_init_fn=worker_init if cfg.num_workers else None,
                        persistent_workers=False)
    return loader, sampler, generator


def worker_init(worker_id: int) -> None:
    """Seed python and numpy in a DataLoader worker from the torch seed the loader gave it (base seed + worker id)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(hashlib.sha256(f"{seed}/{epoch}/{rank}".encode()).hexdigest()[:15], 16)


def _train_epoch(run: _Run, epoch: int, log: "_MetricsLog", tick: Callable[[str], None]) -> dict[str, torch.Tensor]:
    """One pass over the training set; returns the per-term sums of this process's step losses (and "steps")."""
    run.sampler.set_epoch(epoch)
    run.generator.manual_seed(_epoch_seed(run.cfg.seed, epoch, run.info.rank))
    run.task.on_epoch_start(epoch)
    run.wrapped.train()
    sums: dict[str, torch.Tensor] = {}
    info = ""
    for batch in _on_device(run.loader, run.info.device):
        mult = lr_at(run.step, run.total_steps, run.warmup_steps, run.cfg.min_lr_ratio)
        for g in run.optimizer.param_groups:
            g["lr"] = g["base_lr"] * mult
        terms = _train_step(run, batch)
        for k, v in terms.items():
            sums[k] = sums.get(k, torch.zeros((), device=v.device)) + v.float()
        run.step += 1
        if run.step % run.cfg.log_every == 0:
            values = _finite_items(run, terms)
            info = "  ".join(f"{k} {v:.4g}" for k, v in values.items())
            log.write({"kind": "step", "epoch": epoch + 1, "step": run.step,
                       "lr": [g["lr"] for g in run.optimizer.param_groups], **values})
        tick(f"epoch {epoch + 1}/{run.cfg.epochs}  {info}")
    sums["steps"] = torch.tensor(float(len(run.loader)), device=run.info.device)
    return sums


def _train_step(run: _Run, batch: Any) -> dict[str, torch.Tensor]:
    """Forward (under autocast when AMP), backward, optional clipping, optimiser step; returns detached terms."""
    with torch.autocast(run.info.device.type, dtype=torch.float16, enabled=run.amp):
        terms = run.task.loss_step(run.wrapped, batch)
    total = terms["loss"] if "loss" in terms else torch.stack([v.float() for v in terms.values()]).sum()
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(total).backward()
    if run.cfg.clip_grad_norm > 0:
        run.scaler.unscale_(run.optimizer)  # clip the true gradients, not the loss-scaled ones
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.clip_grad_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return {**{k: v.detach() for k, v in terms.items()}, "loss": total.detach()}


def _on_device(batches: DataLoader, device: torch.device) -> Iterator[Any]:
    for batch in batches:
        yield _to_device(batch, device)


def _to_device(x: Any, device: torch.device) -> Any:
    """Tensors anywhere in nested dicts/lists/tuples moved to `device`; everything else (ids, strings) kept."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    if isinstance(x, list):
        return [_to_device(v, device) for v in x]
    if isinstance(x, tuple):
        return tuple(_to_device(v, device) for v in x)
    return x


def _finite_items(run: _Run, terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """This step's loss terms as floats; raises on every rank when any rank's are non-finite.

    Ranks stop together so that rank 0, the one that logs, reports it, instead of the launcher killing it because
    another rank failed (or, outside torchrun, the others waiting in the next gradient all-reduce until the timeout).
    """
    values = {k: float(v) for k, v in terms.items()}
    bad_here = not all(math.isfinite(v) for v in values.values())
    bad_ranks = int(D.all_reduce_sum(torch.tensor(float(bad_here), device=run.info.device)))
    if bad_ranks:
        where = f" on {bad_ranks} of {run.info.world_size} processes" if run.info.distributed else ""
        raise PcasError(f"{run.name}: the loss became non-finite at step {run.step}{where} (this process: {values}); "
                        "lower the learning rate or set clip_grad_norm")
    return values


def _end_epoch(run: _Run, sums: dict[str, torch.Tensor], log: "_MetricsLog") -> None:
    """Average the epoch's losses over all ranks, validate (rank 0), pick the best, checkpoint, log."""
    keys = sorted(sums)
    totals = D.all_reduce_sum(torch.stack([sums[k] for k in keys]))
    means = {k: float(v) / float(totals[keys.index("steps")]) for k, v in zip(keys, totals) if k != "steps"}
    if not all(math.isfinite(v) for v in means.values()):
        raise PcasError(f"{run.name}: the epoch's mean loss is non-finite ({means}); lower the learning rate or set "
                        "clip_grad_norm")
    run.epoch += 1
    metrics = _evaluate(run) if run.info.is_main else None
    improved = _is_better(run, metrics)
    if improved:
        run.best = {"epoch": run.epoch, "value": metrics[run.task.select_metric]}  # type: ignore[index]
    record = {"kind": "epoch", "epoch": run.epoch, "step": run.step, "train": means, "val": metrics,
              "best": improved}
    run.history.append(record)
    rng = D.all_gather_object(capture_rng(run.info.device))  # captured after validation, which may draw numbers
    if run.info.is_main:
        if improved:  # best before last: a crash in between is redone identically on resume
            save_checkpoint(run.path(".best.pt"), _artifact(run, metrics))
        save_checkpoint(run.path(".last.pt"), _resume_payload(run, rng))
        log.write(record)
        _say(run.info, _epoch_line(run, means, metrics, improved))
    D.barrier()


def _evaluate(run: _Run) -> dict[str, float] | None:
    run.model.eval()
    with torch.no_grad():
        metrics = run.task.evaluate(run.model)
    run.model.train()
    if metrics is None:
        return None
    metrics = {k: float(v) for k, v in metrics.items()}
    if run.task.select_metric is not None and run.task.select_metric not in metrics:
        raise ValueError(f"select_metric {run.task.select_metric!r} not among evaluate()'s {sorted(metrics)}")
    return metrics


def _is_better(run: _Run, metrics: dict[str, float] | None) -> bool:
    if metrics is None or run.task.select_metric is None:
        return False
    value = metrics[run.task.select_metric]
    if math.isnan(value):
        return False
    if run.best is None:
        return True
    return value > run.best["value"] if run.task.select_mode == "max" else value < run.best["value"]


def _epoch_line(run: _Run, means: dict[str, float], metrics: dict[str, float] | None, improved: bool) -> str:
    train = "  ".join(f"{k} {v:.4g}" for k, v in means.items())
    val = "  ".join(f"{k} {v:.4g}" for k, v in (metrics or {}).items())
    return f"{run.name} epoch {run.epoch}/{run.cfg.epochs}  train: {train}" + (f"  val: {val}" if val else "") + \
        ("  [green](best)" if improved else "")


def _identity(run: _Run) -> dict[str, Any]:
    """What must be equal for a resumed run to compute the same numbers (JSON-normalised for comparison)."""
    optim = {k: v for k, v in to_dict(run.cfg).items() if k not in _RESUME_SAFE}
    # A stage config usually nests its OptimConfig: the resume-safe keys are dropped there too.
    ident = {"optim": optim, "stage": run.stage, "stage_config": _drop_keys(run.provenance.get("config"), _RESUME_SAFE),
             "seed": run.provenance.get("seed"), "inputs": run.provenance.get("inputs"),
             "world_size": run.info.world_size}
    return jsonable(ident)


def _drop_keys(obj: Any, keys: tuple[str, ...]) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_keys(v, keys) for k, v in obj.items() if k not in keys}
    return obj


def _resume_payload(run: _Run, rng: list[dict[str, Any]]) -> dict[str, Any]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "resume", "stage": run.stage,
            "name": run.name, "model": cpu_state(run.model), "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict(), "step": run.step, "epoch": run.epoch, "best": run.best,
            "history": run.history, "rng": rng, "identity": _identity(run), "config": to_dict(run.cfg),
            "provenance": run.provenance, "environment": _environment(run)}


def _artifact(run: _Run, metrics: dict[str, float] | None) -> dict[str, Any]:
    selected = {"metric": run.task.select_metric, "mode": run.task.select_mode} if run.best else None
    return make_artifact(cpu_state(run.model), run.stage, run.provenance, name=run.name, epoch=run.epoch,
                         step=run.step, metrics=metrics, selected_by=selected, config=to_dict(run.cfg))


def _resume_state(run: _Run, resume: Resume) -> dict[str, Any] | None:
    """The resume checkpoint to continue from, or None to train from scratch (see `Resume`)."""
    last = run.path(".last.pt")
    if not resume:
        return None
    if not last.exists():
        if resume is True:
            _say(run.info, f"[yellow]{last} not found: starting {run.name} from scratch")
        return None
    try:
        state = load_checkpoint(last, expect_stage=run.stage, expect_kind="resume")
    except PcasError as e:
        if resume is True:
            raise
        return _afresh(run, str(e))
    finished_gone = state["epoch"] >= run.cfg.epochs and not run.path(".pt").exists()
    if resume is True:
        if finished_gone:  # its best-on-val weights left with the .pt; the last epoch's are not them
            raise PcasError(f"{last}: a finished run whose published {run.path('.pt').name} is gone; retrain it "
                            "without --resume")
        return state
    differs = differing_keys(state.get("identity"), _identity(run))
    differs += [key for key, now in _environment(run).items() if state.get("environment", {}).get(key) != now]
    if differs:
        return _afresh(run, f"{last}: made with other {', '.join(differs[:4])}")
    if finished_gone:
        return _afresh(run, f"{last}: a finished run whose published {run.path('.pt').name} is gone")
    return state


def _afresh(run: _Run, why: str) -> None:
    _say(run.info, f"[yellow]{why}: training {run.name} from scratch")
    return None


def _environment(run: _Run) -> dict[str, Any]:
    """What besides the settings shapes the numbers, for "auto" resumption: the package's code, the libraries, the
    device type (a CPU run continued on CUDA would mix the two's rounding) and torch's CPU threads (its reductions
    may split differently)."""
    return {"code": _SOURCE, "libraries": library_versions(), "device": run.info.device.type,
            "threads": torch_threads()}


def _restore(run: _Run, ckpt: dict[str, Any]) -> None:
    """Load a resume checkpoint into the run; RNG last, so the next epoch draws what the uninterrupted run drew."""
    last = run.path(".last.pt")
    check_same_run(last, ckpt["identity"], _identity(run))
    try:
        run.model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise PcasError(f"{last}: weights do not fit this model ({str(e).splitlines()[0]})") from None
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt["scaler"]:  # empty when the run had no float16 AMP (CPU, or amp off): nothing to restore
        run.scaler.load_state_dict(ckpt["scaler"])
    run.step, run.epoch, run.best, run.history = ckpt["step"], ckpt["epoch"], ckpt["best"], list(ckpt["history"])
    restore_rng(ckpt["rng"][run.info.rank], run.info.device)
    RESUMED.append(f"{run.name} from epoch {run.epoch}/{run.cfg.epochs}")
    if run.epoch < run.cfg.epochs:
        _say(run.info, f"resuming {run.name} from {last} (epoch {run.epoch}/{run.cfg.epochs}, step {run.step})")
    else:
        _say(run.info, f"{run.name}: {last} is a finished run of these settings; nothing to train")


def _reset_outputs(run: _Run, keep_log: bool) -> None:
    """Only a finished run leaves `<name>.pt`; a resumed log keeps the records the checkpoint covers."""
    if run.epoch < run.cfg.epochs:
        run.path(".pt").unlink(missing_ok=True)
    if run.epoch == 0:
        run.path(".best.pt").unlink(missing_ok=True)
    log = run.path(".log.jsonl")
    kept = [ln for ln in log.read_text().splitlines() if _covered(ln, run.step)] if keep_log and log.exists() else []
    run.ckpt_dir.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(ln + "\n" for ln in kept))


def _covered(line: str, step: int) -> bool:
    """A log line written before the checkpoint at `step` (a line cut short by a crash is dropped)."""
    try:
        return int(json.loads(line).get("step", 0)) <= step
    except (ValueError, AttributeError):
        return False


def _publish(run: _Run) -> None:
    """Move the best-on-val weights to `<name>.pt`; without validation (or no valid metric) publish the last."""
    out, best = run.path(".pt"), run.path(".best.pt")
    if best.exists():
        os.replace(best, out)
    elif not out.exists():
        save_checkpoint(out, _artifact(run, run.history[-1].get("val") if run.history else None))


def _say(info: D.DistInfo, message: str) -> None:
    if info.is_main:
        CONSOLE.print(message)


class _MetricsLog:
    """Appends JSON records to `<name>.log.jsonl` (rank 0 only), mirrored to TensorBoard when asked and available."""

    def __init__(self, run: _Run) -> None:
        self.path = run.path(".log.jsonl")
        self.enabled = run.info.is_main
        self.tb = None
        if self.enabled and run.cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run.path(".tb")))
            except ImportError:
                CONSOLE.print("[yellow]tensorboard is not installed: logging to the .log.jsonl file only")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if self.tb is not None:
            for key, value in _flatten(record).items():
                self.tb.add_scalar(key, value, record["step"])

    def __enter__(self) -> "_MetricsLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.tb is not None:
            self.tb.close()


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch"):
            out[f"{prefix}{k}"] = float(v)
    return out


