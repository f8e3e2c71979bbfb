"""Experiment configs: one YAML per run in `configs/experiment/`, `key=value` overrides, strict checks.

An experiment names its data, its split and its model. The model section's `params` are merged over
the model defaults in `configs/model/<kind>.yaml` and validated by the model's own pydantic config,
so an unknown key, a wrong type or an impossible value fails before any training, naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from govrisk.core.config import StrictModel, apply_overrides, config_path, format_errors, read_yaml

ModelKind = Literal["scorecard", "cnn", "tabular"]


class GenerateSpec(StrictModel):
    config: str = "county"
    applicants: int = Field(ge=500, le=5_000_000)
    seed: int = Field(ge=0)
    drift: bool = False


class DataSpec(StrictModel):
    dataset: str | None = None  # an existing dataset folder
    generate: GenerateSpec | None = None  # or a synthetic county, generated once into the work folder
    import_taiwan: str | None = None  # or the Taiwan CSV, imported once into the work folder
    features: str  # configs/features/<name>.yaml

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        given = [k for k in ("dataset", "generate", "import_taiwan") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"data: give exactly one of dataset, generate, import_taiwan (got {given or 'none'})"
            )
        return self


class SplitSpec(StrictModel):
    kind: Literal["vintage", "stratified"]
    # vintage: train before val_start, validation until oot_start, out-of-time from oot_start on
    val_start: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}$")
    oot_start: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}$")
    # stratified (data without vintages): a seeded stratified holdout, or fold k of n for CV
    val_share: float = Field(default=0.15, gt=0, lt=0.5)
    oot_share: float = Field(default=0.2, gt=0, lt=0.5)
    folds: int | None = Field(default=None, ge=2, le=20)
    fold: int | None = Field(default=None, ge=0)
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _complete(self) -> SplitSpec:
        if self.kind == "vintage":
            if not (self.val_start and self.oot_start):
                raise ValueError("split: a vintage split needs val_start and oot_start")
            if self.val_start >= self.oot_start:
                raise ValueError(f"split: val_start {self.val_start} must precede oot_start {self.oot_start}")
        if (self.folds is None) != (self.fold is None):
            raise ValueError("split: give folds and fold together")
        if self.folds is not None and self.fold is not None and self.fold >= self.folds:
            raise ValueError(f"split: fold {self.fold} must be < folds {self.folds}")
        return self


class ModelSpec(StrictModel):
    kind: ModelKind
    params: dict[str, Any] = Field(default_factory=dict)  # overrides of configs/model/<kind>.yaml


class ExperimentConfig(StrictModel):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    seed: int = Field(ge=0)
    data: DataSpec
    split: SplitSpec
    model: ModelSpec
    register_model: bool = True  # put the model in the registry (tuning trials do not)
    parity_rows: int = Field(default=10_000, ge=100)
    parity_atol: float = Field(default=1e-5, gt=0, le=1e-3)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def model_params_class(kind: str) -> type[BaseModel]:
    """The pydantic config of a model kind (imported lazily: the scorecard needs no torch)."""
    if kind == "scorecard":
        from govrisk.training.scorecard import ScorecardConfig

        return ScorecardConfig
    from govrisk.training.lightning import CnnConfig, TabularConfig

    return {"cnn": CnnConfig, "tabular": TabularConfig}[kind]


def resolve_model_params(kind: str, overrides: dict[str, Any]) -> BaseModel:
    """configs/model/<kind>.yaml merged with `overrides`, validated by the kind's config."""
    defaults = read_yaml(config_path("model", kind))
    try:
        return model_params_class(kind).model_validate(_merge(defaults, overrides))
    except ValidationError as e:
        raise ValueError(f"invalid model.params for {kind}:\n{format_errors(e, 'model.params')}") from None


def load_experiment(
    name_or_path: str | Path, overrides: list[str] | None = None
) -> tuple[ExperimentConfig, BaseModel]:
    """Load and validate an experiment and its model params; nothing is trained or read yet."""
    path = config_path("experiment", name_or_path)
    raw = apply_overrides(read_yaml(path), overrides or [])
    return experiment_from_dict(raw, source=str(path))


def experiment_from_dict(
    raw: dict[str, Any], *, source: str = "<dict>"
) -> tuple[ExperimentConfig, BaseModel]:
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ValueError(f"invalid experiment config {source}:\n{format_errors(e)}") from None
    params = dict(cfg.model.params)
    if cfg.model.kind != "scorecard":
        # One seed per experiment: it drives the net's initialisation, shuffling and dropout too.
        params["trainer"] = {**params.get("trainer", {}), "seed": cfg.seed}
    return cfg, resolve_model_params(cfg.model.kind, params)


def resolved_dict(cfg: ExperimentConfig, params: BaseModel) -> dict[str, Any]:
    """The fully resolved config: what a run folder records and `govrisk train` can consume again."""
    out = cfg.model_dump(mode="json")
    out["model"]["params"] = params.model_dump(mode="json")
    return out
