"""The Python API: what a data scientist types in a notebook.

    from govrisk import generate, validate, train, load_model, score, report

Each function calls the same library function as the matching `govrisk` command (one implementation
per job); it only takes Python objects where the command takes flags and returns objects where the
command prints. Everything generated (datasets, runs, the model store) goes to the work folder
(`$GOVRISK_WORK`, default `./runs`), exactly as with the command line.

| function        | command                      | calls                                        |
|-----------------|------------------------------|----------------------------------------------|
| `generate`      | `govrisk data generate`      | `govrisk.data.synthetic.generate`            |
| `load_dataset`  | -                            | `govrisk.data.store.read_dataset`            |
| `validate`      | `govrisk data validate`      | `govrisk.data.validate.validate_dataset`     |
| `describe`      | `govrisk data describe`      | `govrisk.data.describe.describe`             |
| `train`         | `govrisk train`              | `govrisk.training.train.train`               |
| `list_models`   | `govrisk models list`        | `govrisk.core.registry.list_models`          |
| `load_model`    | (serving's loader)           | `govrisk.serving.models.LoadedModel`         |
| `score`         | (the report's batch scoring) | `LoadedModel.predict`, the master scale      |
| `report`        | `govrisk report`             | `govrisk.research.report.build_report`       |
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from govrisk import API
from govrisk.core.config import apply_overrides, config_path, read_yaml, work_dir
from govrisk.core.config import validate as validate_config
from govrisk.core.rating import load_master_scale
from govrisk.data.store import Dataset, read_dataset

# Training, research and the ONNX loader belong to optional extras (`train`, `research`, `serve`) and
# cost seconds to import: each function imports what it needs, so `from govrisk import score` works in
# an install without torch and `import govrisk` stays instant.
if TYPE_CHECKING:
    from govrisk.data.validate import ValidationReport
    from govrisk.research.governance import GovernancePolicy
    from govrisk.serving.models import LoadedModel
    from govrisk.training.train import RunResult

__all__ = list(API)  # govrisk/__init__.py resolves these names lazily

DatasetLike = str | Path | Dataset


def _dataset_path(data: DatasetLike) -> Path:
    return data.path if isinstance(data, Dataset) else Path(data)


# --- data ---------------------------------------------------------------------------------------------


def generate(
    *,
    applicants: int = 20_000,
    seed: int = 0,
    out: str | Path | None = None,
    config: str | Path = "county",
    drift: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Generate a synthetic county with a known true PD; returns the dataset folder.

    `out` defaults to `<work>/data/<config>-<applicants>-s<seed>[-drift]`, the folder an experiment
    with `data.generate` uses for the same county. Same seed, byte-identical files. An existing
    folder is an error unless `overwrite=True`.

    >>> county = generate(applicants=3_000, seed=1)
    >>> county.name
    'county-3000-s1'
    """
    from govrisk.data.synthetic import generate as generate_county
    from govrisk.data.synthetic import load_generator_config

    if out is None:
        out = work_dir() / "data" / f"{Path(config).stem}-{applicants}-s{seed}{'-drift' if drift else ''}"
    out = Path(out)
    generate_county(
        load_generator_config(config),
        n_applicants=applicants,
        seed=seed,
        out=out,
        drift=drift,
        overwrite=overwrite,
        progress=progress,
    )
    return out


def load_dataset(path: DatasetLike, *, tables: Sequence[str] | None = None, verify: bool = False) -> Dataset:
    """Read a dataset folder: `.applicants` (a DataFrame), `.monthly` (name -> DataFrame),
    `.contract`, `.manifest`. With `verify`, its content hash must match its manifest first.

    >>> ds = load_dataset(county)
    >>> ds.applicants["default_12m"].mean()  # doctest: +SKIP
    0.061
    """
    from govrisk.data.store import verify_hash

    path = _dataset_path(path)
    if verify:
        verify_hash(path)
    return read_dataset(path, tables=list(tables) if tables is not None else None)


def validate(data: DatasetLike, *, contract: str | Path | None = None) -> ValidationReport:
    """Check a dataset against its record contract (the one in its manifest, or `contract`: a name or
    a YAML path). Returns the report: `.ok`, `.n_errors`, `.errors` (every violation, with table,
    column, check, applicant and value), `.summary`.

    >>> result = validate(county)
    >>> result.ok
    True
    >>> pd.DataFrame(result.errors)  # one row per violation  # doctest: +SKIP
    """
    from govrisk.data.validate import validate_dataset

    return validate_dataset(_dataset_path(data), contract=contract)


def describe(data: DatasetLike, *, seed: int = 0) -> dict[str, Any]:
    """Row counts, default rates by segment and vintage, the oracle AUC (the true PD's) and a
    plain-aggregate logistic baseline AUC: what `govrisk data describe --json` prints.

    >>> facts = describe(county)
    >>> facts["rows"]["applicants"]
    3000
    """
    from govrisk.data.describe import describe as describe_dataset

    return describe_dataset(_dataset_path(data), seed=seed)


# --- training -----------------------------------------------------------------------------------------


def _override_list(
    overrides: Sequence[str] | Mapping[str, Any] | None, keywords: Mapping[str, Any]
) -> list[str]:
    """`key=value` strings from a list (as the CLI takes them), a mapping of dotted keys, and keyword
    arguments whose `__` stands for a dot. Values of a mapping or keyword are written as JSON, which
    YAML reads back unchanged."""
    if isinstance(overrides, str):
        raise TypeError(f"overrides must be a list of 'key=value' strings or a mapping, got {overrides!r}")
    if isinstance(overrides, Mapping):
        items = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    else:
        items = list(overrides or [])
    return items + [f"{k.replace('__', '.')}={json.dumps(v)}" for k, v in keywords.items()]


def train(
    config: str | Path | Mapping[str, Any],
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    *,
    dataset: DatasetLike | None = None,
    **keywords: Any,
) -> RunResult:
    """Train one model from an experiment, export it to ONNX (parity checked), evaluate it on every
    split and register it: `govrisk train`. Returns the run result: `.run_dir`, `.tag` (the registry
    tag, None when `register_model` is false), `.metrics` (`train/auroc`, `oot/ks`, ...),
    `.onnx_parity`.

    `config` is an experiment name (`configs/experiment/<name>.yaml` on the search path), a YAML path
    or an experiment dict. Overrides are checked before any training, as on the command line:
    `overrides=["model.params.trainer.max_epochs=2"]`, or a mapping of dotted keys, or keywords with
    `__` for the dot (`model__params__trainer__max_epochs=2`). `dataset` trains on an existing
    dataset folder instead of the experiment's own data source.

    >>> run = train("county_scorecard", dataset=county)
    >>> run.tag  # doctest: +SKIP
    'county-scorecard:5x3kq2...'
    >>> run = train("county_tabular", dataset=county, overrides=["model.params.trainer.max_epochs=2"])
    """
    from govrisk.training.config import experiment_from_dict, load_experiment
    from govrisk.training.train import train as train_experiment

    items = _override_list(overrides, keywords)
    if dataset is not None:  # one data source: the given folder replaces generate / import_taiwan
        source = json.dumps(str(_dataset_path(dataset)))
        items = [f"data.dataset={source}", "data.generate=null", "data.import_taiwan=null", *items]
    if isinstance(config, Mapping):
        raw = apply_overrides(json.loads(json.dumps(config)), items)  # a deep copy: the caller's dict stays
        cfg, params = experiment_from_dict(raw)
    else:
        cfg, params = load_experiment(config, items)
    return train_experiment(cfg, params)


# --- models -------------------------------------------------------------------------------------------


def list_models() -> pd.DataFrame:
    """Registered models, newest first: tag, name, version, kind, created, the key metrics as columns
    (`val/auroc`, `oot/auroc`, `oot/ks`, `oot/brier`), data hash and store path (`govrisk models list`).

    >>> list_models()[["tag", "kind", "oot/auroc"]]  # doctest: +SKIP
    """
    from govrisk.core.registry import KEY_METRICS
    from govrisk.core.registry import list_models as registered

    rows = [{k: v for k, v in r.items() if k != "metrics"} | r["metrics"] for r in registered()]
    columns = ["tag", "name", "version", "kind", "created", *KEY_METRICS, "data_hash", "path"]
    return pd.DataFrame(rows, columns=columns)


def _is_run(obj: object) -> bool:
    return hasattr(obj, "run_dir") and hasattr(obj, "tag") and hasattr(obj, "metrics")


def load_model(model: str | Path | RunResult, *, threads: int = 0) -> LoadedModel:
    """A model as serving runs it: its ONNX session (the file's sha256 checked against the one
    recorded at registration or export) and the feature schema it was trained with.

    `model`: a registry tag (`county-scorecard:latest`, or `name:version`), a run folder, or what
    `train` returned. `threads`: onnxruntime intra-op threads, 0 = every core (batch scoring).
    The result has `.tag`, `.kind`, `.builder` (the fitted feature builder), `.predict(features)`.

    >>> model = load_model("county-scorecard:latest")
    >>> model.kind
    'scorecard'
    """
    from govrisk.serving.models import LoadedModel

    if _is_run(model):
        run: Any = model
        return (
            LoadedModel(tag=run.tag, threads=threads)
            if run.tag
            else LoadedModel(folder=run.run_dir, threads=threads)
        )
    if isinstance(model, Path) or Path(str(model)).is_dir():
        return LoadedModel(folder=Path(model), threads=threads)
    return LoadedModel(tag=str(model), threads=threads)


def _reason_count(model: LoadedModel) -> int:
    """How many reason codes the scorecard was trained to give (its reason_codes.json)."""
    path = model.folder / "reason_codes.json"
    return int(json.loads(path.read_text()).get("k", 4)) if path.exists() else 0


def score(
    model: LoadedModel | str | Path | RunResult,
    data: DatasetLike | pd.DataFrame,
    monthly: Mapping[str, pd.DataFrame] | None = None,
    *,
    reasons: int | None = None,
    batch_size: int = 20_000,
) -> pd.DataFrame:
    """Score applicants: one row per applicant, in input order, with the applicant key, `pd` (the
    12-month PD), `grade` (the master scale, configs/rating/master_scale.yaml) and, for a scorecard,
    `score` (points) and `reason_codes` (the characteristics that cost most points, worst first).

    `data`: a dataset (folder or `load_dataset` result), or an applicants DataFrame with `monthly`
    (table name -> DataFrame) in the contract's columns. `model`: anything `load_model` takes, or a
    loaded model. `reasons`: reason codes per applicant, default as many as the scorecard was trained
    to give. The PDs are those of `govrisk report` and the server: the same features (the model's
    own schema), the same ONNX graph.

    >>> scores = score(model, county)
    >>> scores.head()  # doctest: +SKIP
      applicant_id        pd grade  score                        reason_codes
    """
    from govrisk.serving.models import LoadedModel

    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    if isinstance(data, pd.DataFrame):
        if monthly is None:
            raise ValueError(
                "an applicants DataFrame needs its monthly tables: score(model, applicants, monthly)"
            )
        applicants, tables = data, dict(monthly)
    else:
        if monthly is not None:
            raise ValueError("monthly goes with an applicants DataFrame, not with a dataset")
        ds = data if isinstance(data, Dataset) else read_dataset(Path(data))
        applicants, tables = ds.applicants, ds.monthly
    fs = loaded.builder.transform(applicants, tables)
    out = loaded.predict(fs, batch_size=batch_size)
    key = loaded.builder.contract.key
    frame = pd.DataFrame({key: applicants[key].to_numpy(), "pd": out.pd})
    frame["grade"] = load_master_scale().grade(out.pd)
    if out.score is not None:
        frame["score"] = out.score
    if loaded.reason_table is not None and out.points is not None:
        frame["reason_codes"] = loaded.reasons(out, _reason_count(loaded) if reasons is None else reasons)
    return frame


# --- governance ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GovernanceReport:
    """The champion-challenger report: every figure (`figures`, the dict `report.json` holds) and,
    when written, its files."""

    figures: dict[str, Any] = field(repr=False)
    html_path: Path | None = None
    json_path: Path | None = None

    @property
    def recommendation(self) -> dict[str, Any]:
        """`decision` (promote | hold), `summary` and every `checks` row against the policy."""
        return self.figures["recommendation"]

    @property
    def decision(self) -> str:
        return self.figures["recommendation"]["decision"]

    def checks(self) -> pd.DataFrame:
        """The policy's checks, one row each: check, passed, value, threshold, detail."""
        return pd.DataFrame(self.recommendation["checks"])

    def auc(self) -> pd.DataFrame:
        """AUC of both models on the evaluation rows, with their bootstrap intervals."""
        d = self.figures["discrimination"]
        return pd.DataFrame({role: d[role]["auc"] for role in ("champion", "challenger")}).T

    def _repr_html_(self) -> str:  # Jupyter shows the decision and the checks
        where = f"<p>{self.html_path}</p>" if self.html_path else ""
        head = f"<p><b>{self.decision.upper()}</b>: {self.recommendation['summary']}</p>"
        return head + self.checks().to_html(index=False) + where


def _model_ref(model: object) -> str:
    """What `govrisk report` takes: a registry tag or a run / model folder."""
    if _is_run(model):
        run: Any = model
        return run.tag or str(run.run_dir)
    folder = getattr(model, "folder", None)
    if folder is not None:  # a loaded model: its registry tag when it came from the store
        from govrisk.core.registry import model_path

        try:
            if model_path(model.tag, verify=False)[0] == folder:  # type: ignore[attr-defined]
                return str(model.tag)  # type: ignore[attr-defined]
        except KeyError:
            pass
        return str(folder)
    return str(model)


def _governance_policy(
    policy: str | Path | GovernancePolicy, overrides: Sequence[str] | None
) -> GovernancePolicy:
    from govrisk.research.governance import GovernancePolicy, load_governance_policy

    if isinstance(policy, GovernancePolicy):
        if overrides:
            raise ValueError("policy_overrides go with a policy name or path, not a GovernancePolicy")
        return policy
    if not overrides:
        return load_governance_policy(policy)
    path = config_path("governance", policy)
    raw = apply_overrides(read_yaml(path), list(overrides))
    return validate_config(GovernancePolicy, raw, what=f"governance config {path} with {list(overrides)}")


def report(
    champion: str | Path | RunResult | LoadedModel,
    challenger: str | Path | RunResult | LoadedModel,
    *,
    out: str | Path | None = None,
    data: DatasetLike | None = None,
    policy: str | Path | GovernancePolicy = "default",
    policy_overrides: Sequence[str] | None = None,
) -> GovernanceReport:
    """The champion-challenger governance report, built as `govrisk report` builds it: both models
    scored on the same applicants (the challenger's out-of-time rows, or all of `data`), with
    discrimination, calibration, grades, stability, segments and the promote / hold recommendation.

    `out`: a folder for `report.html` (self-contained) and `report.json`; nothing is written without
    it. `policy`: a governance config name or path (`configs/governance/`), with optional `key=value`
    `policy_overrides` (e.g. `["bootstrap.n_boot=100"]`), or a GovernancePolicy.

    >>> rep = report("county-scorecard:latest", run, out="reports/county")
    >>> rep.decision, rep.figures["discrimination"]["delong"]["p_value"]  # doctest: +SKIP
    ('hold', 0.41)
    """
    from govrisk.research.report import build_report, write_report

    pol = _governance_policy(policy, policy_overrides)
    policy_name = "custom" if not isinstance(policy, str | Path) else str(policy)
    data_path = None if data is None else _dataset_path(data)
    if data_path is not None and not (data_path / "manifest.json").exists():
        raise FileNotFoundError(f"data {data_path}: not a dataset folder (no manifest.json)")
    figures = build_report(
        _model_ref(champion), _model_ref(challenger), data=data_path, policy=pol, policy_name=policy_name
    )
    if out is None:
        return GovernanceReport(figures)
    json_path, html_path = write_report(figures, Path(out))
    return GovernanceReport(figures, html_path=html_path, json_path=json_path)
