"""Lightning glue for the challenger nets: data module, training module, metrics, calibration, trainer.

Choices that matter for a credit model:

- Loss: plain BCE with logits, no class weights by default. Defaults run at 5-25 %, which is not rare
  enough to starve the gradient, and an unweighted loss estimates the PD itself, so the raw model is
  already close to calibrated; a `pos_weight` > 1 (allowed, for experiments) inflates every PD.
  Ranking is what the net is selected on (`val/auroc`); the final probability scale comes from Platt
  scaling fitted on the validation rows afterwards (`fit_calibration`), which is also what absorbs
  the ensemble's logit averaging.
- Metrics: one `RiskMetrics` object per split (train, val and each named test split), never shared,
  so one split's state never leaks into another's figure. Logged once per epoch as `split/auroc`,
  `split/ks`, `split/brier`, `split/logloss`: the torchmetrics objects themselves are logged, so
  Lightning computes them at epoch end, where `compute()` syncs across DDP processes (a tensor
  computed by hand and logged without `sync_dist` is what Lightning warns about). The training loss
  goes to `train/loss` every few steps and to `train/loss_epoch`, a mean over all ranks' rows.
- Logs: per-epoch metrics and the hyperparameters (the model's and, through `fit_net(experiment=)`,
  the resolved experiment config flattened to dotted keys) go to TensorBoard under
  `<log_dir>/tensorboard/` (`tensorboard --logdir <run folder or runs/>`) and to a CSV file
  `logs/metrics.csv` beside `logs/hparams.yaml` in the trainer's root folder. `EpochProgress` prints one line
  per epoch; Lightning's own start-up lines (device banner, logger advertisement) are kept quiet.
- Data: whole splits live in memory as tensors; the sampler yields index tensors and the dataset
  slices a batch in one indexing call (`batch_size=None`), so there is no per-row Python. The
  sampler shards across DDP ranks itself, which is why `make_trainer` turns Lightning's sampler
  replacement off.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import lightning.pytorch as L
import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics
from lightning.pytorch.callbacks import EarlyStopping, EMAWeightAveraging, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from pydantic import Field
from rich.console import Console
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torchmetrics.classification import BinaryAUROC, BinaryROC

from govrisk.core.config import StrictModel, config_path, read_yaml, validate
from govrisk.data.features import FeatureSet
from govrisk.training.nets import Calibrated, CnnNetConfig, TabularNetConfig, build_net

MONITOR = "val/auroc"


# --- configs ------------------------------------------------------------------------------------------


class OptimConfig(StrictModel):
    lr: float = Field(gt=0, le=1)
    weight_decay: float = Field(ge=0, le=1)
    schedule: Literal["onecycle", "cosine", "none"] = "onecycle"
    warmup_frac: float = Field(default=0.1, ge=0, lt=1)  # share of steps spent warming up
    pos_weight: float = Field(default=1.0, ge=1, le=100)  # see the module docstring before raising it
    grad_clip: float = Field(default=1.0, ge=0)  # 0 = off


class TrainerConfig(StrictModel):
    max_epochs: int = Field(ge=1, le=1000)
    patience: int = Field(ge=1, le=1000)
    batch_size: Annotated[int, Field(ge=1, le=1_000_000)]
    seed: int = Field(default=0, ge=0)
    ema_decay: float = Field(default=0.0, ge=0, lt=1)  # > 0: validate, keep and export EMA weights


Calibration = Literal["platt", "temperature", "none"]


class _NetConfig(StrictModel):
    """What every network's config has beside its `net` section."""

    optim: OptimConfig
    trainer: TrainerConfig
    calibration: Calibration = "platt"


class CnnConfig(_NetConfig):
    kind: Literal["cnn"] = "cnn"
    net: CnnNetConfig


class TabularConfig(_NetConfig):
    kind: Literal["tabular"] = "tabular"
    net: TabularNetConfig


ModelConfig = CnnConfig | TabularConfig
_CONFIGS: dict[str, type[CnnConfig] | type[TabularConfig]] = {"cnn": CnnConfig, "tabular": TabularConfig}


def load_model_config(name_or_path: str | Path, kind: str | None = None) -> ModelConfig:
    """`configs/model/<name>.yaml` (or a path) -> CnnConfig | TabularConfig.

    The kind comes from `kind`, else the file's `kind:` key, else its stem ("cnn" / "tabular").
    """
    path = config_path("model", name_or_path)
    raw = read_yaml(path)
    kind = kind or raw.get("kind") or Path(path).stem
    if kind not in _CONFIGS:
        raise ValueError(
            f"{path}: cannot tell the model kind ({kind=!r}); add `kind: cnn` or `kind: tabular`"
        )
    return validate(_CONFIGS[kind], raw, what=f"model config {path}")


# --- metrics ------------------------------------------------------------------------------------------


class BinaryKS(BinaryROC):
    """Kolmogorov-Smirnov statistic: max over thresholds of TPR - FPR, from torchmetrics' exact ROC."""

    def compute(self) -> Tensor:  # type: ignore[override]
        fpr, tpr, _ = super().compute()
        return (tpr - fpr).max()


class RiskMetrics(nn.Module):
    """AUROC, KS, Brier and log loss of one split; updated with logits, reported on probabilities."""

    names = ("auroc", "ks", "brier", "logloss")

    def __init__(self, *, sync: bool = True) -> None:
        super().__init__()
        # sync=False: a figure one process computes on data it holds whole (after DDP training).
        self.auroc = BinaryAUROC(sync_on_compute=sync)
        self.ks = BinaryKS(sync_on_compute=sync)
        self.brier = torchmetrics.MeanSquaredError(sync_on_compute=sync)
        self.logloss = torchmetrics.MeanMetric(sync_on_compute=sync)

    @torch.no_grad()
    def update(self, logits: Tensor, target: Tensor) -> None:
        logits, target = logits.detach().float(), target.detach().float()
        p = torch.sigmoid(logits)
        self.auroc.update(p, target.long())
        self.ks.update(p, target.long())
        self.brier.update(p, target)
        # From logits, not clamped probabilities: exact for confident wrong predictions.
        self.logloss.update(F.binary_cross_entropy_with_logits(logits, target, reduction="none"))

    def compute(self) -> dict[str, Tensor]:
        return {name: getattr(self, name).compute() for name in self.names}

    def reset(self) -> None:
        for name in self.names:
            getattr(self, name).reset()


# --- data ---------------------------------------------------------------------------------------------


def _tensors(fs: FeatureSet, inputs: Sequence[str]) -> dict[str, Tensor]:
    if fs.labels is None:
        raise ValueError("a FeatureSet without labels cannot be trained or evaluated on")
    arrays = {"sequence": fs.sequence, "static": fs.static, "label": fs.labels}
    # from_numpy shares memory: no copy of a 200k x 24 x C array per split.
    return {
        k: torch.from_numpy(np.ascontiguousarray(arrays[k], dtype=np.float32)) for k in (*inputs, "label")
    }


class TensorBatches(Dataset):
    """Rows held as tensors; `ds[idx_tensor]` returns the whole batch in one indexing call."""

    def __init__(self, tensors: Mapping[str, Tensor]) -> None:
        n = {len(t) for t in tensors.values()}
        if len(n) != 1:
            raise ValueError(f"tensors differ in length: { {k: tuple(t.shape) for k, t in tensors.items()} }")
        self.tensors = dict(tensors)
        self.n = n.pop()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: Tensor) -> dict[str, Tensor]:
        return {k: t[idx] for k, t in self.tensors.items()}


class BatchIndexSampler(Sampler[Tensor]):
    """Yields index tensors, one per batch; shuffles with (seed, epoch) and shards across DDP ranks.

    Training (`pad=True`) repeats a few rows so every rank gets the same number of batches, which DDP's
    gradient all-reduce needs. Evaluation (`pad=False`) never repeats a row: ranks may differ by one
    batch, harmless because metrics only sync at epoch end.
    """

    def __init__(
        self,
        n: int,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        pad: bool = True,
    ) -> None:
        if n < 1 or batch_size < 1:
            raise ValueError(f"need n >= 1 and batch_size >= 1, got {n=} {batch_size=}")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.drop_last, self.pad, self.epoch = drop_last, pad, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    @staticmethod
    def _world() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _indices(self) -> Tensor:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            idx = torch.randperm(self.n, generator=g)
        else:
            idx = torch.arange(self.n)
        rank, world = self._world()
        if world > 1:
            if self.pad and self.n % world:
                idx = torch.cat([idx, idx[: world - self.n % world]])
            idx = idx[rank::world]
        return idx

    def __iter__(self) -> Iterator[Tensor]:
        idx = self._indices()
        stop = len(idx) - len(idx) % self.batch_size if self._drops(len(idx)) else len(idx)
        yield from idx[:stop].split(self.batch_size)

    def _drops(self, n: int) -> bool:
        # Drop a ragged last batch only when a full one exists: a rank's shard smaller than one
        # batch still trains (`count` follows the same rule).
        return self.drop_last and n >= self.batch_size

    def __len__(self) -> int:
        rank, world = self._world()
        return self.count(
            self.n, self.batch_size, world=world, rank=rank, pad=self.pad, drop_last=self.drop_last
        )

    @staticmethod
    def count(n: int, batch_size: int, *, world: int = 1, rank: int = 0, pad: bool, drop_last: bool) -> int:
        """Batches one rank gets (what `len()` says once the process group exists)."""
        n = math.ceil(n / world) if pad else len(range(rank, n, world))
        drops = drop_last and n >= batch_size
        return n // batch_size if drops else math.ceil(n / batch_size)


class RiskDataModule(L.LightningDataModule):
    """Train / val (and named test) FeatureSets as in-memory tensor batches of dicts
    {"sequence" [B, T, C], "static" [B, F], "label" [B]} (only the `inputs` the net reads + label)."""

    def __init__(
        self,
        train: FeatureSet,
        val: FeatureSet,
        test_sets: Mapping[str, FeatureSet] | None = None,
        *,
        batch_size: int,
        eval_batch_size: int | None = None,
        inputs: Sequence[str] = ("sequence", "static"),
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        bad = [k for k in inputs if k not in ("sequence", "static")]
        if bad:
            raise ValueError(f"inputs must be among ('sequence', 'static'), got {inputs=}")
        self.inputs = tuple(inputs)
        self.batch_size = batch_size
        # Evaluation keeps no activations for backward, so bigger batches are free speed.
        self.eval_batch_size = eval_batch_size or max(batch_size, 4096)
        self.num_workers, self.seed = num_workers, seed
        self.train_ds = TensorBatches(_tensors(train, self.inputs))
        self.val_ds = TensorBatches(_tensors(val, self.inputs))
        self.test_ds = {
            name: TensorBatches(_tensors(fs, self.inputs)) for name, fs in (test_sets or {}).items()
        }

    @property
    def test_splits(self) -> tuple[str, ...]:
        return tuple(self.test_ds)

    def _loader(self, ds: TensorBatches, *, train: bool) -> DataLoader:
        sampler = BatchIndexSampler(
            len(ds),
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            seed=self.seed,
            # A last batch of a handful of rows gives a noisy step and breaks batch norm at size 1.
            drop_last=train,
            pad=train,
        )
        return DataLoader(ds, sampler=sampler, batch_size=None, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_ds, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_ds, train=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(ds, train=False) for ds in self.test_ds.values()]

    def predict_dataloader(self) -> list[DataLoader]:
        return [self._loader(ds, train=False) for ds in (self.val_ds, *self.test_ds.values())]


# --- module -------------------------------------------------------------------------------------------


class RiskModule(L.LightningModule):
    """Trains a bare net (TemporalConvNet / TabularNet) on BCE; see the module docstring.

    Pass the built net; the net's kind, config and shapes go into the hyperparameters, so
    `RiskModule.load_from_checkpoint(path)` rebuilds it without being handed one. `experiment` is
    the resolved config the run came from, flattened to dotted keys (`flat_config`): it is only
    recorded (hparams.yaml, TensorBoard's HPARAMS tab), never read.
    """

    def __init__(
        self,
        net: nn.Module | None = None,
        *,
        lr: float,
        weight_decay: float,
        schedule: Literal["onecycle", "cosine", "none"] = "onecycle",
        warmup_frac: float = 0.1,
        pos_weight: float = 1.0,
        test_splits: Sequence[str] = (),
        net_kind: str | None = None,
        net_config: dict[str, Any] | None = None,
        n_channels: int | None = None,
        n_static: int | None = None,
        experiment: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if net is None:
            if net_kind is None or net_config is None or n_static is None:
                raise ValueError("RiskModule needs a net, or net_kind + net_config + shapes to rebuild one")
            net = build_net(net_kind, net_config, n_channels=n_channels or 0, n_static=n_static)
        # Record what the net is, so a checkpoint can rebuild it (the net object itself is not saved).
        # Set before `save_hyperparameters`, which reads these arguments' current values: what the
        # loggers write at fit start (hparams.yaml, TensorBoard) is that snapshot, not later updates.
        net_kind, net_config = net.kind, dict(net.config)
        n_channels, n_static = getattr(net, "n_channels", None), net.n_static
        test_splits = list(test_splits)  # a list, not a tuple: hparams.yaml stays plain YAML
        experiment = dict(experiment) if experiment is not None else None
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.test_splits = tuple(test_splits)
        clash = {"train", "val"} & set(self.test_splits)
        if clash or len(set(self.test_splits)) != len(self.test_splits):
            raise ValueError(f"test split names must be unique and not train/val, got {self.test_splits=}")
        # Keyed "<split>_split": a ModuleDict key may not shadow nn.Module attributes such as `train`.
        self.metrics = nn.ModuleDict(
            {f"{s}_split": RiskMetrics() for s in ("train", "val", *self.test_splits)}
        )

    def split_metrics(self, split: str) -> RiskMetrics:
        """The metric object of `split` (one per split, never shared)."""
        return self.metrics[f"{split}_split"]

    def _inputs(self, batch: Mapping[str, Tensor]) -> list[Tensor]:
        return [batch[k] for k in self.net.input_names]

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.net(*inputs)

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        y = batch["label"]
        members = self.net.members(*self._inputs(batch))  # [B, k]
        # The loss is on every member (TabM): each learns to predict on its own, which keeps them
        # diverse; a loss on the mean would let them co-adapt into one model.
        pw = torch.tensor(self.hparams.pos_weight) if self.hparams.pos_weight != 1.0 else None
        loss = F.binary_cross_entropy_with_logits(members, y.unsqueeze(1).expand_as(members), pos_weight=pw)
        self.split_metrics("train").update(members.mean(1), y)
        self._log_split("train")
        # Per step (rank 0's own batch; no sync needed) and per epoch (a mean over every rank's rows).
        self.log("train/loss", loss, batch_size=len(y), on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/loss_epoch", loss, batch_size=len(y), on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def _eval_step(self, split: str, batch: Mapping[str, Tensor]) -> None:
        self.split_metrics(split).update(self.net(*self._inputs(batch)), batch["label"])
        self._log_split(split)

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(self.test_splits[dataloader_idx], batch)

    def predict_step(self, batch: Mapping[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self.net(*self._inputs(batch))

    def _log_split(self, split: str) -> None:
        """Log the split's metric objects for the epoch: Lightning calls their `compute()` (synced
        across DDP processes by torchmetrics) once at epoch end and resets them."""
        m = self.split_metrics(split)
        for name in m.names:
            self.log(
                f"{split}/{name}", getattr(m, name), on_step=False, on_epoch=True, add_dataloader_idx=False
            )

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        # nanoGPT rule: decay matrices and conv kernels, not biases, norms, adapters or PLE frequencies.
        decay = [p for n, p in self.net.named_parameters() if p.ndim >= 2 and "adapter" not in n]
        ids = {id(p) for p in decay}
        rest = [p for p in self.net.parameters() if id(p) not in ids]
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": rest, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=hp.lr)
        if hp.schedule == "none":
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if total < 4:  # too few steps to warm up and anneal (a smoke test): constant lr
            return opt
        if hp.schedule == "onecycle":
            # OneCycleLR divides by its warmup length in steps, which must be >= 2.
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt,
                max_lr=hp.lr,
                total_steps=total,
                pct_start=min(max(hp.warmup_frac, 2 / total), 0.5),
                anneal_strategy="cos",
            )
        else:
            warm = max(1, int(hp.warmup_frac * total))

            def factor(step: int) -> float:  # linear warmup, then cosine to 1 % of lr
                if step < warm:
                    return (step + 1) / warm
                t = min(1.0, (step - warm) / max(1, total - warm))
                return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# --- calibration --------------------------------------------------------------------------------------


def fit_calibration(
    logits_val: np.ndarray | Tensor,
    y_val: np.ndarray | Tensor,
    method: Literal["platt", "temperature", "none"] = "platt",
) -> tuple[float, float]:
    """(a, b) minimising the log loss of sigmoid(a * logit + b) on validation rows (LBFGS, float64).

    "temperature" fits a = 1 / T with b = 0 (keeps the base rate the net learnt); "platt" fits both;
    "none" returns (1, 0).
    """
    z = torch.as_tensor(np.asarray(logits_val), dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(np.asarray(y_val), dtype=torch.float64).reshape(-1)
    if z.shape != y.shape or len(z) == 0:
        raise ValueError(f"logits and labels must be equal-length 1-D, got {z.shape=} {y.shape=}")
    if not torch.isfinite(z).all():
        raise ValueError(f"non-finite logits: {int((~torch.isfinite(z)).sum())} of {len(z)}")
    if method == "none":
        return 1.0, 0.0
    if method not in ("platt", "temperature"):
        raise ValueError(f"method must be 'platt', 'temperature' or 'none', got {method=!r}")
    log_a = torch.zeros((), dtype=torch.float64, requires_grad=True)  # a = exp(log_a) > 0: keep the order
    b = torch.zeros((), dtype=torch.float64, requires_grad=method == "platt")
    params = [log_a, b] if method == "platt" else [log_a]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=200, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(log_a.exp() * z + b, y)
        loss.backward()
        return loss

    opt.step(closure)
    a_val, b_val = float(log_a.detach().exp()), float(b.detach())
    if not (math.isfinite(a_val) and math.isfinite(b_val)):
        raise RuntimeError(f"calibration diverged: {a_val=} {b_val=}")
    return a_val, b_val


# --- trainer ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's INFO lines off for the block: the device banner ("GPU available: ...", "TPU
    available: ..."), the logger advertisement, "Trainer.fit stopped", DDP's start-up lines. They go
    through the `lightning.pytorch` / `lightning.fabric` loggers; warnings and errors still show."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.level, logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def flat_config(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as one level of dotted keys (`model.params.optim.lr`), the form of the
    experiment's `key=value` overrides; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out |= flat_config(v, key + ".")
        else:
            out[key] = v
    return out


class EpochProgress(L.Callback):
    """One line per epoch: epoch, mean train loss, val AUROC / KS / Brier, seconds since the start,
    and `*` when val AUROC is the best so far; a last line says where the best epoch was and why
    training stopped. Printed by rank 0 only, through a rich console (colour in a terminal, plain
    lines in a log file)."""

    COLUMNS = ("epoch", "train loss", "val/auroc", "val/ks", "val/brier", "elapsed")

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.t0 = time.perf_counter()
        self.best: tuple[float, int] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.t0, self.best = time.perf_counter(), None
        if trainer.is_global_zero:
            self.console.print("[bold]" + "  ".join(f"{c:>10s}" for c in self.COLUMNS) + "[/bold]")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs after this epoch's validation; `callback_metrics` computes the train epoch figures.
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if not trainer.is_global_zero or MONITOR not in m:
            return
        epoch = trainer.current_epoch + 1
        mark = ""
        if self.best is None or m[MONITOR] > self.best[0]:
            self.best, mark = (m[MONITOR], epoch), " [green]*[/green]"
        cells = [f"{epoch:>4d}/{trainer.max_epochs:<5d}"]
        cells += [f"{m[k]:10.4f}" if k in m else f"{'-':>10s}"
                  for k in ("train/loss_epoch", "val/auroc", "val/ks", "val/brier")]  # fmt: skip
        cells.append(f"{time.perf_counter() - self.t0:9.1f}s")
        self.console.print("  ".join(cells) + mark, highlight=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self.best is None:
            return
        stop = trainer.early_stopping_callback
        why = (
            f"early stop: no better {MONITOR} for {stop.patience} epochs"
            if stop is not None and stop.stopped_epoch > 0
            else "stopped early"
            if trainer.current_epoch < trainer.max_epochs
            else "all epochs run"
        )
        self.console.print(
            f"best {MONITOR} {self.best[0]:.4f} at epoch {self.best[1]} ({why})", highlight=False
        )


def make_trainer(
    *,
    max_epochs: int,
    patience: int,
    default_root_dir: str | Path,
    accelerator: str = "cpu",
    devices: int | str = 1,
    strategy: str = "auto",
    deterministic: bool = True,
    enable_progress_bar: bool = False,
    monitor: str = MONITOR,
    gradient_clip_val: float | None = None,
    logger: bool = True,
    log_dir: str | Path | None = None,
    log_every_n_steps: int = 50,
    ema_decay: float = 0.0,
    extra_callbacks: Sequence[L.Callback] = (),
) -> L.Trainer:
    """A Trainer with early stopping and best-checkpointing on `val/auroc` (mode max).

    The best checkpoint is `trainer.checkpoint_callback.best_model_path`. With `logger`, metrics go
    to TensorBoard under `<log_dir>/tensorboard/` (`log_dir` defaults to `default_root_dir`) and to
    `<default_root_dir>/logs/metrics.csv`. Sampler replacement is off: `BatchIndexSampler` shards across
    ranks itself. `log_every_n_steps` should not exceed the batches of an epoch (`fit_net` sets it).
    """
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
    root = Path(default_root_dir)
    callbacks = [
        EarlyStopping(monitor=monitor, mode="max", patience=patience),
        ModelCheckpoint(
            dirpath=root / "checkpoints",
            filename="best",
            monitor=monitor,
            mode="max",
            save_top_k=1,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
        *extra_callbacks,  # e.g. Optuna's pruning callback
    ]
    if ema_decay > 0:
        # An exponential moving average of the weights, swapped in for validation and written to the
        # checkpoints (Lightning's callback): early stopping, the best checkpoint and the export all
        # see the averaged net, which is smoother in time than the last minibatch's weights.
        callbacks.append(EMAWeightAveraging(decay=ema_decay))
    loggers: list[Any] = []
    if logger:
        loggers = [
            # default_hp_metric off: no placeholder `hp_metric = -1`; fit_net links the hyperparameters
            # with the best val/auroc once training is over.
            TensorBoardLogger(
                Path(log_dir or root) / "tensorboard", name="", version="", default_hp_metric=False
            ),
            CSVLogger(str(root), name="logs", version=""),  # its own folder: root holds checkpoints
        ]
    with quiet_lightning():  # the device banner and the logger advertisement come from the constructor
        return L.Trainer(
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            deterministic=deterministic,
            default_root_dir=str(root),
            enable_progress_bar=enable_progress_bar,
            enable_model_summary=False,
            callbacks=callbacks,
            logger=loggers or False,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            gradient_clip_val=gradient_clip_val or None,
            log_every_n_steps=log_every_n_steps,
        )


def set_threads(n: int | None = None, *, processes: int = 1) -> int:
    """Set torch's intra-op threads: `n`, else the CPUs this process may use divided by `processes`.

    Measured on the 2-core box: one CNN epoch over 100k applicants takes ~13 s with 2 threads on an
    idle machine but 75-120 s when another job holds one core (OpenMP threads wait on each other),
    against ~18 s with 1 thread either way. On a shared machine pass n=1. DDP on CPU already splits
    the cores between its processes (Lightning sets the threads unless OMP_NUM_THREADS is set).
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = n if n is not None else max(1, cpus // max(1, processes))
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n=}")
    torch.set_num_threads(n)
    return n


# --- one call: fit, restore best, calibrate -----------------------------------------------------------


@dataclass
class FitResult:
    module: RiskModule  # best checkpoint's weights, eval mode
    calibrated: Calibrated  # what to export
    a: float
    b: float
    best_path: str
    best_val_auroc: float
    epochs: int
    metrics: dict[str, float] = field(default_factory=dict)  # val + test splits, best weights, uncalibrated


def predict_logits(net: nn.Module, fs: FeatureSet, *, batch_size: int = 8192) -> np.ndarray:
    """Logits [N] of a bare net on a FeatureSet, eval mode, no grad."""
    net.eval()
    inputs = [
        torch.from_numpy(np.ascontiguousarray(getattr(fs, k), dtype=np.float32)) for k in net.input_names
    ]
    with torch.inference_mode():
        out = [net(*(x[i : i + batch_size] for x in inputs)) for i in range(0, len(fs), batch_size)]
    return torch.cat(out).numpy()


def fit_net(
    cfg: ModelConfig,
    train: FeatureSet,
    val: FeatureSet,
    test_sets: Mapping[str, FeatureSet] | None = None,
    *,
    default_root_dir: str | Path,
    devices: int = 1,
    strategy: str = "auto",
    enable_progress_bar: bool = False,
    callbacks: Sequence[L.Callback] = (),
    threads: int | None = None,
    experiment: Mapping[str, Any] | None = None,
    log_dir: str | Path | None = None,
) -> FitResult:
    """Seed, build, fit with early stopping, reload the best epoch, fit calibration on `val`.

    `threads` sets torch's intra-op threads for this process (see `set_threads`); None leaves them.
    `experiment`: the resolved experiment config, recorded in the hyperparameters (default: this
    model config under `model.params`). `log_dir`: where `tensorboard/` goes (default:
    `default_root_dir`). Pass `EpochProgress()` in `callbacks` for a line per epoch.
    """
    if threads is not None:
        set_threads(threads)
    test_sets = dict(test_sets or {})
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    net = build_net(
        cfg.kind,
        cfg.net,
        n_channels=train.sequence.shape[2],
        n_static=train.static.shape[1],
        static_train=train.static,
        sequence_train=train.sequence,
    )
    o = cfg.optim
    module = RiskModule(
        net,
        lr=o.lr,
        weight_decay=o.weight_decay,
        schedule=o.schedule,
        warmup_frac=o.warmup_frac,
        pos_weight=o.pos_weight,
        test_splits=tuple(test_sets),
        experiment=flat_config(
            experiment
            if experiment is not None
            else {"model": {"kind": cfg.kind, "params": cfg.model_dump(mode="json")}}
        ),
    )
    dm = RiskDataModule(
        train,
        val,
        test_sets,
        batch_size=cfg.trainer.batch_size,
        inputs=net.input_names,
        seed=cfg.trainer.seed,
    )
    # Log at most once an epoch's batches (Lightning warns when an epoch has fewer batches than the
    # interval); the count is a rank's, as the sampler shards the rows across `devices` processes.
    batches = BatchIndexSampler.count(
        len(train), cfg.trainer.batch_size, world=devices, pad=True, drop_last=True
    )
    trainer = make_trainer(
        max_epochs=cfg.trainer.max_epochs,
        patience=cfg.trainer.patience,
        default_root_dir=default_root_dir,
        devices=devices,
        strategy=strategy,
        enable_progress_bar=enable_progress_bar,
        gradient_clip_val=o.grad_clip,
        log_dir=log_dir,
        log_every_n_steps=max(1, min(50, batches)),
        ema_decay=cfg.trainer.ema_decay,
        extra_callbacks=callbacks,
    )
    with quiet_lightning():
        trainer.fit(module, datamodule=dm)
    ckpt = trainer.checkpoint_callback
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):  # the HPARAMS tab: the run's settings against its best
            logger.log_hyperparams(module.hparams, {"best/val_auroc": float(ckpt.best_model_score)})
            logger.finalize("success")
    best_path = ckpt.best_model_path
    best = RiskModule.load_from_checkpoint(best_path, map_location="cpu", weights_only=False)
    best.eval()
    metrics = {}
    if trainer.is_global_zero or devices == 1:
        for name, fs in {"val": val, **test_sets}.items():
            m = RiskMetrics(sync=False)
            m.update(torch.from_numpy(predict_logits(best.net, fs)), torch.from_numpy(fs.labels))
            metrics |= {f"{name}/{k}": float(v) for k, v in m.compute().items()}
    a, b = fit_calibration(predict_logits(best.net, val), val.labels, cfg.calibration)
    return FitResult(
        module=best,
        calibrated=Calibrated(best.net, a=a, b=b).eval(),
        a=a,
        b=b,
        best_path=best_path,
        best_val_auroc=float(ckpt.best_model_score),
        epochs=trainer.current_epoch,
        metrics=metrics,
    )
