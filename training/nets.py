"""Challenger networks: plain `nn.Module`s, no Lightning, every size from the config.

- `TemporalConvNet`: dilated causal 1-D convolutions over the monthly channels, fused with an MLP over
  the static aggregates. `forward(sequence [N, T, C], static [N, F]) -> logit [N]`.
- `TabularNet`: numerical-feature embeddings (Gorishniy et al. 2022, "On Embeddings for Numerical
  Features in Tabular Deep Learning": piecewise-linear encoding or periodic) and an MLP.
  `forward(static [N, F]) -> logit [N]`.
- `Calibrated`: a net plus Platt scaling, returning a probability [N]; this is what ships as ONNX.

Both nets end in `EnsembleHead`, a TabM-mini style efficient ensemble (Gorishniy et al. 2024, "TabM"):
k members share every weight except a per-member multiplicative adapter on the head's input and a
per-member output layer. `members(...)` returns the k logits [N, k] (training puts the loss on each
member, so they stay diverse); `forward(...)` returns their mean. We average logits, not
probabilities: the mean logit keeps the exported graph `logit -> Platt -> probability`, and Platt
scaling fitted afterwards absorbs the small difference in scale. k = 1 is an ordinary MLP head.

Every net carries `kind`, `config` (its constructor kwargs, JSON-able) and `input_names` (which
batch tensors `forward` takes, in order), so the training module can record, rebuild and feed it.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from govrisk.core.config import StrictModel

MAX_FIT_ROWS = 1_000_000
Dropout = Annotated[float, Field(ge=0.0, lt=1.0)]
Width = Annotated[int, Field(ge=1, le=4096)]


class CnnNetConfig(StrictModel):
    """Constructor kwargs of `TemporalConvNet` (less the data shapes)."""

    hidden: Width
    dilations: tuple[Annotated[int, Field(ge=1, le=64)], ...] = Field(min_length=1)
    kernel_size: int = Field(ge=2, le=12)
    dropout: Dropout
    static_hidden: Width
    static_to_sequence: int = Field(ge=0, le=4096)
    stem_hidden: int = Field(default=0, ge=0, le=4096)
    sequence_bins: int = Field(default=0, ge=0, le=64)
    static_bins: int = Field(default=0, ge=0, le=64)
    norm: Literal["batch", "none"] = "none"
    relative: bool = False
    seasonal_lag: int = Field(default=0, ge=0, le=36)
    head_hidden: Width
    ensemble_size: int = Field(default=1, ge=1, le=64)


class TabularNetConfig(StrictModel):
    """Constructor kwargs of `TabularNet` (less the data shape)."""

    embedding: Literal["ple", "periodic", "none"]
    n_bins: int = Field(default=16, ge=2, le=256)  # ple
    n_frequencies: int = Field(default=16, ge=1, le=256)  # periodic
    frequency_scale: float = Field(default=0.1, gt=0.0, le=100.0)  # periodic: sd of the initial frequencies
    d_embedding: Width = 16
    hidden: Width
    depth: int = Field(ge=1, le=16)
    dropout: Dropout
    ensemble_size: int = Field(default=1, ge=1, le=64)


# --- shared pieces ------------------------------------------------------------------------------------


class EnsembleHead(nn.Module):
    """k-member MLP head, TabM-mini style: shared hidden layer, per-member input scaling and output."""

    def __init__(self, *, d_in: int, hidden: int, dropout: float, ensemble_size: int, depth: int = 1) -> None:
        super().__init__()
        k = ensemble_size
        # Random ±1 signs (as in TabM) make the members see different projections of the same input
        # from step one; with k = 1 the adapter is a plain, trainable all-ones gate.
        init = torch.ones(k, d_in) if k == 1 else torch.randint(0, 2, (k, d_in)).float() * 2 - 1
        self.adapter = nn.Parameter(init)
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(d_in if i == 0 else hidden, hidden), nn.ReLU(), nn.Dropout(dropout)]
        self.mlp = nn.Sequential(*layers)
        self.out_weight = nn.Parameter(
            torch.empty(k, hidden).uniform_(-1 / math.sqrt(hidden), 1 / math.sqrt(hidden))
        )
        self.out_bias = nn.Parameter(torch.zeros(k))

    def forward(self, x: Tensor) -> Tensor:
        """[N, d_in] -> member logits [N, k]."""
        h = self.mlp(x.unsqueeze(1) * self.adapter)  # [N, k, hidden]
        return (h * self.out_weight).sum(-1) + self.out_bias


def _per_feature_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """[N, F, B] x [F, B, D] + [F, D] -> [N, F, D]: each feature has its own linear map."""
    return torch.einsum("nfb,fbd->nfd", x, weight) + bias


# --- temporal convolutional net -----------------------------------------------------------------------


class CausalConv1d(nn.Conv1d):
    """Conv1d padded on the left only, so month t reads months <= t and the last step sees the window."""

    def __init__(self, c_in: int, c_out: int, *, kernel_size: int, dilation: int) -> None:
        super().__init__(c_in, c_out, kernel_size, dilation=dilation)
        self.left_pad = (kernel_size - 1) * dilation

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (self.left_pad, 0)))


class TemporalBlock(nn.Module):
    """Two dilated causal convolutions (optional batch norm) and a residual connection (Bai et al. 2018).

    The default is no norm: the same AUC on the county and Taiwan, ~40 % faster on CPU, and no
    running statistics that differ between DDP processes or between training and evaluation.
    """

    def __init__(self, *, channels: int, kernel_size: int, dilation: int, dropout: float, norm: str) -> None:
        super().__init__()
        self.conv1 = CausalConv1d(channels, channels, kernel_size=kernel_size, dilation=dilation)
        self.norm1 = nn.BatchNorm1d(channels) if norm == "batch" else nn.Identity()
        self.conv2 = CausalConv1d(channels, channels, kernel_size=kernel_size, dilation=dilation)
        self.norm2 = nn.BatchNorm1d(channels) if norm == "batch" else nn.Identity()
        # Channel dropout (whole feature maps): neighbouring months are strongly correlated, so
        # zeroing single cells barely regularises, and a [N, C, 1] mask is far cheaper on CPU than
        # an element mask (element-wise bernoulli was ~20 % of a training step).
        self.dropout = nn.Dropout1d(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.dropout(F.gelu(self.norm1(self.conv1(x))))
        h = self.dropout(self.norm2(self.conv2(h)))
        return F.gelu(x + h)


class TemporalConvNet(nn.Module):
    """Dilated causal TCN over the monthly sequence + MLP over static features -> default logit.

    The monthly channels already carry one presence mask per table, so a missing month is an input
    the convolutions read (a zero value with mask 0), not something to impute.
    """

    kind = "cnn"
    input_names = ("sequence", "static")

    def __init__(
        self,
        *,
        n_channels: int,
        n_static: int,
        hidden: int,
        dilations: tuple[int, ...] | list[int],
        kernel_size: int,
        dropout: float,
        static_hidden: int,
        static_to_sequence: int,
        head_hidden: int,
        stem_hidden: int = 0,
        sequence_bins: int = 0,
        static_bins: int = 0,
        norm: Literal["batch", "none"] = "none",
        relative: bool = False,
        seasonal_lag: int = 0,
        ensemble_size: int = 1,
    ) -> None:
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', got {norm=!r}")
        if n_channels < 1 or n_static < 0:
            raise ValueError(f"need n_channels >= 1 and n_static >= 0, got {n_channels=} {n_static=}")
        self.config: dict[str, Any] = {
            "hidden": hidden,
            "dilations": list(dilations),
            "kernel_size": kernel_size,
            "dropout": dropout,
            "static_hidden": static_hidden,
            "static_to_sequence": static_to_sequence,
            "stem_hidden": stem_hidden,
            "sequence_bins": sequence_bins,
            "static_bins": static_bins,
            "norm": norm,
            "relative": relative,
            "seasonal_lag": seasonal_lag,
            "head_hidden": head_hidden,
            "ensemble_size": ensemble_size,
        }
        self.n_channels, self.n_static = n_channels, n_static
        # Relative channels (per-applicant instance normalisation, as in RevIN): every monthly value
        # minus the applicant's own mean of that channel over the months it is on file. Risk lives in
        # "sales are down on this firm's own past", and a firm's scale (which the static branch has)
        # otherwise dominates the log amounts the convolutions see. The features mark a month that is
        # not on file with an exact 0, so the mask needs no channel names and reads the same in ONNX.
        self.relative = relative
        # Seasonal differences: each channel minus its value `seasonal_lag` months earlier, where the
        # firm is on file in both months (else 0). Lenders read sales year on year ("this spring
        # against last spring"), which takes out the firm's seasonality; causal convolutions would
        # otherwise need a 12-month dilation path to line up the same calendar month. 0 = off.
        if seasonal_lag < 0:
            raise ValueError(f"seasonal_lag must be >= 0, got {seasonal_lag=}")
        self.seasonal_lag = seasonal_lag
        # Static context broadcast to every month: sales seasonality depends on industry and entity,
        # so the convolutions can only read "sales are low for this kind of firm in this month" if they
        # know the kind of firm. 0 turns it off.
        self.static_to_seq = nn.Linear(n_static, static_to_sequence) if static_to_sequence > 0 else None
        # Optional piecewise-linear encodings (rtdl PLE) of every monthly channel and static feature,
        # next to the raw value: codes such as Taiwan's repayment status (-2 no use, -1 paid, 0
        # revolving, k months late) or a log amount that matters only past a threshold are far from
        # linear, and a 1x1 convolution over PLE codes is a learnt per-value response. 0 = off.
        self.seq_ple = (
            PiecewiseLinearEncoding(n_features=n_channels, n_bins=sequence_bins) if sequence_bins else None
        )
        self.static_ple = (
            PiecewiseLinearEncoding(n_features=n_static, n_bins=static_bins) if static_bins else None
        )
        c_in = n_channels * (1 + sequence_bins + int(relative) + int(seasonal_lag > 0)) + static_to_sequence
        if stem_hidden > 0:
            # A per-month MLP before any temporal mixing: interactions such as (industry x calendar
            # month) -> expected seasonal sales need a nonlinearity, a linear 1x1 projection cannot.
            self.stem = nn.Sequential(
                nn.Conv1d(c_in, stem_hidden, kernel_size=1),
                nn.GELU(),
                nn.Conv1d(stem_hidden, hidden, kernel_size=1),
            )
        else:
            self.stem = nn.Conv1d(c_in, hidden, kernel_size=1)
        self.blocks = nn.ModuleList(
            TemporalBlock(channels=hidden, kernel_size=kernel_size, dilation=d, dropout=dropout, norm=norm)
            for d in dilations
        )
        self.static_mlp = nn.Sequential(
            nn.Linear(n_static * (1 + static_bins), static_hidden), nn.GELU(), nn.Dropout(dropout)
        )
        # Pooling = last step + mean + max over months. The last step is the state in the month before
        # application; its receptive field (`receptive_field`) spans the window, so it can encode any
        # recency weighting. The mean is the level over the whole window (what "health 13-24 months
        # ago" needs), the max keeps rare spikes (a penalty, an arrears month) that a mean dilutes.
        self.head = EnsembleHead(
            d_in=3 * hidden + static_hidden, hidden=head_hidden, dropout=dropout, ensemble_size=ensemble_size
        )

    @property
    def receptive_field(self) -> int:
        k = self.config["kernel_size"]
        return 1 + 2 * (k - 1) * sum(self.config["dilations"])

    def fit_bins(
        self, *, sequence: np.ndarray | None = None, static: np.ndarray | None = None
    ) -> TemporalConvNet:
        """PLE bin edges from training rows (sequence [N, T, C], static [N, F]); no-op where bins are off."""
        if self.seq_ple is not None:
            if sequence is None:
                raise ValueError("sequence_bins > 0 needs the training sequence to fit its bins")
            self.seq_ple.fit(np.asarray(sequence).reshape(-1, self.n_channels))
        if self.static_ple is not None:
            if static is None:
                raise ValueError("static_bins > 0 needs the training static rows to fit its bins")
            self.static_ple.fit(static)
        return self

    def _check_bins(self) -> None:
        for ple in (self.seq_ple, self.static_ple):
            if self.training and ple is not None and not bool(ple.fitted):
                raise RuntimeError("TemporalConvNet is training on unfitted PLE bins: call fit_bins(...)")

    def members(self, sequence: Tensor, static: Tensor) -> Tensor:
        """Member logits [N, k]."""
        if sequence.ndim != 3 or sequence.shape[2] != self.n_channels:
            raise ValueError(f"sequence must be [N, T, {self.n_channels}], got {sequence.shape=}")
        if static.ndim != 2 or static.shape[1] != self.n_static:
            raise ValueError(f"static must be [N, {self.n_static}], got {static.shape=}")
        self._check_bins()
        parts = [sequence]
        if self.seq_ple is not None:  # [N, T, C] -> [N, T, C, bins] -> [N, T, C * bins], broadcast
            parts.append(self.seq_ple(sequence).flatten(2))
        if self.relative:
            on = (sequence != 0).to(sequence.dtype)
            own_mean = (sequence * on).sum(dim=1, keepdim=True) / on.sum(dim=1, keepdim=True).clamp(min=1.0)
            parts.append((sequence - own_mean) * on)
        lag = self.seasonal_lag
        if lag:
            if sequence.shape[1] <= lag:
                raise ValueError(f"seasonal_lag {lag} needs more than {lag} months, got {sequence.shape=}")
            on = (sequence != 0).to(sequence.dtype)
            now, before = sequence[:, lag:], sequence[:, :-lag]
            diff = (now - before) * on[:, lag:] * on[:, :-lag]
            parts.append(torch.cat([torch.zeros_like(sequence[:, :lag]), diff], dim=1))
        sequence = torch.cat(parts, dim=2) if len(parts) > 1 else sequence
        x = sequence.transpose(1, 2)  # [N, C', T]: Conv1d wants channels first
        if self.static_to_seq is not None:
            ctx = self.static_to_seq(static).unsqueeze(2).expand(-1, -1, x.shape[2])
            x = torch.cat([x, ctx], dim=1)
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        pooled = torch.cat([h[:, :, -1], h.mean(dim=2), h.amax(dim=2)], dim=1)
        if self.static_ple is not None:
            static = torch.cat([static, self.static_ple(static).flatten(1)], dim=1)
        return self.head(torch.cat([pooled, self.static_mlp(static)], dim=1))

    def forward(self, sequence: Tensor, static: Tensor) -> Tensor:
        """Logit [N]: the mean of the member logits."""
        return self.members(sequence, static).mean(dim=1)


# --- tabular net with numerical embeddings ------------------------------------------------------------


class PiecewiseLinearEncoding(nn.Module):
    """rtdl PLE: feature x in bin t of edges b -> [1, .., 1, (x - b_{t-1}) / (b_t - b_{t-1}), 0, .., 0].

    The edges are quantiles of the training data (`fit`), kept as buffers so checkpoints and the ONNX
    graph carry them. A feature with fewer distinct quantiles (a one-hot, a count) gets fewer bins;
    the unused bins are masked to 0. The first bin is open below and the last open above, so values
    outside the training range still move the encoding (as in rtdl).
    """

    def __init__(self, *, n_features: int, n_bins: int) -> None:
        super().__init__()
        self.n_features, self.n_bins = n_features, n_bins
        self.register_buffer("left", torch.zeros(n_features, n_bins))
        self.register_buffer("width", torch.ones(n_features, n_bins))
        self.register_buffer("lower", torch.zeros(n_features, n_bins))
        self.register_buffer("upper", torch.ones(n_features, n_bins))
        self.register_buffer("mask", torch.zeros(n_features, n_bins))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, x: np.ndarray | Tensor) -> None:
        x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"fit_bins wants [N, {self.n_features}], got {tuple(x.shape)=}")
        if len(x) > MAX_FIT_ROWS:  # torch.quantile refuses > 16M values; an even stride is enough
            x = x[:: math.ceil(len(x) / MAX_FIT_ROWS)]
        q = torch.linspace(0, 1, self.n_bins + 1, dtype=torch.float64)
        self.left.zero_(), self.width.fill_(1.0), self.lower.zero_(), self.upper.fill_(1.0), self.mask.zero_()
        for f in range(self.n_features):
            col = x[:, f][torch.isfinite(x[:, f])]
            if len(col) == 0:
                continue
            edges = torch.unique(torch.quantile(col, q))  # sorted, duplicates (ties) removed
            n = len(edges) - 1
            if n == 0:  # a constant feature: nothing to encode
                continue
            self.left[f, :n] = edges[:-1].float()
            self.width[f, :n] = (edges[1:] - edges[:-1]).float()
            self.mask[f, :n] = 1.0
            self.lower[f, 0] = -math.inf
            self.upper[f, n - 1] = math.inf
        self.fitted.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        """[..., F] -> [..., F, n_bins] (any leading dimensions)."""
        z = (x.unsqueeze(-1) - self.left) / self.width
        return torch.minimum(torch.maximum(z, self.lower), self.upper) * self.mask


class PeriodicEncoding(nn.Module):
    """rtdl periodic features: [cos(2π c x), sin(2π c x)] with trainable frequencies c ~ N(0, σ)."""

    def __init__(self, *, n_features: int, n_frequencies: int, frequency_scale: float) -> None:
        super().__init__()
        self.frequencies = nn.Parameter(torch.randn(n_features, n_frequencies) * frequency_scale)

    def forward(self, x: Tensor) -> Tensor:
        """[N, F] -> [N, F, 2 * n_frequencies]."""
        v = 2 * math.pi * self.frequencies * x.unsqueeze(-1)
        return torch.cat([torch.cos(v), torch.sin(v)], dim=-1)


class TabularNet(nn.Module):
    """Numerical embeddings (PLE / periodic / none) -> MLP -> efficient-ensemble head -> logit."""

    kind = "tabular"
    input_names = ("static",)

    def __init__(
        self,
        *,
        n_static: int,
        embedding: Literal["ple", "periodic", "none"],
        hidden: int,
        depth: int,
        dropout: float,
        n_bins: int = 16,
        n_frequencies: int = 16,
        frequency_scale: float = 0.1,
        d_embedding: int = 16,
        ensemble_size: int = 1,
        bins_from: np.ndarray | Tensor | None = None,
    ) -> None:
        super().__init__()
        if n_static < 1:
            raise ValueError(f"need n_static >= 1, got {n_static=}")
        self.config: dict[str, Any] = {
            "embedding": embedding,
            "n_bins": n_bins,
            "n_frequencies": n_frequencies,
            "frequency_scale": frequency_scale,
            "d_embedding": d_embedding,
            "hidden": hidden,
            "depth": depth,
            "dropout": dropout,
            "ensemble_size": ensemble_size,
        }
        self.n_static = n_static
        self.encoding: nn.Module | None
        if embedding == "ple":
            self.encoding, d_code = PiecewiseLinearEncoding(n_features=n_static, n_bins=n_bins), n_bins
        elif embedding == "periodic":
            self.encoding = PeriodicEncoding(
                n_features=n_static, n_frequencies=n_frequencies, frequency_scale=frequency_scale
            )
            d_code = 2 * n_frequencies
        elif embedding == "none":
            self.encoding, d_code = None, 1
        else:
            raise ValueError(f"embedding must be 'ple', 'periodic' or 'none', got {embedding=!r}")
        if self.encoding is not None:
            # One small linear map per feature (rtdl's "L" in PLR / PLE-L), then ReLU.
            bound = 1 / math.sqrt(d_code)
            self.embed_weight = nn.Parameter(
                torch.empty(n_static, d_code, d_embedding).uniform_(-bound, bound)
            )
            self.embed_bias = nn.Parameter(torch.empty(n_static, d_embedding).uniform_(-bound, bound))
            d_in = n_static * d_embedding
        else:
            d_in = n_static
        self.head = EnsembleHead(
            d_in=d_in, hidden=hidden, dropout=dropout, ensemble_size=ensemble_size, depth=depth
        )
        if bins_from is not None:
            self.fit_bins(bins_from)

    def fit_bins(self, static_train: np.ndarray | Tensor) -> TabularNet:
        """Set the PLE bin edges to quantiles of the training rows (a no-op for other embeddings)."""
        if isinstance(self.encoding, PiecewiseLinearEncoding):
            self.encoding.fit(static_train)
        return self

    def members(self, static: Tensor) -> Tensor:
        """Member logits [N, k]."""
        if static.ndim != 2 or static.shape[1] != self.n_static:
            raise ValueError(f"static must be [N, {self.n_static}], got {static.shape=}")
        if self.encoding is None:
            return self.head(static)
        if (
            self.training
            and isinstance(self.encoding, PiecewiseLinearEncoding)
            and not bool(self.encoding.fitted)
        ):
            raise RuntimeError(
                "TabularNet(embedding='ple') is training on unfitted bins: call fit_bins(static_train)"
            )
        e = F.relu(_per_feature_linear(self.encoding(static), self.embed_weight, self.embed_bias))
        return self.head(e.flatten(1))

    def forward(self, static: Tensor) -> Tensor:
        """Logit [N]: the mean of the member logits."""
        return self.members(static).mean(dim=1)


# --- calibration wrapper ------------------------------------------------------------------------------


class Calibrated(nn.Module):
    """p = sigmoid(a * logit + b): Platt scaling (temperature scaling is a = 1 / T, b = 0).

    a and b are buffers, so they travel in the state dict and the ONNX graph; the output is a
    calibrated probability of default [N], which is what serving reads.
    """

    def __init__(self, net: nn.Module, *, a: float, b: float) -> None:
        super().__init__()
        if not (math.isfinite(a) and math.isfinite(b)):
            raise ValueError(f"calibration must be finite, got {a=} {b=}")
        self.net = net
        self.input_names: tuple[str, ...] = tuple(getattr(net, "input_names", ()))
        self.register_buffer("a", torch.tensor(float(a)))
        self.register_buffer("b", torch.tensor(float(b)))

    def forward(self, *inputs: Tensor) -> Tensor:
        return torch.sigmoid(self.a * self.net(*inputs) + self.b)


# --- construction from config -------------------------------------------------------------------------


def build_net(
    kind: str,
    net_cfg: CnnNetConfig | TabularNetConfig | dict[str, Any],
    *,
    n_channels: int,
    n_static: int,
    static_train: np.ndarray | None = None,
    sequence_train: np.ndarray | None = None,
) -> nn.Module:
    """A fresh net of `kind` ("cnn" | "tabular") from its config section and the feature shapes.

    `static_train` / `sequence_train` (the training rows of `FeatureSet.static` / `.sequence`) set the
    PLE bin edges of a net that will be trained; not needed when a state dict will be loaded.
    """
    if kind == "cnn":
        cfg = net_cfg if isinstance(net_cfg, CnnNetConfig) else CnnNetConfig.model_validate(net_cfg)
        net = TemporalConvNet(n_channels=n_channels, n_static=n_static, **cfg.model_dump())
        if (cfg.sequence_bins and sequence_train is not None) or (
            cfg.static_bins and static_train is not None
        ):
            net.fit_bins(sequence=sequence_train, static=static_train)
        return net
    if kind == "tabular":
        cfg = net_cfg if isinstance(net_cfg, TabularNetConfig) else TabularNetConfig.model_validate(net_cfg)
        return TabularNet(n_static=n_static, bins_from=static_train, **cfg.model_dump())
    raise ValueError(f"unknown net kind {kind!r}; expected 'cnn' or 'tabular'")
