"""`train(cfg)`: the one training path that the CLI, the tests and the Optuna objective share.

Reads top to bottom: data -> split -> features (fitted on train only) -> model -> ONNX export with
parity -> metrics of the exported model on every split -> a self-describing run folder -> registry.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel
from sklearn.model_selection import StratifiedKFold, train_test_split

from govrisk.core.config import work_dir
from govrisk.core.hashing import sha256_json
from govrisk.core.onnx import OnnxGraph
from govrisk.core.registry import lineage, register
from govrisk.data.features import FeatureBuilder, FeatureSet, month_number
from govrisk.data.store import Dataset, read_dataset, read_manifest, verify_hash
from govrisk.data.synthetic import generate, load_generator_config
from govrisk.data.taiwan import import_taiwan
from govrisk.training.config import DataSpec, ExperimentConfig, SplitSpec, resolved_dict
from govrisk.training.metrics import evaluate
from govrisk.training.scorecard import Scorecard, export_scorecard

RUN_DIR_ENV = "GOVRISK_RUN_DIR"


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, float]
    tag: str | None  # model-store tag when registered
    onnx_parity: dict[str, Any]


def dataset_path(spec: DataSpec) -> Path:
    """The dataset folder an experiment reads, made once (generated or imported) if it is missing."""
    if spec.dataset is not None:
        return Path(spec.dataset)
    root = work_dir() / "data"
    if spec.generate is not None:
        g = spec.generate
        path = root / f"{g.config}-{g.applicants}-s{g.seed}{'-drift' if g.drift else ''}"
        if not (path / "manifest.json").exists():
            # Another worker may finish the same dataset first: same seed, same bytes, keep theirs.
            with contextlib.suppress(FileExistsError):
                generate(
                    load_generator_config(g.config),
                    n_applicants=g.applicants,
                    seed=g.seed,
                    out=path,
                    drift=g.drift,
                    progress=False,
                )
        return path
    path = root / "taiwan"
    if not (path / "manifest.json").exists():
        with contextlib.suppress(FileExistsError):
            import_taiwan(Path(spec.import_taiwan), out=path)
    return path


def load_data(spec: DataSpec) -> tuple[Dataset, str]:
    """The dataset and its verified content hash (a changed file is refused, not trained on)."""
    path = dataset_path(spec)
    read_manifest(path)  # clear error when the folder is not a dataset
    return read_dataset(path), verify_hash(path)


def split_indices(ds: Dataset, spec: SplitSpec) -> dict[str, np.ndarray]:
    """Row indices of train / val / oot. Vintage splits cut on the application month; data without
    vintages (Taiwan) gets a seeded stratified split, or fold k of a stratified k-fold as `oot`."""
    a = ds.applicants
    y = a[ds.contract.applicants.label].astype(int).to_numpy()
    idx = np.arange(len(a))
    if spec.kind == "vintage":
        m = month_number(a[ds.contract.applicants.application_date])
        val_m, oot_m = (
            month_number(np.array([f"{s}-01"], dtype="datetime64[D]"))[0]
            for s in (spec.val_start, spec.oot_start)
        )
        parts = {"train": idx[m < val_m], "val": idx[(m >= val_m) & (m < oot_m)], "oot": idx[m >= oot_m]}
    else:
        if spec.folds is not None:
            folds = StratifiedKFold(spec.folds, shuffle=True, random_state=spec.seed)
            rest, oot = list(folds.split(idx, y))[spec.fold]
        else:
            rest, oot = train_test_split(idx, test_size=spec.oot_share, stratify=y, random_state=spec.seed)
        train, val = train_test_split(
            rest, test_size=spec.val_share, stratify=y[rest], random_state=spec.seed
        )
        parts = {"train": np.sort(train), "val": np.sort(val), "oot": np.sort(oot)}
    for name, rows in parts.items():
        if len(rows) == 0 or y[rows].min() == y[rows].max():
            raise ValueError(
                f"split {name!r} has {len(rows)} rows and needs both classes; check split: {spec.model_dump()}"
            )
    return parts


_PREPARED: dict[str, Any] | None = None  # set inside reuse_prepared()


@contextlib.contextmanager
def reuse_prepared() -> Iterator[None]:
    """Inside this block `prepare` computes each (data, split) once per process. Tuning trials differ
    only in the model; re-reading, re-hashing and re-featurising the same county for every trial
    would cost as much as a few epochs of each trial."""
    global _PREPARED
    outer = _PREPARED
    _PREPARED = {} if outer is None else outer
    try:
        yield
    finally:
        _PREPARED = outer


def prepare(cfg: ExperimentConfig) -> tuple[Dataset, str, dict[str, np.ndarray], FeatureBuilder, FeatureSet]:
    """Data (hash verified), split rows, the feature builder fitted on train rows, all features."""
    key = json.dumps([cfg.data.model_dump(mode="json"), cfg.split.model_dump(mode="json")], sort_keys=True)
    if _PREPARED is not None and key in _PREPARED:
        return _PREPARED[key]
    ds, data_hash = load_data(cfg.data)
    rows = split_indices(ds, cfg.split)
    a = ds.applicants
    builder = FeatureBuilder.from_config(cfg.data.features, contract=ds.contract).fit(
        a.iloc[rows["train"]].reset_index(drop=True), ds.monthly
    )
    prepared = ds, data_hash, rows, builder, builder.transform(a, ds.monthly)
    if _PREPARED is not None:
        _PREPARED[key] = prepared
    return prepared


def _fit_scorecard(
    params: BaseModel,
    parts: dict[str, FeatureSet],
    check: FeatureSet,
    builder: FeatureBuilder,
    run_dir: Path,
    cfg: ExperimentConfig,
) -> tuple[dict[str, Any], list[str]]:
    card = Scorecard.fit(
        parts["train"].raw,
        parts["train"].labels,
        categorical=builder.fitted["categorical"],
        config=params,
        vocabulary=builder.fitted["vocab"],
    )
    parity = export_scorecard(card, run_dir / "model.onnx", check.raw, atol=cfg.parity_atol)
    with open(run_dir / "scorecard.pkl", "wb") as f:
        pickle.dump(card, f)
    card.table().to_csv(run_dir / "scorecard.csv", index=False)
    (run_dir / "reason_codes.json").write_text(
        json.dumps({"k": params.reason_codes, "characteristics": card.reason_code_table()}, indent=1)
    )
    return parity, ["raw"]


def _fit_net(
    params: BaseModel,
    parts: dict[str, FeatureSet],
    check: FeatureSet,
    run_dir: Path,
    cfg: ExperimentConfig,
    callbacks: list[Any],
    devices: int,
    strategy: str,
) -> tuple[dict[str, Any], list[str]]:
    # Imported here: a scorecard run never loads torch and Lightning (seconds of start-up).
    import torch

    from govrisk.training.export import export_net
    from govrisk.training.lightning import fit_net

    fit = fit_net(
        params,
        parts["train"],
        parts["val"],
        {"oot": parts["oot"]},
        default_root_dir=run_dir / "lightning",
        devices=devices,
        strategy=strategy,
        callbacks=callbacks,
        experiment=resolved_dict(cfg, params),  # the hyperparameters TensorBoard and hparams.yaml show
        log_dir=run_dir,  # <run folder>/tensorboard/
    )
    names = list(fit.calibrated.net.input_names)
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        return {"max_abs_diff": float("nan"), "rows": 0}, names  # export and files are rank 0's
    example = tuple(torch.from_numpy(getattr(check, k)[:2]) for k in names)
    parity = export_net(
        fit.calibrated,
        example,
        run_dir / "model.onnx",
        input_names=names,
        check_inputs=tuple(getattr(check, k) for k in names),
        atol=cfg.parity_atol,
    )
    Path(fit.best_path).replace(run_dir / "model.ckpt")
    (run_dir / "calibration.json").write_text(
        json.dumps(
            {
                "method": params.calibration,
                "a": fit.a,
                "b": fit.b,
                "epochs": fit.epochs,
                "best_val_auroc_uncalibrated": fit.best_val_auroc,
            },
            indent=1,
        )
    )
    return parity, names


@contextlib.contextmanager
def _shared_run_dir(cfg: ExperimentConfig, config_hash: str) -> Iterator[Path]:
    """The run folder. DDP relaunches this process once per rank, and every rank must use the
    folder rank 0 chose: it travels in an environment variable that the relaunched ranks inherit."""
    owner = RUN_DIR_ENV not in os.environ
    if owner:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        os.environ[RUN_DIR_ENV] = str(work_dir() / "runs" / cfg.name / f"{stamp}-{config_hash[:8]}")
    try:
        yield Path(os.environ[RUN_DIR_ENV])
    finally:
        if owner:
            os.environ.pop(RUN_DIR_ENV, None)


def train(
    cfg: ExperimentConfig,
    params: BaseModel,
    *,
    callbacks: list[Any] | None = None,
    devices: int = 1,
    strategy: str = "auto",
) -> RunResult:
    """Train, export, evaluate and (optionally) register one model; returns where it all went."""
    t0 = time.perf_counter()
    kind = cfg.model.kind
    callbacks = callbacks or []
    resolved = resolved_dict(cfg, params)
    config_hash = sha256_json(resolved)

    ds, data_hash, rows, builder, features = prepare(cfg)
    parts = {name: features.take(r) for name, r in rows.items()}

    with _shared_run_dir(cfg, config_hash) as run_dir:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        builder.save(run_dir / "feature_schema.json")

        # Parity of the exported graph is checked on up to `parity_rows` applicants of every split.
        check = features.take(np.random.default_rng(cfg.seed).permutation(len(features))[: cfg.parity_rows])
        t_fit = time.perf_counter()
        if kind == "scorecard":
            parity, input_names = _fit_scorecard(params, parts, check, builder, run_dir, cfg)
        else:
            parity, input_names = _fit_net(params, parts, check, run_dir, cfg, callbacks, devices, strategy)
        fit_seconds = time.perf_counter() - t_fit
        if int(os.environ.get("LOCAL_RANK", "0")) != 0:
            return RunResult(run_dir=run_dir, metrics={}, tag=None, onnx_parity=parity)  # rank 0 reports

        metrics: dict[str, float] = {}
        graph = OnnxGraph(run_dir / "model.onnx", threads=0)
        for name, fs in parts.items():
            metrics |= evaluate(fs.labels, onnx_pd(graph, fs), name)
        report = {
            "model": kind,
            "metrics": metrics,
            "fit_seconds": fit_seconds,
            "total_seconds": time.perf_counter() - t0,
            "onnx": parity | {"sha256": graph.sha256, "inputs": input_names},
            "splits": {name: len(r) for name, r in rows.items()},
        }
        (run_dir / "metrics.json").write_text(json.dumps(report, indent=1))
        lin = lineage(data_hash=data_hash, config_hash=config_hash, seed=cfg.seed, dataset=str(ds.path))
        (run_dir / "lineage.json").write_text(json.dumps(lin, indent=1))

        tag = None
        if cfg.register_model:
            name = f"{ds.contract.name}-{kind}"
            tag = register(run_dir, name=name, kind=kind, metrics=metrics, lineage_=lin)
            (run_dir / "model_tag.txt").write_text(tag + "\n")
        return RunResult(run_dir=run_dir, metrics=metrics, tag=tag, onnx_parity=parity)


def predictions(run_dir: Path, applicants: pd.DataFrame, monthly: dict[str, pd.DataFrame]) -> np.ndarray:
    """Batch scores of a run's exported model: features from its schema, then onnxruntime."""
    report = json.loads((run_dir / "metrics.json").read_text())
    fs = FeatureBuilder.from_schema(run_dir / "feature_schema.json").transform(applicants, monthly)
    return onnx_pd(OnnxGraph(run_dir / "model.onnx", expected_sha256=report["onnx"]["sha256"]), fs)


def onnx_pd(graph: OnnxGraph, fs: FeatureSet) -> np.ndarray:
    """PDs of the exported graph: the figures describe what serving will run."""
    return (
        graph.run(fs.model_inputs(graph.inputs), ["pd"], batch_size=20_000)["pd"]
        .astype(np.float64)
        .reshape(-1)
    )
