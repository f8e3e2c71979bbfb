"""Monitoring settings: `configs/monitoring/*.yaml`, strict (an unknown key or a bad value fails with
the file and the key before any data is read)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from govrisk.core.config import StrictModel, load_config


class AlertThresholds(StrictModel):
    max_score_psi: float = Field(gt=0)
    max_characteristic_psi: float = Field(gt=0)
    max_auc_drop: float = Field(ge=0, le=1)
    calibration_alpha: float = Field(gt=0, lt=1)
    max_challenger_error_rate: float = Field(ge=0, le=1)
    max_input_pd_difference: float = Field(gt=0)


class LiveConfig(StrictModel):
    governance_policy: str = Field(min_length=1)
    min_outcomes: int = Field(ge=1)
    min_defaults: int = Field(ge=2)  # the report's statistics need at least two of each outcome
    alerts: AlertThresholds


class BookConfig(StrictModel):
    term_months: int = Field(ge=1, le=600)
    pd_rise_factor: float = Field(gt=1)
    min_pd_now: float = Field(ge=0, lt=1)
    grade_drop: int = Field(ge=1)
    watch_on: Literal["champion", "challenger", "either"]
    reason_codes: int = Field(ge=0, le=20)
    score_batch: int = Field(ge=1)


class MonitoringConfig(StrictModel):
    outcome_window_months: int = Field(ge=1, le=120)
    live: LiveConfig
    book: BookConfig


def load_monitoring_config(name_or_path: str | Path = "default") -> MonitoringConfig:
    """`configs/monitoring/<name>.yaml` (or a path), validated; errors name the file and the key."""
    return load_config("monitoring", name_or_path, MonitoringConfig)
