"""The master scale: 12-month PD -> rating grade, one definition for serving, reports and monitoring."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from pydantic import Field, model_validator

from govrisk.core.config import StrictModel, load_config


class Grade(StrictModel):
    grade: str
    max_pd: float = Field(gt=0, le=1)


class MasterScale(StrictModel):
    name: str
    version: str
    grades: list[Grade] = Field(min_length=2)

    @model_validator(mode="after")
    def _ordered(self) -> MasterScale:
        bounds = [g.max_pd for g in self.grades]
        if any(b <= a for a, b in itertools.pairwise(bounds)) or bounds[-1] != 1.0:
            raise ValueError(f"grades.max_pd must increase strictly and end at 1.0, got {bounds}")
        if len({g.grade for g in self.grades}) != len(self.grades):
            raise ValueError(f"grades.grade must be unique, got {[g.grade for g in self.grades]}")
        return self

    @property
    def names(self) -> list[str]:
        return [g.grade for g in self.grades]

    def index(self, pd_: np.ndarray | float) -> np.ndarray:
        """Grade position (0 = best) of each PD; a PD equal to a bound falls in the next grade."""
        bounds = np.array([g.max_pd for g in self.grades[:-1]])
        return np.searchsorted(bounds, np.asarray(pd_, dtype=np.float64), side="right")

    def grade(self, pd_: np.ndarray | float) -> np.ndarray | str:
        """Grade name of each PD (a str for a scalar PD)."""
        return np.array(self.names, dtype=object)[self.index(pd_)]


def load_master_scale(name_or_path: str | Path = "master_scale") -> MasterScale:
    """Load `configs/rating/<name>.yaml` (or a path); errors name the offending key."""
    return load_config("rating", name_or_path, MasterScale)
