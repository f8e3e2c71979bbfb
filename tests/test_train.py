"""`train(cfg)` end to end on the tiny county: run folder, ONNX parity, registry, lineage, bad configs."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_experiment
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from typer.testing import CliRunner

from govrisk.cli import app
from govrisk.core.config import work_dir
from govrisk.core.hashing import sha256_file
from govrisk.core.registry import TamperedModelError, list_models, model_path
from govrisk.training.config import experiment_from_dict, load_experiment
from govrisk.training.lightning import flat_config
from govrisk.training.train import predictions, train

RUN_FILES = {"config.yaml", "metrics.json", "model.onnx", "feature_schema.json", "lineage.json"}


def experiment(dataset: Path, kind: str, **params: object) -> dict:
    return tiny_experiment(dataset, kind, name=f"test-{kind}", **params)


FAST_NET = {"trainer": {"max_epochs": 4, "patience": 2, "batch_size": 256}}


@pytest.fixture(scope="module")
def scorecard_run(tiny_county_path: Path):
    cfg, params = experiment_from_dict(experiment(tiny_county_path, "scorecard"))
    return train(cfg, params)


def test_scorecard_run_folder_describes_itself(scorecard_run, tiny_county_path: Path) -> None:
    run = scorecard_run
    assert RUN_FILES | {"scorecard.pkl", "scorecard.csv", "reason_codes.json"} <= {
        p.name for p in run.run_dir.iterdir()
    }
    report = json.loads((run.run_dir / "metrics.json").read_text())
    assert report["onnx"]["inputs"] == ["raw"]
    assert report["onnx"]["max_abs_diff"] <= 1e-5
    assert run.metrics["oot/auroc"] > 0.7  # it learnt something real
    lineage = json.loads((run.run_dir / "lineage.json").read_text())
    manifest = json.loads((tiny_county_path / "manifest.json").read_text())
    assert lineage["data_hash"] == manifest["content_hash"]
    assert lineage["git_commit"] and lineage["packages"]["onnxruntime"]
    resolved = yaml.safe_load((run.run_dir / "config.yaml").read_text())
    assert resolved["model"]["params"]["scaling"]["base_points"] == 600  # defaults resolved in full
    # The resolved config is itself a valid experiment: `govrisk train` consumes it unchanged.
    again, _ = experiment_from_dict(resolved)
    assert again.model.kind == "scorecard"


def test_registered_and_listed_and_tamper_refused(scorecard_run) -> None:
    tags = [r["tag"] for r in list_models()]
    assert scorecard_run.tag in tags
    path, meta = model_path(scorecard_run.tag)
    assert sha256_file(path / "model.onnx") == meta["onnx_sha256"]
    listed = CliRunner().invoke(app, ["models", "list"])
    assert listed.exit_code == 0 and "county-scorecard" in listed.output

    onnx_file = path / "model.onnx"
    original = onnx_file.read_bytes()
    try:
        onnx_file.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(TamperedModelError, match="refusing"):
            model_path(scorecard_run.tag)
        refused = CliRunner().invoke(app, ["models", "verify", scorecard_run.tag])
        assert refused.exit_code == 1 and "refused" in refused.output
    finally:
        onnx_file.write_bytes(original)


def test_batch_predictions_from_the_run_folder_match_training_metrics(scorecard_run, tiny_county) -> None:
    a = tiny_county.applicants
    p = predictions(scorecard_run.run_dir, a, tiny_county.monthly)
    assert p.shape == (len(a),) and np.isfinite(p).all() and (p > 0).all() and (p < 1).all()
    assert abs(p.mean() - a.default_12m.mean()) < 0.03


@pytest.mark.parametrize("kind", ["cnn", "tabular"])
def test_network_runs_export_and_register(kind: str, tiny_county_path: Path) -> None:
    cfg, params = experiment_from_dict(experiment(tiny_county_path, kind, **FAST_NET))
    run = train(cfg, params)
    names = {p.name for p in run.run_dir.iterdir()}
    assert RUN_FILES | {"model.ckpt", "calibration.json"} <= names
    assert run.onnx_parity["max_abs_diff"] <= 1e-5
    assert run.metrics["val/auroc"] > 0.6
    assert run.tag and run.tag.startswith(f"county-{kind}:")


def test_same_config_and_seed_give_the_same_val_auc(tiny_county_path: Path) -> None:
    raw = experiment(tiny_county_path, "cnn", **FAST_NET) | {"register_model": False}
    first = train(*experiment_from_dict(raw)).metrics["val/auroc"]
    second = train(*experiment_from_dict(raw)).metrics["val/auroc"]
    assert abs(first - second) < 1e-6


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"learning_rate": 0.1}, "learning_rate"),
        ({"split": {"kind": "vintage", "val_start": "2023-01"}}, "oot_start"),
        ({"seed": "seven"}, "seed"),
        ({"model": {"kind": "cnn", "params": {"net": {"dropout": 1.5}}}}, "model.params.net.dropout"),
        ({"model": {"kind": "cnn", "params": {"net": {"hiden": 8}}}}, "model.params.net.hiden"),
        (
            {"model": {"kind": "scorecard", "params": {"scaling": {"pdo": "twenty"}}}},
            "model.params.scaling.pdo",
        ),
        ({"model": {"kind": "forest"}}, "model.kind"),
    ],
)
def test_bad_configs_fail_before_training_naming_the_key(
    override: dict, named: str, tiny_county_path: Path
) -> None:
    raw = experiment(tiny_county_path, "cnn") | override
    runs_before = set((work_dir() / "runs").glob("*/*")) if (work_dir() / "runs").exists() else set()
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        experiment_from_dict(raw)
    runs_after = set((work_dir() / "runs").glob("*/*")) if (work_dir() / "runs").exists() else set()
    assert runs_after == runs_before


def test_cli_overrides_are_checked_before_training() -> None:
    result = CliRunner().invoke(app, ["train", "--config", "county_cnn", "model.params.optim.lr=-1"])
    assert result.exit_code == 2
    assert "model.params.optim.lr" in result.output
    with pytest.raises(ValueError, match="key=value"):
        load_experiment("county_cnn", ["model.params.optim.lr"])


@pytest.mark.slow
def test_govrisk_train_with_two_ddp_processes(tmp_path: Path, tiny_county_path: Path) -> None:
    """`--devices 2`: Lightning's DDP (gloo on CPU) relaunches the command per rank; rank 0 reports."""
    import os
    import subprocess
    import sys

    env = os.environ | {"GOVRISK_WORK": str(tmp_path)}
    cmd = [sys.executable, "-m", "govrisk.cli", "train", "--config", "county_cnn", "--devices", "2",
           f"data.dataset={tiny_county_path}", "data.generate=null", "model.params.trainer.max_epochs=2"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run folder") == 1  # one report, from rank 0
    # Epoch metrics are synced by torchmetrics or logged with sync_dist: no "use sync_dist" advice,
    # no start-up banners, and one epoch table (rank 0's).
    for noise in ("sync_dist", "GPU available", "litlogger", "log_every_n_steps"):
        assert noise not in done.stdout + done.stderr, done.stderr[-3000:]
    assert done.stderr.count("val/auroc  ") == 1 and "best val/auroc" in done.stderr
    runs = list((tmp_path / "runs" / "county-cnn").iterdir())
    assert len(runs) == 1 and (runs[0] / "model.onnx").exists() and (runs[0] / "metrics.json").exists()


# --- what `govrisk train` shows and leaves behind -----------------------------------------------------

TINY_CLI_CNN = ["model.params.net.hidden=8", "model.params.net.stem_hidden=0", "model.params.net.static_hidden=16",
                "model.params.net.head_hidden=16", "model.params.net.static_bins=0", "model.params.net.ensemble_size=1",
                "model.params.trainer.max_epochs=3", "model.params.trainer.patience=3",
                "model.params.trainer.batch_size=256"]  # fmt: skip
EPOCH_LINE = re.compile(r"^\s*(\d+)/3\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+[\d.]+s( \*)?$")


@pytest.fixture(scope="module")
def cli_cnn_run(tmp_path_factory: pytest.TempPathFactory, tiny_county_path: Path):
    """`govrisk train` of a tiny CNN in its own process, as a user runs it: all it prints, its run folder.
    Warnings are on (`default`): a Lightning warning would show in the captured output."""
    work = tmp_path_factory.mktemp("cli-train")
    cmd = [sys.executable, "-m", "govrisk.cli", "train", "--config", "county_cnn", f"data.dataset={tiny_county_path}",
           "data.generate=null", "register_model=false", *TINY_CLI_CNN]  # fmt: skip
    env = os.environ | {"GOVRISK_WORK": str(work), "PYTHONWARNINGS": "default", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run_dir,) = (work / "runs" / "county-cnn").iterdir()
    return done, run_dir


def test_train_prints_a_line_per_epoch_and_no_lightning_banners(cli_cnn_run) -> None:
    done, run_dir = cli_cnn_run
    output = done.stdout + done.stderr
    for noise in (
        "GPU available",
        "TPU available",
        "litlogger",
        "💡",
        "log_every_n_steps",
        "sync_dist",
        "Trainer.fit` stopped",
        "site-packages/lightning",
    ):  # fmt: skip  (a Lightning warning names its file)
        assert noise not in output, f"{noise!r} in the output of govrisk train:\n{output}"
    assert done.stderr.count("val/auroc") >= 2  # the table's header and the closing line
    rows = [m for line in done.stderr.splitlines() if (m := EPOCH_LINE.match(line))]
    calibration = json.loads((run_dir / "calibration.json").read_text())
    assert [int(m[1]) for m in rows] == list(range(1, calibration["epochs"] + 1))
    # The starred epochs improve val/auroc, and the best shown is the checkpoint the model came from.
    shown = [float(m[3]) for m in rows]
    assert all(
        bool(m[6]) == (v > max(shown[:i], default=-1))
        for i, (m, v) in enumerate(zip(rows, shown, strict=True))
    )
    assert max(shown) == pytest.approx(calibration["best_val_auroc_uncalibrated"], abs=6e-5)
    assert f"TensorBoard tensorboard --logdir {run_dir / 'tensorboard'}" in done.stdout


def test_run_folder_holds_tensorboard_events_and_the_resolved_hparams(
    cli_cnn_run, tiny_county_path: Path
) -> None:
    _, run_dir = cli_cnn_run
    tb = run_dir / "tensorboard"
    assert list(tb.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tb))
    events.Reload()
    epochs = json.loads((run_dir / "calibration.json").read_text())["epochs"]
    assert {"train/loss", "train/loss_epoch", "val/auroc", "val/ks", "val/brier"} <= set(
        events.Tags()["scalars"]
    )
    assert len(events.Scalars("val/auroc")) == epochs

    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    for hparams_file in (tb / "hparams.yaml", run_dir / "lightning" / "logs" / "hparams.yaml"):
        hp = yaml.safe_load(hparams_file.read_text())
        assert hp["experiment"] == flat_config(resolved)  # the whole resolved config, dotted keys
        assert hp["experiment"]["data.dataset"] == str(tiny_county_path)
        assert hp["experiment"]["model.params.net.hidden"] == 8 and hp["net_config"]["hidden"] == 8
        assert hp["lr"] == resolved["model"]["params"]["optim"]["lr"]
        assert hp["net_kind"] == "cnn" and hp["n_static"] > 0 and hp["n_channels"] > 0
        assert None not in (hp["lr"], hp["net_kind"], hp["net_config"], hp["n_channels"], hp["n_static"])
    # TensorBoard's HPARAMS tab: the same settings, against the run's best val/auroc.
    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    ).session_start_info.hparams
    assert start["experiment/model.params.trainer.max_epochs"].number_value == 3
    assert start["net_kind"].string_value == "cnn"
    assert "best/val_auroc" in events.Tags()["scalars"]
    with open(run_dir / "lightning" / "logs" / "metrics.csv") as f:
        assert sum(bool(row["val/auroc"]) for row in csv.DictReader(f)) == epochs
