"""Bench: every model on the same splits, one table, and the bars they must clear.

County (synthetic, 200,000 applicants, vintage split, OOT = 2023-07..12): scorecard, tabular network,
temporal CNN (all through the shared `train(cfg)`, exported to ONNX, scored with onnxruntime) and
LightGBM on the same static/aggregate features (a reference line, not a served model), plus the
oracle AUC of the true PD. Taiwan: 5-fold stratified CV (shuffle, seed 0). Speed: one CNN epoch over
100,000 applicants x 24 months.

Usage: python bench/model_quality.py [--applicants 200000] [--models scorecard,tabular,cnn]
                                    [--skip-county] [--skip-taiwan] [--skip-speed]
                                    [--set MODEL:KEY=VALUE ...]
(`--models` reruns some rows: every run is seeded, so a row equals the same row of a full run.
`--set cnn:model.params.trainer.max_epochs=6` tries a variant of one model on the same splits.)
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from govrisk.core.config import apply_overrides, config_path, read_yaml
from govrisk.data.features import FeatureBuilder
from govrisk.data.store import read_table
from govrisk.training.config import experiment_from_dict
from govrisk.training.metrics import evaluate
from govrisk.training.train import load_data, prepare, split_indices, train

MODELS = ("scorecard", "tabular", "cnn")
CEILING_GAP = 0.005  # the county bar: the CNN within this OOT AUC of what the records allow
LGBM = {"n_estimators": 2000, "learning_rate": 0.03, "num_leaves": 31, "min_child_samples": 50,
        "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.5, "verbose": -1}  # fmt: skip


def experiment(name: str, overrides: Sequence[str] = (), **changes: object) -> dict:
    """configs/experiment/NAME.yaml, unregistered, with the bench's `changes` and then the user's
    `--set` overrides applied as `govrisk train` applies its `key=value` arguments."""
    raw = read_yaml(config_path("experiment", name)) | {"register_model": False}
    return apply_overrides(raw, [f"{k}={json.dumps(v)}" for k, v in changes.items()] + list(overrides))


def lightgbm_reference(raw_cfg: dict) -> tuple[dict[str, float], float]:
    """LightGBM on the same static features, early-stopped on validation; OOT figures."""
    import lightgbm as lgb

    cfg, _ = experiment_from_dict(raw_cfg)
    _, _, rows, _, fs = prepare(cfg)
    t = time.perf_counter()
    model = lgb.LGBMClassifier(**LGBM, random_state=cfg.seed)
    tr, va = rows["train"], rows["val"]
    model.fit(fs.static[tr], fs.labels[tr], eval_set=[(fs.static[va], fs.labels[va])], eval_metric="auc",
              callbacks=[lgb.early_stopping(100, verbose=False)])  # fmt: skip
    seconds = time.perf_counter() - t
    oot = rows["oot"]
    return evaluate(fs.labels[oot], model.predict_proba(fs.static[oot])[:, 1], "oot"), seconds


def fit_seconds(run_dir: Path) -> float:
    return json.loads((run_dir / "metrics.json").read_text())["fit_seconds"]


def county(applicants: int, models: list[str], settings: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    for kind in models:
        raw = experiment(
            f"county_{kind}",
            settings[kind],
            **{"data.generate.applicants": applicants, "data.generate.seed": 11},
        )
        result = train(*experiment_from_dict(raw))
        rows[kind] = result.metrics | {"seconds": fit_seconds(result.run_dir)}
        print(
            f"  {kind:10s} OOT AUC {result.metrics['oot/auroc']:.4f}  ({rows[kind]['seconds']:.0f} s)",
            flush=True,
        )
    raw = experiment("county_scorecard", **{"data.generate.applicants": applicants, "data.generate.seed": 11})
    metrics, seconds = lightgbm_reference(raw)
    rows["lightgbm"] = metrics | {"seconds": seconds}
    cfg, _ = experiment_from_dict(raw)
    ds, _ = load_data(cfg.data)
    oot = split_indices(ds, cfg.split)["oot"]
    truth = (
        read_table(ds.path, "truth")
        .set_index("applicant_id")
        .true_pd.reindex(ds.applicants.applicant_id)
        .to_numpy()
    )
    y = ds.applicants.default_12m.to_numpy().astype(float)
    rows["oracle"] = evaluate(y[oot], truth[oot], "oot") | {"seconds": 0.0}
    if "cnn" in models:
        # Imported here: record_ceiling imports this module's experiment() (a cycle at the top).
        from record_ceiling import CEILING, record_ceiling

        t = time.perf_counter()
        scores, *_ = record_ceiling(cfg)
        rows["ceiling"] = evaluate(y[oot], scores[CEILING][oot], "oot") | {"seconds": time.perf_counter() - t}
    return rows


def taiwan(models: list[str], settings: dict[str, list[str]], folds: int = 5) -> dict[str, list[float]]:
    aucs: dict[str, list[float]] = {k: [] for k in (*models, "lightgbm")}
    for fold in range(folds):
        split = {"kind": "stratified", "folds": folds, "fold": fold, "seed": 0, "val_share": 0.15}
        for kind in models:
            result = train(*experiment_from_dict(experiment(f"taiwan_{kind}", settings[kind], split=split)))
            aucs[kind].append(result.metrics["oot/auroc"])
        metrics, _ = lightgbm_reference(experiment("taiwan_scorecard", split=split))
        aucs["lightgbm"].append(metrics["oot/auroc"])
        print(f"  fold {fold}: " + "  ".join(f"{k} {v[-1]:.4f}" for k, v in aucs.items()), flush=True)
    return aucs


def cnn_epoch_seconds(overrides: Sequence[str], n: int = 100_000) -> float:
    """Wall time of one training epoch of the CNN (as configured, with `overrides`) over n applicants x 24 months."""
    import lightning as L

    from govrisk.training.lightning import RiskDataModule, RiskModule
    from govrisk.training.nets import build_net

    cfg, params = experiment_from_dict(
        experiment("county_cnn", overrides, **{"data.generate.applicants": 200_000, "data.generate.seed": 11})
    )
    ds, _ = load_data(cfg.data)
    a = ds.applicants.iloc[:n].reset_index(drop=True)
    fs = FeatureBuilder.from_config(cfg.data.features).fit(a, ds.monthly).transform(a, ds.monthly)
    net = build_net(
        "cnn", params.net, n_channels=fs.sequence.shape[2], n_static=fs.static.shape[1],
        static_train=fs.static, sequence_train=fs.sequence,
    )  # fmt: skip
    module = RiskModule(net, lr=params.optim.lr, weight_decay=params.optim.weight_decay, schedule="none")
    dm = RiskDataModule(
        fs, fs.take(np.arange(1000)), batch_size=params.trainer.batch_size, inputs=net.input_names
    )
    trainer = L.Trainer(max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    t = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--applicants", type=int, default=200_000)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of the model rows")
    ap.add_argument("--skip-county", action="store_true")
    ap.add_argument("--skip-taiwan", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="MODEL:KEY=VALUE",
        help="override one model's experiment config, as `govrisk train` does "
        "(repeatable; e.g. cnn:model.params.trainer.max_epochs=6)",
    )
    args = ap.parse_args()
    models = [m for m in args.models.split(",") if m]
    if not models or set(models) - set(MODELS):
        ap.error(f"--models must be a comma-separated subset of {MODELS}, got {args.models!r}")
    settings: dict[str, list[str]] = {m: [] for m in MODELS}
    for item in args.set:
        model, _, override = item.partition(":")
        if model not in MODELS or "=" not in override:
            ap.error(f"--set takes MODEL:KEY=VALUE with MODEL in {MODELS}, got {item!r}")
        settings[model].append(override)
    checks: list[tuple[str, bool]] = []

    if not args.skip_county:
        print(f"== County, {args.applicants:,} applicants, OOT window 2023-07..2023-12", flush=True)
        rows = county(args.applicants, models, settings)
        print(
            f"{'model':10s} {'OOT AUC':>8s} {'KS':>7s} {'Brier':>7s} {'top-10% capture':>16s} {'train s':>8s}"
        )
        for name, m in rows.items():
            print(
                f"{name:10s} {m['oot/auroc']:8.4f} {m['oot/ks']:7.4f} {m['oot/brier']:7.4f} {m['oot/top_decile_capture']:16.4f} {m['seconds']:8.1f}"
            )
        auc = {k: m["oot/auroc"] for k, m in rows.items()}
        if "cnn" in auc:
            cnn = auc["cnn"]
            checks.append(
                (
                    f"CNN AUC {cnn:.4f} within {CEILING_GAP} of the record ceiling {auc['ceiling']:.4f} "
                    "(bench/record_ceiling.py: the county's drivers read off the records + shared aggregates)",
                    auc["ceiling"] - cnn <= CEILING_GAP,
                )
            )
            checks += [
                (
                    f"CNN AUC {cnn:.4f} >= LightGBM on aggregates {auc['lightgbm']:.4f}",
                    cnn >= auc["lightgbm"],
                ),
                (f"CNN AUC {cnn:.4f} within 0.03 of oracle {auc['oracle']:.4f}", auc["oracle"] - cnn <= 0.03),
            ]

    if not args.skip_taiwan:
        print("== Taiwan, 5-fold stratified CV (shuffle, seed 0), AUC on the held-out fold", flush=True)
        aucs = taiwan(models, settings)
        for name, v in aucs.items():
            print(f"{name:10s} mean AUC {np.mean(v):.4f}  (folds {' '.join(f'{x:.4f}' for x in v)})")
        if "cnn" in aucs:
            mean = float(np.mean(aucs["cnn"]))
            checks.append((f"Taiwan CNN mean AUC {mean:.4f} >= 0.785", mean >= 0.785))
        if "scorecard" in aucs:
            mean = float(np.mean(aucs["scorecard"]))
            checks.append((f"Taiwan scorecard mean AUC {mean:.4f} >= 0.765", mean >= 0.765))

    if not args.skip_speed:
        seconds = cnn_epoch_seconds(settings["cnn"])
        print(f"== CNN epoch over 100,000 applicants x 24 months: {seconds:.1f} s")
        checks.append((f"CNN epoch {seconds:.1f} s <= 20 s", seconds <= 20))

    print("== Bars")
    for text, ok in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {text}")


if __name__ == "__main__":
    main()
