"""The record contract: which tables and columns a dataset has, their types, ranges and categories.

A contract is a YAML file in `configs/contract/`. Nothing downstream hard-codes a table or a column:
validation, storage and feature building all read the contract, so another source is mapped in by
writing a contract for it (see `configs/contract/taiwan.yaml`).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from govrisk.core.config import StrictModel, load_config

ColumnType = Literal["string", "category", "float", "int", "bool", "date"]
# How a monthly column is summarised into aggregates (see data/features.py):
#   amount: money, log-scaled; count: small integers; good_event/bad_event: booleans whose False/True
#   marks stress; delinquency: an ordinal months-late status.
ColumnKind = Literal["amount", "count", "good_event", "bad_event", "delinquency"]

MONTH = "month"  # every monthly table is keyed by (applicant key, month); month = first day of the month


class ColumnSpec(StrictModel):
    type: ColumnType
    categories: tuple[str, ...] | None = None
    open: bool = False  # open category: values outside the list are allowed (township codes)
    min: float | None = None
    max: float | None = None
    exclusive_min: bool = False
    # Plausibility bounds of a date column (inclusive): a date outside them is a typo or a default
    # (year 1, 1900-01-01), not a fact. `not_after` names another date column of the same table that
    # this one may not follow (registration_date not after application_date).
    min_date: dt.date | None = None
    max_date: dt.date | None = None
    not_after: str | None = None
    kind: ColumnKind | None = None
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> ColumnSpec:
        if self.type != "date" and (self.min_date or self.max_date or self.not_after):
            raise ValueError(
                f"`min_date`, `max_date` or `not_after` given for a column of type {self.type!r}"
            )
        if self.min_date and self.max_date and self.min_date > self.max_date:
            raise ValueError(f"min_date {self.min_date} > max_date {self.max_date}")
        if self.type == "category" and not self.open and not self.categories:
            raise ValueError("a closed category column needs `categories`")
        if self.categories is not None and self.type != "category":
            raise ValueError(f"`categories` given for a column of type {self.type!r}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}")
        return self


class TableSpec(StrictModel):
    description: str = ""
    columns: dict[str, ColumnSpec]


class ApplicantsSpec(TableSpec):
    key: str
    application_date: str
    label: str

    @model_validator(mode="after")
    def _roles_exist(self) -> ApplicantsSpec:
        for role in ("key", "application_date", "label"):
            col = getattr(self, role)
            if col not in self.columns:
                raise ValueError(f"applicants.{role} names column {col!r}, which is not declared")
        if self.columns[self.application_date].type != "date":
            raise ValueError(f"applicants.application_date column {self.application_date!r} must be a date")
        if self.columns[self.label].type != "bool":
            raise ValueError(f"applicants.label column {self.label!r} must be a bool")
        for col, spec in self.columns.items():
            other = self.columns.get(spec.not_after) if spec.not_after else None
            if spec.not_after and (other is None or other.type != "date"):
                raise ValueError(
                    f"applicants.{col}.not_after names {spec.not_after!r}, which is not a date column"
                )
        return self


class Contract(StrictModel):
    name: str
    version: str
    description: str = ""
    applicants: ApplicantsSpec
    monthly: dict[str, TableSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _monthly_columns(self) -> Contract:
        for table, spec in self.monthly.items():
            for reserved in (self.applicants.key, MONTH):
                if reserved in spec.columns:
                    raise ValueError(f"monthly.{table} declares {reserved!r}; the key and month are implicit")
            for col, c in spec.columns.items():
                if c.type in {"string", "date"}:
                    raise ValueError(
                        f"monthly.{table}.{col}: type {c.type!r} is not allowed in a monthly table"
                    )
                if c.type in {"float", "int"} and c.kind is None:
                    raise ValueError(f"monthly.{table}.{col}: numeric monthly columns need a `kind`")
        return self

    @property
    def key(self) -> str:
        return self.applicants.key

    @property
    def tables(self) -> list[str]:
        """Every table name, applicants first."""
        return ["applicants", *self.monthly]

    def table_columns(self, table: str) -> list[str]:
        """Column names of `table` in stored order (monthly tables start with key and month)."""
        if table == "applicants":
            return list(self.applicants.columns)
        if table not in self.monthly:
            raise KeyError(f"table {table!r} is not in contract {self.name!r}; tables: {self.tables}")
        return [self.key, MONTH, *self.monthly[table].columns]


def load_contract(name_or_path: str | Path) -> Contract:
    """Load a contract by name (`county`) or path; errors name the offending key."""
    return load_config("contract", name_or_path, Contract)
