"""ONNX export of a calibrated net, checked against PyTorch on real rows before anyone can ship it.

The graph takes the net's inputs by name ("sequence" [N, T, C], "static" [N, F], float32) with a
dynamic batch dimension and returns `pd` [N], the calibrated probability. Serving needs only
onnxruntime and the feature schema.

Exporter: the TorchScript exporter (`dynamo=False`) first: it is still in torch 2.13, gives a small
plain graph and handles `dynamic_axes` directly. If it is missing or fails, the dynamo exporter
(`dynamo=True` with `dynamic_shapes`) is the fallback. Either way the written file is verified with
onnxruntime, at batch sizes 1 and `len(check_inputs)`, before the function returns.
"""

from __future__ import annotations

import inspect
import io
import warnings
from collections.abc import Sequence
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from govrisk.core.hashing import sha256_file
from govrisk.core.onnx import OnnxGraph, OnnxParityError, compare

OUTPUT = "pd"
MIN_OPSET = 17
MAX_CHECK_ROWS = 10_000


def _torchscript_export(module: nn.Module, args: tuple, path: Path, names: list[str], opset: int) -> None:
    torch.onnx.export(
        module,
        args,
        str(path),
        dynamo=False,
        input_names=names,
        output_names=[OUTPUT],
        opset_version=opset,
        dynamic_axes={**{n: {0: "batch"} for n in names}, OUTPUT: {0: "batch"}},
        do_constant_folding=True,
    )


def _dynamo_export(module: nn.Module, args: tuple, path: Path, names: list[str], opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    per_arg = tuple({0: batch} for _ in args)
    # `Calibrated.forward(*inputs)` takes varargs: torch.export sees one argument, a tuple.
    varargs = any(
        p.kind is inspect.Parameter.VAR_POSITIONAL
        for p in inspect.signature(module.forward).parameters.values()
    )
    program = torch.onnx.export(
        module,
        args,
        dynamo=True,
        input_names=names,
        output_names=[OUTPUT],
        # The dynamo exporter implements opset >= 18 only; asking for 17 triggers a failing down-conversion.
        opset_version=max(opset, 18),
        dynamic_shapes=(per_arg,) if varargs else per_arg,
        external_data=False,
    )
    program.save(str(path))


def _torch_pd(module: nn.Module, inputs: Sequence[np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        out = module(*(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x in inputs))
    return out.double().numpy().reshape(-1)


def export_net(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | Path,
    *,
    input_names: Sequence[str],
    check_inputs: tuple[np.ndarray, ...],
    atol: float = 1e-5,
    opset: int = 17,
) -> dict[str, Any]:
    """Export `module` (eval mode; output [N] probability) to ONNX at `path` and verify it.

    Returns {"max_abs_diff", "rows", "opset", "sha256", "exporter"}; raises OnnxParityError naming
    the worst row's |Δ probability| if onnxruntime and PyTorch differ by more than `atol` on `check_inputs`
    (float32 arrays, one per input, at most 10,000 rows), or if the batch dimension is not dynamic.
    """
    path = Path(path)
    names = list(input_names)
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset=}")
    if len(names) != len(example_inputs) or len(check_inputs) != len(example_inputs):
        raise ValueError(
            f"need one name and one check array per input: {names=} {len(example_inputs)=} {len(check_inputs)=}"
        )
    rows = {len(x) for x in check_inputs}
    if len(rows) != 1:
        raise ValueError(f"check_inputs differ in rows: {[x.shape for x in check_inputs]}")
    n = rows.pop()
    if not 1 <= n <= MAX_CHECK_ROWS:
        raise ValueError(f"check_inputs must have 1..{MAX_CHECK_ROWS} rows, got {n}")
    for name, x, ex in zip(names, check_inputs, example_inputs, strict=True):
        if tuple(x.shape[1:]) != tuple(ex.shape[1:]):
            raise ValueError(f"check input {name!r}: {x.shape=} does not match example {tuple(ex.shape)=}")

    was_training = module.training
    module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    args = tuple(example_inputs)
    try:
        exporter = "torchscript"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
                _torchscript_export(module, args, path, names, opset)
        except Exception as first:
            exporter = "dynamo"
            try:
                with redirect_stdout(io.StringIO()):  # the dynamo exporter prints progress
                    _dynamo_export(module, args, path, names, opset)
            except Exception as second:
                raise RuntimeError(
                    f"ONNX export failed: torchscript: {first!r}; dynamo: {second!r}"
                ) from second
        onnx.checker.check_model(str(path))
        model = onnx.load(str(path))
        graph_opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))

        graph = OnnxGraph(path)
        if graph.outputs != [OUTPUT]:
            raise OnnxParityError(f"graph outputs {graph.outputs}, expected [{OUTPUT!r}]")
        worst = 0.0
        # Batch 1 and the full check set: a graph with a frozen batch size fails one of the two.
        for lo, hi in ((0, 1), (0, n)):
            feed = {
                k: np.ascontiguousarray(x[lo:hi], dtype=np.float32)
                for k, x in zip(names, check_inputs, strict=True)
            }
            got = graph.run(feed, [OUTPUT])[OUTPUT]
            want = _torch_pd(module, [feed[k] for k in names])
            worst = max(worst, compare(got, want, atol=atol, what=f"{path} probability, batch {hi - lo}"))
    finally:
        module.train(was_training)
    return {
        "max_abs_diff": worst,
        "rows": n,
        "opset": int(graph_opset),
        "sha256": sha256_file(path),
        "exporter": exporter,
    }
