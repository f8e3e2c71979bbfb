"""The notebook API (`govrisk.api`, exposed lazily by `govrisk`) on the tiny county: each function gives
what the command line and the batch path give; `import govrisk` stays light; the example notebook
runs end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY_APPLICANTS, TINY_SEED, tiny_experiment
from typer.testing import CliRunner

from govrisk import (
    describe,
    generate,
    list_models,
    load_dataset,
    load_model,
    report,
    score,
    train,
    validate,
)
from govrisk.cli import app
from govrisk.core.config import config_path, work_dir
from govrisk.core.rating import load_master_scale
from govrisk.data.store import read_manifest
from govrisk.data.validate import validate_dataset
from govrisk.research.report import resolve_model
from govrisk.research.report import score as report_score
from govrisk.serving.models import LoadedModel
from govrisk.training.train import predictions

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "notebooks" / "quickstart.ipynb"


# --- the package stays light ----------------------------------------------------------------------


def test_import_govrisk_and_serving_do_not_load_torch_or_the_api() -> None:
    code = """
import sys
import govrisk
assert "govrisk.api" not in sys.modules, "import govrisk imported the API"
assert {"train", "score", "report", "__version__"} <= set(dir(govrisk))
import govrisk.serving.engine, govrisk.serving.models
from govrisk import serving  # a submodule by name still imports (the lazy hook says AttributeError)
assert serving.engine
try:
    govrisk.no_such_name
except AttributeError:
    pass
else:
    raise AssertionError("govrisk.no_such_name did not raise AttributeError")
heavy = sorted(m for m in ("torch", "lightning", "optbinning", "onnx") if m in sys.modules)
assert not heavy, f"serving imported {heavy}"
from govrisk import load_model, score  # the API itself: imported now, still without torch
assert "govrisk.api" in sys.modules and govrisk.score is score
heavy = sorted(m for m in ("torch", "lightning") if m in sys.modules)
assert not heavy, f"the API imported {heavy}"
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


# --- data -----------------------------------------------------------------------------------------


def test_generate_is_the_cli_generator(tiny_county_path: Path) -> None:
    path = generate(applicants=TINY_APPLICANTS, seed=TINY_SEED)
    assert path == work_dir() / "data" / f"county-{TINY_APPLICANTS}-s{TINY_SEED}"
    # Same generator, same seed: byte-identical tables, so the same content hash as the session county.
    assert read_manifest(path)["content_hash"] == read_manifest(tiny_county_path)["content_hash"]
    with pytest.raises(FileExistsError):
        generate(applicants=TINY_APPLICANTS, seed=TINY_SEED)


def test_load_validate_describe(tiny_county_path: Path) -> None:
    ds = load_dataset(tiny_county_path, verify=True)
    manifest = read_manifest(tiny_county_path)
    assert len(ds.applicants) == TINY_APPLICANTS and set(ds.monthly) == set(ds.contract.monthly)

    check = validate(ds)  # a Dataset or its folder
    assert check.ok and check.n_errors == 0
    assert check.summary == validate_dataset(tiny_county_path).summary

    facts = describe(tiny_county_path)
    assert facts["content_hash"] == manifest["content_hash"]
    assert facts["rows"] == {t: m["rows"] for t, m in manifest["tables"].items()}
    assert facts["default_rate"] == pytest.approx(ds.applicants[ds.contract.applicants.label].mean())


# --- training, the registry, loading and scoring --------------------------------------------------


@pytest.fixture(scope="module")
def runs(tiny_county_path: Path) -> dict:
    """Two scorecards: one from an experiment dict, one from a named experiment with overrides."""
    experiment = tiny_experiment(tiny_county_path, "scorecard", name="api-card")
    before = json.dumps(experiment)
    card = train(experiment)
    assert json.dumps(experiment) == before  # the caller's dict is not changed
    small = train(
        "county_scorecard",
        ["seed=5", "name=api-small-card"],
        dataset=tiny_county_path,
        model__params__binning__max_n_bins=4,
    )
    return {"card": card, "small": small}


def test_train_applies_dataset_and_overrides(runs: dict, tiny_county_path: Path) -> None:
    resolved = yaml.safe_load((runs["small"].run_dir / "config.yaml").read_text())
    assert resolved["name"] == "api-small-card" and resolved["seed"] == 5
    assert resolved["data"]["dataset"] == str(tiny_county_path) and resolved["data"]["generate"] is None
    assert resolved["model"]["params"]["binning"]["max_n_bins"] == 4
    for run in runs.values():
        assert run.tag and run.tag.startswith("county-scorecard:")
        assert run.onnx_parity["max_abs_diff"] <= 1e-5 and run.metrics["oot/auroc"] > 0.6


def test_train_refuses_bad_overrides_before_training() -> None:
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="no_such_key"):
        train("county_scorecard", overrides=["model.params.no_such_key=1"])
    with pytest.raises(TypeError):
        train("county_scorecard", overrides="seed=1")  # type: ignore[arg-type]
    assert time.perf_counter() - t0 < 10  # nothing was generated or trained


def test_list_models_shows_what_train_registered(runs: dict) -> None:
    models = list_models()
    assert isinstance(models, pd.DataFrame)
    for run in runs.values():
        row = models.set_index("tag").loc[run.tag]
        assert row["kind"] == "scorecard"
        assert row["oot/auroc"] == pytest.approx(run.metrics["oot/auroc"])
        assert row["val/auroc"] == pytest.approx(run.metrics["val/auroc"])
    assert list(models["created"]) == sorted(models["created"], reverse=True)


def test_load_model_from_tag_run_or_folder(runs: dict) -> None:
    run = runs["card"]
    by_tag, by_run, by_folder = load_model(run.tag), load_model(run), load_model(run.run_dir)
    assert isinstance(by_tag, LoadedModel) and by_tag.tag == run.tag
    assert by_tag.sha256 == by_run.sha256 == by_folder.sha256
    name = run.tag.split(":")[0]
    latest = load_model(f"{name}:latest")
    assert latest.tag in set(list_models()["tag"]) and latest.tag != f"{name}:latest"  # resolved


def test_score_gives_the_batch_and_report_pds(runs: dict, tiny_county) -> None:
    run = runs["card"]
    a, key = tiny_county.applicants, tiny_county.contract.applicants.key
    scores = score(run.tag, tiny_county)
    assert list(scores.columns) == [key, "pd", "grade", "score", "reason_codes"]
    assert (scores[key].to_numpy() == a[key].to_numpy()).all()
    # What `govrisk report` scores (research.report.score) and the run's batch predictions.
    report_pd, _ = report_score(resolve_model(run.tag), tiny_county)
    np.testing.assert_array_equal(scores["pd"].to_numpy(), report_pd)
    np.testing.assert_allclose(
        scores["pd"], predictions(run.run_dir, a, tiny_county.monthly), rtol=0, atol=1e-12
    )
    assert (scores["grade"].to_numpy() == load_master_scale().grade(report_pd)).all()
    # Points: higher score, lower PD; reasons: the trained count, from the scorecard's characteristics.
    assert np.corrcoef(scores["score"], np.log(scores["pd"] / (1 - scores["pd"])))[0, 1] < -0.999
    table = json.loads((run.run_dir / "reason_codes.json").read_text())
    known = {r["characteristic"] for r in table["characteristics"]}
    assert scores["reason_codes"].map(len).max() == table["k"]
    assert all(set(r) <= known for r in scores["reason_codes"])
    assert score(run.tag, tiny_county, reasons=1)["reason_codes"].map(len).max() == 1

    # An applicants frame with its monthly records: the same PDs for the same applicants.
    some = a.iloc[[5, 17, 400]].reset_index(drop=True)
    monthly = {t: df[df[key].isin(some[key])] for t, df in tiny_county.monthly.items()}
    few = score(load_model(run.tag), some, monthly)
    np.testing.assert_allclose(few["pd"], scores["pd"].to_numpy()[[5, 17, 400]], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="monthly"):
        score(run.tag, some)


# --- governance -------------------------------------------------------------------------------------


def test_report_is_the_cli_report(runs: dict, tmp_path: Path) -> None:
    rep = report(runs["card"], runs["small"], out=tmp_path / "api", policy_overrides=["bootstrap.n_boot=50"])
    assert rep.decision in ("promote", "hold") and rep.html_path and rep.html_path.exists()
    auc = rep.auc()
    assert auc.loc["champion", "estimate"] == pytest.approx(runs["card"].metrics["oot/auroc"])
    assert auc.loc["challenger", "estimate"] == pytest.approx(runs["small"].metrics["oot/auroc"])
    assert len(rep.checks()) == len(rep.recommendation["checks"]) and "<table" in rep._repr_html_()

    raw = yaml.safe_load(config_path("governance", "default").read_text())
    raw["bootstrap"]["n_boot"] = 50
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(raw))
    args = ["report", "--champion", runs["card"].tag, "--challenger", runs["small"].tag,
            "--out", str(tmp_path / "cli"), "--policy", str(tmp_path / "policy.yaml")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cli = json.loads((tmp_path / "cli" / "report.json").read_text())
    api = json.loads(rep.json_path.read_text())  # type: ignore[union-attr]
    for section in ("models", "data", "discrimination", "calibration", "grades", "stability", "swap",
                    "segments", "recommendation"):  # fmt: skip
        assert api[section] == cli[section], section

    in_memory = report(
        runs["card"].tag, load_model(runs["small"].tag), policy_overrides=["bootstrap.n_boot=50"]
    )
    assert in_memory.html_path is None
    assert (
        in_memory.figures["models"]["challenger"]["tag"] == runs["small"].tag
    )  # a loaded model keeps its tag


# --- the example notebook ---------------------------------------------------------------------------


def test_quickstart_notebook_runs(tmp_path: Path) -> None:
    """docs/notebooks/quickstart.ipynb, every cell, in a fresh kernel with its own work folder; any cell
    that raises fails the test (nbclient's CellExecutionError)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert any("from govrisk import" in c.source for c in notebook.cells if c.cell_type == "code")
    beside_code = sorted(p.name for p in NOTEBOOK.parent.iterdir())
    work = tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if k != "BENTOML_HOME"}  # the notebook's own store
    env["GOVRISK_WORK"] = str(work)
    client = nbclient.NotebookClient(
        notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute(env=env)
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert (work / "reports" / "quickstart" / "report.html").exists()
    assert len(list((work / "bentoml" / "models").iterdir())) == 2  # county-scorecard, county-tabular
    assert sorted(p.name for p in NOTEBOOK.parent.iterdir()) == beside_code  # nothing written there
