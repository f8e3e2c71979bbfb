"""Challenger nets: shapes, real learning, determinism, calibration, ONNX parity, configs, DDP (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from pydantic import ValidationError
from sklearn.metrics import roc_auc_score
from torch import Tensor

from govrisk.core.onnx import OnnxParityError
from govrisk.data.features import FeatureBuilder, FeatureSet
from govrisk.data.store import read_dataset
from govrisk.data.synthetic import generate, load_generator_config
from govrisk.training.export import export_net
from govrisk.training.lightning import (
    BatchIndexSampler,
    CnnConfig,
    RiskMetrics,
    TabularConfig,
    fit_calibration,
    fit_net,
    load_model_config,
    predict_logits,
)
from govrisk.training.nets import Calibrated, PiecewiseLinearEncoding, TabularNet, build_net

REPO_ROOT = Path(__file__).resolve().parents[1]

# Tiny nets so a fit takes seconds; the learning rate is high because there are few steps.
TINY_CNN = {
    "net": {
        "hidden": 16,
        "dilations": [1, 2, 4],
        "kernel_size": 3,
        "dropout": 0.1,
        "static_hidden": 16,
        "static_to_sequence": 4,
        "stem_hidden": 16,
        "sequence_bins": 3,
        "static_bins": 4,
        "norm": "none",
        "head_hidden": 16,
        "ensemble_size": 2,
    },
    "optim": {"lr": 0.005, "weight_decay": 0.01, "schedule": "onecycle"},
    "trainer": {"max_epochs": 6, "patience": 6, "batch_size": 128, "seed": 3},
    "calibration": "platt",
}
TINY_TAB = {
    "net": {
        "embedding": "ple",
        "n_bins": 8,
        "d_embedding": 4,
        "hidden": 32,
        "depth": 2,
        "dropout": 0.1,
        "ensemble_size": 4,
    },
    "optim": {"lr": 0.003, "weight_decay": 0.01, "schedule": "onecycle"},
    "trainer": {"max_epochs": 6, "patience": 6, "batch_size": 128, "seed": 3},
    "calibration": "platt",
}


@pytest.fixture(scope="module")
def county(tmp_path_factory: pytest.TempPathFactory) -> tuple[FeatureSet, FeatureSet]:
    """2,500 synthetic applicants: features fitted on a 70 % train split, the rest is validation."""
    out = tmp_path_factory.mktemp("county") / "county"
    generate(load_generator_config("county"), n_applicants=2500, seed=1, out=out, progress=False)
    d = read_dataset(out)
    rng = np.random.default_rng(0)
    is_train = rng.random(len(d.applicants)) < 0.7
    ids = d.applicants["applicant_id"]
    app_tr = d.applicants[is_train].reset_index(drop=True)
    mon_tr = {k: v[v["applicant_id"].isin(set(ids[is_train]))] for k, v in d.monthly.items()}
    fb = FeatureBuilder.from_config("county").fit(app_tr, mon_tr)
    fs = fb.transform(d.applicants, d.monthly)
    return fs.take(np.flatnonzero(is_train)), fs.take(np.flatnonzero(~is_train))


@pytest.fixture(scope="module")
def fitted(county: tuple[FeatureSet, FeatureSet], tmp_path_factory: pytest.TempPathFactory) -> dict:
    train, val = county
    root = tmp_path_factory.mktemp("fits")
    # One thread: tiny batches gain nothing from two, and two stall badly when the box is shared.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {
            "cnn": fit_net(CnnConfig.model_validate(TINY_CNN), train, val, default_root_dir=root / "cnn"),
            "cnn_again": fit_net(
                CnnConfig.model_validate(TINY_CNN), train, val, default_root_dir=root / "cnn2"
            ),
            "tabular": fit_net(
                TabularConfig.model_validate(TINY_TAB), train, val, default_root_dir=root / "tab"
            ),
        }
    finally:
        torch.set_num_threads(threads)


# --- shapes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "norm"), [(1, "none"), (3, "batch")])
def test_cnn_forward_shapes(k: int, norm: str) -> None:
    seq, st = torch.randn(5, 24, 21), torch.randn(5, 30)
    cfg = {**TINY_CNN["net"], "ensemble_size": k, "norm": norm}
    net = build_net(
        "cnn", cfg, n_channels=21, n_static=30, sequence_train=seq.numpy(), static_train=st.numpy()
    )
    assert net(seq, st).shape == (5,)
    assert net.members(seq, st).shape == (5, k)
    assert net.receptive_field >= 24  # the last month sees the whole window
    with pytest.raises(ValueError, match="sequence must be"):
        net(torch.randn(5, 24, 20), st)
    with pytest.raises(ValueError, match="static must be"):
        net(seq, torch.randn(5, 29))


@pytest.mark.parametrize("embedding", ["ple", "periodic", "none"])
def test_tabular_forward_shapes(embedding: str) -> None:
    x = torch.randn(64, 12)
    net = TabularNet(
        n_static=12, embedding=embedding, hidden=16, depth=2, dropout=0.0, n_bins=4, ensemble_size=3
    )
    net.fit_bins(x.numpy())
    assert net(x).shape == (64,)
    assert net.members(x).shape == (64, 3)
    assert net(x[:1]).shape == (1,)


def test_ple_encoding_and_unfitted_guard() -> None:
    enc = PiecewiseLinearEncoding(n_features=2, n_bins=4)
    x = np.stack([np.arange(101.0), np.r_[np.zeros(50), np.ones(51)]], axis=1)  # uniform; binary
    enc.fit(x)
    e = enc(torch.tensor([[37.5, 1.0], [-10.0, 0.0], [150.0, 1.0]], dtype=torch.float32))
    # 37.5 lies in the 2nd of 4 bins [25, 50]: [1, 0.5, 0, 0]; below/above the range stays open.
    torch.testing.assert_close(e[0, 0], torch.tensor([1.0, 0.5, 0.0, 0.0]))
    assert e[1, 0, 0] < 0 and e[2, 0, -1] > 1
    # A binary feature has one bin (edges 0, 1) and the other three are masked.
    torch.testing.assert_close(e[:, 1], torch.tensor([[1.0, 0, 0, 0], [0.0, 0, 0, 0], [1.0, 0, 0, 0]]))
    net = TabularNet(n_static=2, embedding="ple", hidden=8, depth=1, dropout=0.0, n_bins=4)
    with pytest.raises(RuntimeError, match="fit_bins"):
        net.train()(torch.zeros(3, 2))


# --- learning, determinism, calibration ---------------------------------------------------------------


def test_short_fit_learns(fitted: dict, county: tuple[FeatureSet, FeatureSet]) -> None:
    _, val = county
    for kind in ("cnn", "tabular"):
        r = fitted[kind]
        auc = roc_auc_score(val.labels, predict_logits(r.module.net, val))
        assert auc > 0.6, f"{kind}: val AUC {auc:.3f} - not learning"
        assert abs(auc - r.metrics["val/auroc"]) < 1e-5  # torchmetrics agrees with sklearn
        assert abs(r.best_val_auroc - r.metrics["val/auroc"]) < 1e-5  # the best checkpoint was restored
        p = r.calibrated(*[torch.from_numpy(getattr(val, k)) for k in r.module.net.input_names])
        assert p.shape == (len(val),) and bool(((p > 0) & (p < 1)).all())


def test_same_seed_same_val_auc(fitted: dict) -> None:
    a, b = fitted["cnn"], fitted["cnn_again"]
    assert abs(a.best_val_auroc - b.best_val_auroc) < 1e-6
    for (k1, v1), (k2, v2) in zip(a.module.state_dict().items(), b.module.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2), k1


def test_checkpoint_rebuilds_net_without_being_handed_one(
    fitted: dict, county: tuple[FeatureSet, FeatureSet]
) -> None:
    from govrisk.training.lightning import RiskModule

    for kind in ("cnn", "tabular"):
        r = fitted[kind]
        again = RiskModule.load_from_checkpoint(r.best_path, map_location="cpu", weights_only=False)
        assert again.hparams.net_kind == kind
        np.testing.assert_array_equal(
            predict_logits(again.net, county[1]), predict_logits(r.module.net, county[1])
        )


def test_calibration_fixes_a_misscaled_model(fitted: dict, county: tuple[FeatureSet, FeatureSet]) -> None:
    _, val = county
    z = torch.from_numpy(predict_logits(fitted["cnn"].module.net, val)).double()
    y = torch.from_numpy(val.labels).double()
    bad = 4.0 * z + 1.5  # over-confident and too high: what a pos_weight or a short fit can give

    def logloss(logits: torch.Tensor) -> float:
        return float(torch.nn.functional.binary_cross_entropy_with_logits(logits, y))

    for method in ("platt", "temperature"):
        a, b = fit_calibration(bad.numpy(), y.numpy(), method)
        assert logloss(a * bad + b) < logloss(bad) - 0.01, method
        if method == "temperature":
            assert b == 0.0 and 0 < a < 1
    # Platt on logits that are already right stays close to the identity.
    rng = np.random.default_rng(0)
    true = rng.normal(-2.5, 1.5, 200_000)
    a, b = fit_calibration(true, rng.random(len(true)) < 1 / (1 + np.exp(-true)), "platt")
    assert abs(a - 1) < 0.03 and abs(b) < 0.05


def test_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(5000) < 0.1).astype(np.float32)
    z = (rng.normal(size=5000) + 1.5 * y).astype(np.float32)
    m = RiskMetrics()
    for i in range(0, 5000, 700):  # several updates, as in an epoch
        m.update(torch.from_numpy(z[i : i + 700]), torch.from_numpy(y[i : i + 700]))
    got = {k: float(v) for k, v in m.compute().items()}
    p = 1 / (1 + np.exp(-z.astype(np.float64)))
    from sklearn.metrics import log_loss, roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    assert abs(got["auroc"] - roc_auc_score(y, p)) < 1e-6
    assert abs(got["ks"] - (tpr - fpr).max()) < 1e-6
    assert abs(got["brier"] - np.mean((p - y) ** 2)) < 1e-6
    assert abs(got["logloss"] - log_loss(y, p)) < 1e-5


# --- data ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sampler_shards_and_batches(world: int, monkeypatch: pytest.MonkeyPatch) -> None:
    n, bs = 1001, 64
    seen_eval, train_batches = [], []
    for rank in range(world):
        monkeypatch.setattr(BatchIndexSampler, "_world", staticmethod(lambda rank=rank: (rank, world)))
        ev = BatchIndexSampler(n, batch_size=bs, shuffle=False, pad=False)
        batches = list(ev)
        assert len(batches) == len(ev)
        seen_eval += torch.cat(batches).tolist()
        tr = BatchIndexSampler(n, batch_size=bs, shuffle=True, seed=5, drop_last=True, pad=True)
        tr.set_epoch(2)
        train_batches.append(len(list(tr)))
        assert train_batches[-1] == len(tr)
        # A shard smaller than one batch still trains (drop_last only drops a ragged extra batch).
        small = BatchIndexSampler(300, batch_size=512, shuffle=True, drop_last=True, pad=True)
        assert len(list(small)) == len(small) == 1
    assert sorted(seen_eval) == list(range(n))  # evaluation: every row exactly once over the ranks
    assert len(set(train_batches)) == 1  # training: equal steps on every rank (DDP all-reduce)
    a, b = (
        BatchIndexSampler(n, batch_size=bs, shuffle=True, seed=5),
        BatchIndexSampler(n, batch_size=bs, shuffle=True, seed=5),
    )
    a.set_epoch(1), b.set_epoch(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# --- configs ------------------------------------------------------------------------------------------


def test_shipped_configs_validate_and_build() -> None:
    for name, kind in (("cnn", "cnn"), ("tabular", "tabular")):
        cfg = load_model_config(name)
        assert cfg.kind == kind
        net = build_net(cfg.kind, cfg.net, n_channels=21, n_static=40, static_train=np.random.randn(100, 40))
        assert net.kind == kind
        assert net.config == {
            k: list(v) if isinstance(v, tuple) else v for k, v in cfg.net.model_dump().items()
        }


def test_configs_refuse_bad_values() -> None:
    with pytest.raises(ValidationError):
        CnnConfig.model_validate({**TINY_CNN, "net": {**TINY_CNN["net"], "dropout": 1.0}})
    with pytest.raises(ValidationError):
        CnnConfig.model_validate(
            {**TINY_CNN, "net": {**TINY_CNN["net"], "dilation": [1, 2]}}
        )  # typo: extra key
    with pytest.raises(ValidationError):
        TabularConfig.model_validate({**TINY_TAB, "net": {**TINY_TAB["net"], "embedding": "fourier"}})
    with pytest.raises(ValidationError):
        TabularConfig.model_validate({**TINY_TAB, "optim": {"lr": 0.0, "weight_decay": 0.0}})
    with pytest.raises(ValueError, match="unknown net kind"):
        build_net("rnn", {}, n_channels=1, n_static=1)


# --- ONNX ---------------------------------------------------------------------------------------------


def _stem_inputs(net: torch.nn.Module, *sequences: Tensor) -> list[Tensor]:
    """What the stem of a CNN (6 monthly channels, 3 static) reads for each sequence:
    [raw channels | derived channels | static context] x months."""
    captured: list[Tensor] = []
    hook = net.stem.register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
    with torch.inference_mode():
        for seq in sequences:
            net(seq, torch.zeros(len(seq), 3))
    hook.remove()
    return captured


def _exports_with_parity(net: torch.nn.Module, seq: Tensor, path: Path) -> None:
    check = (seq.numpy(), np.zeros((len(seq), 3), dtype=np.float32))
    info = export_net(
        Calibrated(net, a=1.0, b=0.0).eval(),
        tuple(torch.from_numpy(x[:2]) for x in check),
        path,
        input_names=["sequence", "static"],
        check_inputs=check,
    )
    assert info["max_abs_diff"] <= 1e-5


def test_relative_channels_centre_each_applicant_on_its_months_on_file(tmp_path: Path) -> None:
    """A firm twice the size (a shift of its log amounts on the months it is on file) looks the same
    to the relative channels; months not on file (exact 0) stay 0; the graph exports with parity."""
    torch.manual_seed(0)
    seq = torch.randn(4, 24, 6)
    seq[:, :10, :] = 0.0  # not on file for the first 10 months
    cfg = {**TINY_CNN["net"], "relative": True, "sequence_bins": 0}  # stem input: [raw | relative | static]
    net = build_net("cnn", cfg, n_channels=6, n_static=3).eval()
    shifted = seq.clone()
    shifted[:, 10:, :] += 0.7
    captured = _stem_inputs(net, seq, shifted)
    rel_a, rel_b = (x[:, 6:12, :] for x in captured)
    torch.testing.assert_close(rel_a, rel_b, atol=1e-5, rtol=0)
    assert torch.all(rel_a[:, :, :10] == 0)
    assert not torch.allclose(captured[0][:, :6], captured[1][:, :6])  # the raw channels do move
    _exports_with_parity(net, seq, tmp_path / "relative.onnx")


def test_seasonal_channels_compare_each_month_with_the_same_month_a_year_before(tmp_path: Path) -> None:
    """The seasonal channels hold x[t] - x[t-12] where the firm is on file in both months, else 0: a
    firm whose every month repeats last year's (a pure seasonal pattern) has zero seasonal channels,
    a level shift in the last year shows as that shift; the graph exports with parity."""
    torch.manual_seed(0)
    year = torch.randn(4, 12, 6)
    seq = torch.cat([year, year], dim=1)  # 24 months, the second year repeats the first
    seq[:, :3, :] = 0.0  # not on file for the first 3 months
    cfg = {**TINY_CNN["net"], "seasonal_lag": 12, "sequence_bins": 0}  # stem: [raw | seasonal | static]
    net = build_net("cnn", cfg, n_channels=6, n_static=3).eval()
    shifted = seq.clone()
    shifted[:, 12:, :] += 0.5
    same, moved = (x[:, 6:12, :] for x in _stem_inputs(net, seq, shifted))
    assert torch.all(same == 0)  # a repeat of last year
    assert torch.all(moved[:, :, :15] == 0)  # no month a year before (first 12), or it was not on file
    torch.testing.assert_close(moved[:, :, 15:], torch.full_like(moved[:, :, 15:], 0.5), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="seasonal_lag 12 needs more than 12 months"):
        net(seq[:, :12], torch.zeros(4, 3))
    _exports_with_parity(net, shifted, tmp_path / "seasonal.onnx")


def test_ema_weights_are_validated_checkpointed_and_returned(
    county: tuple[FeatureSet, FeatureSet], tmp_path: Path
) -> None:
    """With `trainer.ema_decay`, the best checkpoint holds the averaged weights (the raw ones beside
    them), and the net that `fit_net` returns, calibrates and exports is the averaged one."""
    train, val = county
    cfg = {**TINY_CNN, "trainer": {**TINY_CNN["trainer"], "max_epochs": 2, "ema_decay": 0.9}}
    fit = fit_net(CnnConfig.model_validate(cfg), train, val, default_root_dir=tmp_path)
    ckpt = torch.load(fit.best_path, map_location="cpu", weights_only=False)
    averaged, raw = ckpt["state_dict"], ckpt["current_model_state"]
    name = "net.stem.0.weight"
    assert not torch.equal(averaged[name], raw[name])  # the average is not the last step's weights
    torch.testing.assert_close(fit.module.state_dict()[name], averaged[name], atol=0, rtol=0)
    assert fit.metrics["val/auroc"] > 0.6
    with pytest.raises(ValueError, match="ema_decay"):
        CnnConfig.model_validate({**TINY_CNN, "trainer": {**TINY_CNN["trainer"], "ema_decay": 1.0}})


def test_onnx_parity_both_nets(fitted: dict, county: tuple[FeatureSet, FeatureSet], tmp_path: Path) -> None:
    _, val = county
    for kind in ("cnn", "tabular"):
        r = fitted[kind]
        names = list(r.module.net.input_names)
        check = tuple(getattr(val, k) for k in names)
        example = tuple(torch.from_numpy(x[:2]) for x in check)
        info = export_net(
            r.calibrated, example, tmp_path / f"{kind}.onnx", input_names=names, check_inputs=check
        )
        assert info["max_abs_diff"] <= 1e-5 and info["rows"] == len(val) and info["opset"] >= 17
        assert len(info["sha256"]) == 64
        sess = ort.InferenceSession(str(tmp_path / f"{kind}.onnx"), providers=["CPUExecutionProvider"])
        for n in (1, 777):  # the batch dimension is really dynamic
            rows = np.arange(n) % len(val)
            got = sess.run(["pd"], {k: x[rows] for k, x in zip(names, check, strict=True)})[0]
            with torch.inference_mode():
                want = r.calibrated(*(torch.from_numpy(x[rows]) for x in check)).numpy()
            assert got.shape == (n,)
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_onnx_parity_error_names_the_gap(tmp_path: Path) -> None:
    class Drifting(torch.nn.Module):
        """Traces one graph, then answers differently in PyTorch: a stand-in for an export bug."""

        def __init__(self) -> None:
            super().__init__()
            self.net = Calibrated(
                TabularNet(n_static=3, embedding="none", hidden=4, depth=1, dropout=0.0), a=1.0, b=0.0
            )

        def forward(self, static: torch.Tensor) -> torch.Tensor:
            p = self.net(static)
            return p if torch.onnx.is_in_onnx_export() else p * 0.5

    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    with pytest.raises(OnnxParityError, match=r"probability, batch \d+: ONNX vs reference max \|Δ\| = "):
        export_net(
            Drifting(),
            (torch.from_numpy(x[:2]),),
            tmp_path / "bad.onnx",
            input_names=["static"],
            check_inputs=(x,),
        )


# --- DDP (slow) ---------------------------------------------------------------------------------------

DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from govrisk.data.features import FeatureBuilder
    from govrisk.data.store import read_dataset
    from govrisk.data.synthetic import generate, load_generator_config
    from sklearn.metrics import roc_auc_score
    from govrisk.training.lightning import CnnConfig, fit_net, predict_logits

    out, cfg = sys.argv[1], json.loads(sys.argv[2])
    d = read_dataset(out)
    fb = FeatureBuilder.from_config("county").fit(d.applicants, d.monthly)
    fs = fb.transform(d.applicants, d.monthly)
    train, val = fs.take(np.arange(0, 1400)), fs.take(np.arange(1400, len(fs)))
    r = fit_net(CnnConfig.model_validate(cfg), train, val, default_root_dir=out + "_run", devices=2, strategy="ddp")
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    full = roc_auc_score(val.labels, predict_logits(r.module.net, val))
    print("RESULT", json.dumps({"rank": rank, "world": world, "best": r.best_val_auroc, "full": full}), flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ddp_two_cpu_processes(tmp_path: Path) -> None:
    """Lightning DDP (gloo, 2 processes) runs, and the logged val/auroc is the metric over ALL val rows
    (torchmetrics synced across ranks), not one rank's shard."""
    out = tmp_path / "ddp_data"
    generate(load_generator_config("county"), n_applicants=2000, seed=1, out=out, progress=False)
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    cfg = {**TINY_CNN, "trainer": {**TINY_CNN["trainer"], "max_epochs": 2, "patience": 2}}
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(script), str(out), json.dumps(cfg)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=580,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [
        json.loads(line.split("RESULT ", 1)[1])
        for line in proc.stdout.splitlines()
        if line.startswith("RESULT ")
    ]
    assert sorted(r["rank"] for r in results) == [0, 1] and all(r["world"] == 2 for r in results), proc.stdout
    # Both ranks log the same synced figure, and it is the AUROC of the best weights on the full val set.
    assert abs(results[0]["best"] - results[1]["best"]) < 1e-7
    for r in results:
        assert abs(r["best"] - r["full"]) < 1e-6, r
