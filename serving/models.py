"""Registered models as onnxruntime sessions, with the feature schema that travelled with each.

A registered model is read once, through `govrisk.core.registry.load_verified`: every file's bytes
are checked against the model's HMAC-signed manifest, and only those bytes are used (the ONNX bytes
go to `govrisk.core.onnx.OnnxGraph`, which re-hashes them against the manifest's digest; the schema and
reason-code JSON is parsed from the checked text). Nothing here imports
torch, Lightning, optbinning or onnx: serving is onnxruntime plus the shared FeatureBuilder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from govrisk.core.hashing import sha256_bytes
from govrisk.core.onnx import OnnxGraph
from govrisk.core.reasons import reasons_from_points
from govrisk.core.registry import load_verified, model_path
from govrisk.data.features import FeatureBuilder, FeatureSet


@dataclass
class ModelOutput:
    pd: np.ndarray  # [N] float64
    score: np.ndarray | None = None  # [N] scorecard points total
    points: np.ndarray | None = None  # [N, K] per-characteristic points


class LoadedModel:
    """One registered model: its session, input names and feature schema."""

    def __init__(self, *, tag: str | None = None, folder: Path | None = None, threads: int = 1) -> None:
        """From the model store by `tag`, or from a run folder (`folder`: its metrics.json holds the
        sha256 recorded at export). `threads`: intra-op threads per session, 0 = onnxruntime's default
        (every core: batch rescoring, not serving)."""
        if (tag is None) == (folder is None):
            raise ValueError(f"give exactly one of tag and folder, got {tag=} {folder=}")
        if tag is not None:
            # Every file checked against the signed manifest; these bytes are all that is used below.
            folder, meta, manifest, files = load_verified(tag)
            expected = manifest["files"]["model.onnx"]
        else:
            assert folder is not None
            meta = {"kind": yaml.safe_load((folder / "config.yaml").read_text())["model"]["kind"]}
            expected = json.loads((folder / "metrics.json").read_text())["onnx"]["sha256"]
            files = {
                f: (folder / f).read_bytes()
                for f in ("model.onnx", "feature_schema.json", "reason_codes.json")
                if (folder / f).exists()
            }
        self.graph = OnnxGraph(
            files["model.onnx"], threads=threads, expected_sha256=expected, name=tag or str(folder)
        )
        self.folder = folder
        self.name = folder.parent.name
        self.version = folder.name
        self.tag = f"{self.name}:{self.version}"  # resolved: never 'latest' in a decision record
        self.kind: str = meta["kind"]
        self.sha256 = self.graph.sha256
        self.inputs: list[str] = self.graph.inputs
        schema_text = files["feature_schema.json"].decode()
        # Two models with the same schema share one transform per request (see Scorer).
        self.schema_digest = sha256_bytes(schema_text.encode())
        self.builder = FeatureBuilder.from_schema(json.loads(schema_text))
        self.outputs = self.graph.outputs
        self.reason_table: list[dict[str, Any]] | None = None
        if "reason_codes.json" in files:
            self.reason_table = json.loads(files["reason_codes.json"])["characteristics"]

    def predict(self, fs: FeatureSet, *, batch_size: int | None = None) -> ModelOutput:
        """PDs (and a scorecard's score and points) of every row; `batch_size` rows per onnxruntime
        call (cache-sized batches score a large book fastest; it never changes a value)."""
        wanted = [o for o in ("pd", "score", "points") if o in self.outputs]
        got = self.graph.run(fs.model_inputs(self.inputs), wanted, batch_size=batch_size)
        return ModelOutput(
            pd=np.asarray(got["pd"], dtype=np.float64).reshape(-1),
            score=None if "score" not in got else np.asarray(got["score"], dtype=np.float64).reshape(-1),
            points=got.get("points"),
        )

    def reasons(self, out: ModelOutput, k: int) -> list[list[str]]:
        """Top-k reason codes per applicant; empty for a model without scorecard points."""
        if self.reason_table is None or out.points is None or k == 0:
            return [[] for _ in range(len(out.pd))]
        return reasons_from_points(out.points, self.reason_table, k)

    def describe(self) -> dict[str, Any]:
        return {"tag": self.tag, "kind": self.kind, "sha256": self.sha256, "inputs": self.inputs}


def schema_file(tag: str) -> Path:
    """The feature schema of a registered model (for clients that build example requests)."""
    folder, _ = model_path(tag, verify=False)
    return folder / "feature_schema.json"
