"""Datasets on disk: one folder, one Parquet file per contract table, and a manifest.

The manifest records the contract (in full, so a dataset describes itself), row counts and a content
hash over the Parquet bytes. Writers produce byte-identical files for identical input, so the hash
is also the dataset's identity in model lineage.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from govrisk.core.errors import DatasetChanged
from govrisk.data.contract import MONTH, ColumnSpec, Contract

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_ARROW_TYPES = {
    "string": pa.string(),
    "category": pa.string(),
    "float": pa.float64(),
    "int": pa.int64(),
    "bool": pa.bool_(),
    "date": pa.date32(),
}


def arrow_schema(contract: Contract, table: str) -> pa.Schema:
    """The Arrow schema a table is stored with, derived from the contract."""
    if table == "applicants":
        cols: dict[str, ColumnSpec] = dict(contract.applicants.columns)
        return pa.schema([pa.field(n, _ARROW_TYPES[c.type]) for n, c in cols.items()])
    spec = contract.monthly[table]
    fields = [pa.field(contract.key, pa.string()), pa.field(MONTH, pa.date32())]
    fields += [pa.field(n, _ARROW_TYPES[c.type]) for n, c in spec.columns.items()]
    return pa.schema(fields)


def _to_arrow(df: pd.DataFrame | pa.Table, schema: pa.Schema, table: str) -> pa.Table:
    names = df.column_names if isinstance(df, pa.Table) else list(df.columns)
    missing = [f.name for f in schema if f.name not in names]
    if missing:
        raise ValueError(f"table {table!r} is missing columns {missing}")
    arrays = []
    for field in schema:
        column = df[field.name]
        try:
            if isinstance(column, pa.ChunkedArray):
                arrays.append(column.cast(field.type))
            else:
                arrays.append(pa.array(column, type=field.type, from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError) as e:
            raise ValueError(
                f"table {table!r} column {field.name!r}: cannot store {column.type if isinstance(column, pa.ChunkedArray) else column.dtype} "
                f"as {field.type}: {e}"
            ) from None
    return pa.Table.from_arrays(arrays, schema=schema)


def _hash_files(folder: Path, names: list[str]) -> str:
    return _digests(folder, names)[0]


def _digests(folder: Path, names: list[str]) -> tuple[str, dict[str, str]]:
    """The content hash over the files (name and bytes, in name order) and each file's own sha256,
    in one read of the bytes."""
    h = hashlib.sha256()
    each = {}
    for name in sorted(names):
        h.update(name.encode())
        own = hashlib.sha256()
        with open(folder / name, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
                own.update(chunk)
        each[name] = own.hexdigest()
    return h.hexdigest(), each


class DatasetWriter:
    """Writes a dataset folder table by table, in chunks; the folder appears only when complete.

    Chunks go to a temporary sibling folder that is renamed into place by `close()`, so a crash or
    a bad chunk never leaves a half-written dataset where a good one stood.
    """

    def __init__(
        self,
        out: Path,
        *,
        contract: Contract,
        extra_tables: dict[str, pa.Schema] | None = None,
        overwrite: bool = False,
    ) -> None:
        self.out = Path(out)
        if self.out.exists() and not overwrite:
            raise FileExistsError(
                f"dataset folder already exists: {self.out}; pass --overwrite (overwrite=True in Python) "
                "to replace it"
            )
        self.contract = contract
        self.schemas = {t: arrow_schema(contract, t) for t in contract.tables}
        self.schemas.update(extra_tables or {})
        self.overwrite = overwrite
        # One partial folder per process: concurrent writers (DDP ranks, tuning workers) never mix.
        self.tmp = self.out.with_name(f".{self.out.name}.partial-{os.getpid()}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._rows: dict[str, int] = {}

    def write(self, table: str, df: pd.DataFrame | pa.Table) -> None:
        if table not in self.schemas:
            raise KeyError(f"unknown table {table!r}; this dataset has {list(self.schemas)}")
        arrow = _to_arrow(df, self.schemas[table], table)
        if table not in self._writers:
            self._writers[table] = pq.ParquetWriter(
                self.tmp / f"{table}.parquet", self.schemas[table], compression="zstd"
            )
        self._writers[table].write_table(arrow, row_group_size=1 << 20)
        self._rows[table] = self._rows.get(table, 0) + len(df)

    def close(self, *, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Finish every file, write the manifest, move the folder into place; returns the manifest."""
        for table, schema in self.schemas.items():
            if table not in self._writers and table in self.contract.tables:
                self.write(table, schema.empty_table().to_pandas())
        for w in self._writers.values():
            w.close()
        files = [f"{t}.parquet" for t in self._writers]
        content_hash, digests = _digests(self.tmp, files)
        manifest = {
            "format_version": FORMAT_VERSION,
            "contract": {"name": self.contract.name, "version": self.contract.version},
            "contract_spec": self.contract.model_dump(mode="json"),
            "tables": {
                t: {"file": f"{t}.parquet", "rows": self._rows[t], "sha256": digests[f"{t}.parquet"]}
                for t in self._writers
            },
            "content_hash": content_hash,
            "meta": meta or {},
        }
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if self.out.exists():
            if not self.overwrite:  # another writer finished the same folder while this one ran
                shutil.rmtree(self.tmp)
                raise FileExistsError(f"dataset folder appeared while writing: {self.out}")
            shutil.rmtree(self.out)
        self.tmp.rename(self.out)
        return manifest

    def abort(self) -> None:
        for w in self._writers.values():
            w.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


@dataclass
class Dataset:
    path: Path
    manifest: dict[str, Any]
    contract: Contract
    tables: dict[str, pd.DataFrame]

    @property
    def applicants(self) -> pd.DataFrame:
        return self.tables["applicants"]

    @property
    def monthly(self) -> dict[str, pd.DataFrame]:
        return {t: self.tables[t] for t in self.contract.monthly if t in self.tables}


def read_manifest(path: Path) -> dict[str, Any]:
    mf = Path(path) / MANIFEST
    if not mf.exists():
        raise FileNotFoundError(f"not a govrisk dataset (no {MANIFEST}): {path}")
    return json.loads(mf.read_text())


def read_table(path: Path, table: str, columns: list[str] | None = None) -> pd.DataFrame:
    """One table as pandas; dates become datetime64 (fast month arithmetic), strings stay strings."""
    file = Path(path) / f"{table}.parquet"
    if not file.exists():
        raise FileNotFoundError(f"dataset {path} has no table {table!r} ({file.name} missing)")
    return pq.read_table(file, columns=columns).to_pandas(date_as_object=False)


def read_dataset(path: Path, *, tables: list[str] | None = None) -> Dataset:
    """Read a dataset folder written by `DatasetWriter` (or by hand, with a manifest)."""
    path = Path(path)
    manifest = read_manifest(path)
    contract = Contract.model_validate(manifest["contract_spec"])
    wanted = tables or [t for t in contract.tables if t in manifest["tables"]]
    return Dataset(path, manifest, contract, {t: read_table(path, t) for t in wanted})


def changed_files(path: Path, manifest: dict[str, Any] | None = None) -> tuple[str, list[str]]:
    """The recomputed content hash and the table files whose bytes no longer match the manifest
    (empty when the content hash matches). A missing file counts as changed. Manifests written
    before per-file digests name every file when the content hash differs: any of them may be it."""
    path = Path(path)
    manifest = manifest if manifest is not None else read_manifest(path)
    tables = list(manifest["tables"].values())
    missing = [m["file"] for m in tables if not (path / m["file"]).is_file()]
    actual, digests = _digests(path, [m["file"] for m in tables if m["file"] not in missing])
    if not missing and actual == manifest["content_hash"]:
        return actual, []
    named = [m["file"] for m in tables if m.get("sha256") and m["sha256"] != digests.get(m["file"])]
    if not named and not missing:  # a manifest without per-file digests: any of the files may be it
        named = [m["file"] for m in tables]
    return ("" if missing else actual), sorted(set(named) | set(missing))


def verify_hash(path: Path) -> str:
    """Recompute the content hash and compare it with the manifest's; returns the hash.

    Raises `DatasetChanged` (a ValueError) naming the table files that changed or are missing."""
    actual, changed = changed_files(path)
    missing = [f for f in changed if not (Path(path) / f).is_file()]
    if missing:
        raise DatasetChanged(
            f"dataset {path}: {', '.join(missing)} missing (listed in its manifest.json); regenerate or re-import it"
        )
    if changed:
        raise DatasetChanged(
            f"dataset {path}: {', '.join(changed)} no longer match{'es' if len(changed) == 1 else ''} "
            "the content hash in its manifest.json (changed after it was written); regenerate or re-import it"
        )
    return actual
