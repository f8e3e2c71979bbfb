"""ONNX graphs scored with onnxruntime: the one implementation behind export checks, evaluation,
serving, reports and monitoring. No torch here, so the scoring image never carries it.

`OnnxGraph` re-hashes the exact bytes handed to onnxruntime and compares them with the expected
sha256, so a file swapped after a check cannot be scored. `compare` is the parity check every
exporter runs against its reference implementation before a graph is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from govrisk.core.hashing import sha256_bytes
from govrisk.core.registry import TamperedModelError


class OnnxParityError(RuntimeError):
    """An exported graph and its reference implementation disagree by more than the tolerance."""


class OnnxGraph:
    """One ONNX graph in an onnxruntime session, with its input and output names."""

    def __init__(
        self,
        model: bytes | str | Path,
        *,
        threads: int = 1,
        expected_sha256: str | None = None,
        name: str | None = None,
    ) -> None:
        """`model`: the serialised graph or its path. `threads`: intra-op threads, 0 = onnxruntime's
        default (every core: batch rescoring, not serving). `expected_sha256`: refuse other bytes."""
        data = model if isinstance(model, bytes) else Path(model).read_bytes()
        self.name = name or (str(model) if not isinstance(model, bytes) else "<bytes>")
        self.sha256 = sha256_bytes(data)
        if expected_sha256 is not None and self.sha256 != expected_sha256:
            raise TamperedModelError(
                f"{self.name}: model.onnx sha256 {self.sha256} != registered {expected_sha256}; refusing to load it"
            )
        opts = ort.SessionOptions()
        # One applicant is a few hundred multiply-adds: extra threads only add hand-offs, and a
        # server's cores are better spent on concurrent requests.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(
        self,
        feeds: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        *,
        batch_size: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Named outputs (default: all) for `feeds`, `batch_size` rows per onnxruntime call
        (cache-sized batches score a large book fastest; it never changes a value)."""
        missing = [k for k in self.inputs if k not in feeds]
        if missing:
            raise ValueError(f"{self.name}: feeds lack inputs {missing}; got {sorted(feeds)}")
        wanted = list(outputs or self.outputs)
        unknown = [o for o in wanted if o not in self.outputs]
        if unknown:
            raise ValueError(f"{self.name}: no outputs {unknown}; the graph has {self.outputs}")
        arrays = {k: feeds[k] for k in self.inputs}
        n = len(next(iter(arrays.values())))
        step = batch_size or max(n, 1)
        parts = [
            self.session.run(wanted, {k: x[i : i + step] for k, x in arrays.items()})
            for i in range(0, n, step)
        ] or [self.session.run(wanted, arrays)]
        return {name: np.concatenate([p[j] for p in parts]) for j, name in enumerate(wanted)}


def compare(got: np.ndarray, want: np.ndarray, *, atol: float, what: str) -> float:
    """max |got - want| over all rows; OnnxParityError naming the worst row and the count beyond
    `atol` (a NaN or infinity on either side is a failure, never a pass)."""
    got = np.asarray(got, dtype=np.float64).reshape(len(want), -1)
    want = np.asarray(want, dtype=np.float64).reshape(len(want), -1)
    if got.shape != want.shape:
        raise OnnxParityError(
            f"{what}: onnx shape {got.shape} vs reference {want.shape} (batch dim not dynamic?)"
        )
    diff = np.abs(got - want).max(axis=1, initial=0.0)
    diff = np.where(np.isfinite(diff), diff, np.inf)
    worst = int(np.argmax(diff)) if len(diff) else 0
    if len(diff) and diff[worst] > atol:
        raise OnnxParityError(
            f"{what}: ONNX vs reference max |Δ| = {diff[worst]:.3g} > atol={atol:g} at row {worst} "
            f"(onnx {got[worst].tolist()} vs reference {want[worst].tolist()}); "
            f"{int((diff > atol).sum())} of {len(diff)} rows differ"
        )
    return float(diff.max(initial=0.0))
