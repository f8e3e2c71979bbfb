"""The feature schema: everything needed to reproduce a fitted `FeatureBuilder.transform`.

Training writes it as `feature_schema.json` beside every model (`FeatureBuilder.save`); serving,
the governance report and monitoring read it back (`FeatureBuilder.from_schema`, `FeatureSchema.load`).

It lives in the core because every layer reads it, and the core imports no other layer: the feature
config and the record contract are kept here as their JSON dicts, and `govrisk.data.features`
validates them into `FeatureConfig` and `Contract` when it rebuilds a builder. The fitted statistics
are the builder's own dict, in the order the features are laid out.

Strict (an unknown key is an error, like every config model): a schema is written by govrisk only and
carries its `schema_version`, so every file of this version has exactly these keys, and a key this
code does not know would be part of a transform it cannot reproduce, which serving must refuse rather
than ignore. A change of format is a new version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import field_validator

from govrisk.core.config import StrictModel

FEATURE_SCHEMA_VERSION = 1


class FeatureSchema(StrictModel):
    """A fitted feature builder, as `feature_schema.json` holds it (field order is the file's key order)."""

    schema_version: int
    config: dict[str, Any]  # a FeatureConfig, as JSON
    contract: dict[str, Any]  # the record contract (a data.contract.Contract), as JSON
    fitted: dict[str, Any]  # fitted statistics (clips, medians, moments, vocabularies, feature lists)
    sequence_channels: list[str]  # the sequence input's channels, in order
    static_features: list[str]  # the static input's columns, in order
    raw_features: list[str]  # the raw characteristics (the scorecard's input), in order
    categorical_raw: list[str]  # raw characteristics that hold category codes, sorted

    @field_validator("schema_version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != FEATURE_SCHEMA_VERSION:
            raise ValueError(f"feature schema version {v!r} != {FEATURE_SCHEMA_VERSION}")
        return v

    @classmethod
    def load(cls, path: str | Path) -> FeatureSchema:
        """Read a `feature_schema.json`."""
        return cls.from_json(Path(path).read_text())

    @classmethod
    def from_json(cls, text: str | bytes) -> FeatureSchema:
        # json.loads, not pydantic's JSON parser: the file is json.dumps's (NaN included), read as written
        return cls.model_validate(json.loads(text))

    def to_json(self) -> str:
        """The file's text: keys in field order, feature lists in feature order (never sorted)."""
        return json.dumps(self.model_dump(), indent=1) + "\n"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json())
        return path
