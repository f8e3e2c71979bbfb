"""Serving and credit-policy configuration: `configs/serving/*.yaml` and `configs/policy/*.yaml`.

Both are strict pydantic models (`extra="forbid"`): an unknown key or a bad value fails at start-up,
naming the file and the key, never at the first request.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from govrisk.core.config import StrictModel, load_config, work_dir

CONFIG_ENV = "GOVRISK_SERVING_CONFIG"  # how `govrisk serve` and tests hand a config to `bentoml serve`
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class RoutingConfig(StrictModel):
    mode: Literal["shadow", "split", "champion_only"] = "shadow"
    # split: the share of applicants decided by the challenger, drawn by hashing the applicant id
    split_share: float = Field(default=0.1, ge=0, le=1)
    salt: str = Field(default="govrisk-split-v1", min_length=1)  # change it to re-draw the arms


class ChallengerConfig(StrictModel):
    tag: str | None = "county-cnn:latest"  # null: no challenger
    budget_ms: float = Field(default=15, gt=0, le=10_000)  # wait at most this long for its answer
    # (fault injection for the isolation tests is not configuration: devtools/faults.py, test-only)


class AuthConfig(StrictModel):
    # sha256 hex digests of accepted API keys; raw keys are never written to configuration
    key_hashes: tuple[str, ...] = ()
    keys_env: str | None = "GOVRISK_API_KEYS"  # comma-separated raw keys, hashed at start-up
    # true: serve without API keys (every request accepted; logged as a warning at start-up). False
    # (the default) and no key configured: the server refuses to start.
    open: bool = False

    @model_validator(mode="after")
    def _hex(self) -> AuthConfig:
        for h in self.key_hashes:
            if not _SHA256.match(h):
                raise ValueError(f"auth.key_hashes: {h!r} is not a lower-case sha256 hex digest")
        return self


class DecisionLogConfig(StrictModel):
    url: str | None = None  # null: sqlite:///$GOVRISK_WORK/serving/decisions.db
    table: str = Field(default="decisions", pattern=r"^[a-z_][a-z0-9_]*$")
    schema_: str | None = Field(default=None, alias="schema", pattern=r"^[a-z_][a-z0-9_]*$")
    # SQLite only. "normal" (the default): in WAL mode a commit is in the OS's page cache when it
    # returns, so it survives a killed or crashed server (the durability requirement: kill -9), but
    # not a power cut or kernel crash; it spares one fsync (~1-10 ms) per commit. "full"
    # fsyncs the WAL on every commit and also survives power loss.
    sqlite_synchronous: Literal["full", "normal"] = "normal"
    # Bounds on a database that refuses, stalls or is gone (serving/decision_log.py): a request gets
    # its 503 within write_timeout_ms (+ connect_timeout_s when a worker must open a new connection),
    # and a write answered 503 is never committed later.
    connect_timeout_s: int = Field(default=3, ge=2, le=60)  # PostgreSQL (libpq's minimum is 2 s)
    # SQLite's busy timeout; PostgreSQL's statement_timeout and lock_timeout, and a client-side
    # watchdog for a server that does not answer at all
    write_timeout_ms: int = Field(default=2000, ge=100, le=60_000)
    # /readyz: the write probe's bound, and how long its answer is reused (so /readyz stays cheap);
    # /readyz turns false within ready_cache_s + ready_timeout_ms of the log refusing writes
    ready_timeout_ms: int = Field(default=500, ge=50, le=10_000)
    ready_cache_s: float = Field(default=1.0, ge=0, le=60)
    # applicant_hash is HMAC-SHA256 under a secret key from the environment, not configuration:
    # govrisk.core.pseudonym (GOVRISK_APPLICANT_KEY / GOVRISK_APPLICANT_KEY_FILE)

    def resolved_url(self) -> str:
        if self.url:
            return self.url
        return f"sqlite:///{work_dir() / 'serving' / 'decisions.db'}"


class ObservabilityConfig(StrictModel):
    """What the HTTP layer records per scoring request beyond govrisk's metrics and decision log."""

    # OpenTelemetry spans for /score and /score_batch. Off by default: a span costs about 1 ms of CPU
    # per /score request (one worker, measured: 8.6 ms CPU per request with spans, 7.3 without), a
    # seventh of the budget at 200 requests/s on two cores, and nothing collects them unless a tracing
    # exporter is configured. The decision log's timings and /metrics cover the same ground.
    trace_scoring: bool = False


class ServingConfig(StrictModel):
    name: str = "govrisk-scoring"
    host: str = "127.0.0.1"
    port: int = Field(default=3000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    champion: str = "county-scorecard:latest"
    challenger: ChallengerConfig = ChallengerConfig()
    routing: RoutingConfig = RoutingConfig()
    policy: str = "county"  # configs/policy/<name>.yaml or a path
    reason_codes: int = Field(default=4, ge=0, le=20)
    max_batch: int = Field(default=1000, ge=1, le=100_000)  # applicants per /score_batch request
    max_payload_kib: int = Field(default=256, ge=1)  # /score body
    max_batch_payload_kib: int = Field(default=16_384, ge=1)  # /score_batch body
    # Back-pressure, per worker: scoring requests held at once (being read, queued for the /score
    # micro-batch, or decided), and /score_batch requests among them; beyond either, 503 + Retry-After
    # before the body is read. With the payload limits they bound a worker's memory (docs/configs/serving.md).
    max_in_flight: int = Field(default=64, ge=1, le=10_000)
    max_batches_in_flight: int = Field(default=2, ge=1, le=64)
    onnx_threads: int = Field(default=1, ge=1, le=64)  # per session; one applicant needs no more
    auth: AuthConfig = AuthConfig()
    decision_log: DecisionLogConfig = DecisionLogConfig()
    observability: ObservabilityConfig = ObservabilityConfig()

    def key_hashes(self) -> frozenset[str]:
        """Accepted key digests: the configured ones plus those of the keys in `auth.keys_env`."""
        hashes = set(self.auth.key_hashes)
        if self.auth.keys_env:
            for key in os.environ.get(self.auth.keys_env, "").split(","):
                if key.strip():
                    hashes.add(hash_key(key.strip()))
        return frozenset(hashes)


def hash_key(key: str) -> str:
    """The stored form of an API key."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_accepted(key: str | None, hashes: frozenset[str] | None) -> bool:
    """Constant-time check of a presented key against the stored digests; `hashes` None: open."""
    if hashes is None:
        return True
    if not key:
        return False
    digest = hash_key(key)
    return any(hmac.compare_digest(digest, h) for h in hashes)


def startup_problem(cfg: ServingConfig) -> str | None:
    """Why the server must not start with `cfg` (one line), or None: no API key unless `auth.open`,
    keys together with `auth.open`, or no applicant pseudonym key. Checked by `govrisk serve` before
    BentoML starts and again when the service module loads (a plain `bentoml serve`)."""
    from govrisk.core.pseudonym import load_applicant_key
    from govrisk.core.signing import SigningKeyError

    keys = cfg.key_hashes()
    if not keys and not cfg.auth.open:
        where = f"${cfg.auth.keys_env} or " if cfg.auth.keys_env else ""
        return (
            f"no API key configured: set {where}auth.key_hashes, or set auth.open: true to serve "
            "without keys (every request accepted)"
        )
    if keys and cfg.auth.open:
        return f"auth.open is true but {len(keys)} API key(s) are configured: remove one or the other"
    try:
        load_applicant_key()
    except SigningKeyError as e:
        return str(e)
    return None


def load_serving_config(name_or_path: str | Path | None = None, **overrides: Any) -> ServingConfig:
    """`configs/serving/<name>.yaml` (or a path); default: `$GOVRISK_SERVING_CONFIG`, else `default`."""
    name_or_path = name_or_path or os.environ.get(CONFIG_ENV) or "default"
    return load_config("serving", name_or_path, ServingConfig, **overrides)


# --- the credit policy ---------------------------------------------------------------------------
Decision = Literal["approve", "refer", "decline"]


class HardRule(StrictModel):
    """A rule checked before any PD cut-off; the first rule that fires decides.

    `field` is an applicant field or a raw characteristic of the feature schema
    (e.g. `tax_monthly.tax_arrears__last`); it fires on `equals`, `at_least` or `at_most`.
    """

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    field: str
    equals: bool | float | str | None = None
    at_least: float | None = None
    at_most: float | None = None
    decision: Literal["refer", "decline"]
    reason: str

    @model_validator(mode="after")
    def _one_condition(self) -> HardRule:
        given = [k for k in ("equals", "at_least", "at_most") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"hard rule {self.name!r}: give exactly one of equals, at_least, at_most")
        return self


class AdmissionConfig(StrictModel):
    approve_below_pd: float = Field(gt=0, lt=1)  # PD < this: approve
    decline_at_pd: float = Field(gt=0, le=1)  # PD >= this: decline; in between: refer

    @model_validator(mode="after")
    def _ordered(self) -> AdmissionConfig:
        if self.approve_below_pd > self.decline_at_pd:
            raise ValueError(
                f"admission: approve_below_pd {self.approve_below_pd} > decline_at_pd {self.decline_at_pd}"
            )
        return self


class PricingConfig(StrictModel):
    """Annual rate = funding cost + PD x LGD + capital margin + operating margin, within bounds."""

    funding_cost: float = Field(ge=0, le=1)
    lgd: float = Field(gt=0, le=1)
    capital_margin: float = Field(ge=0, le=1)
    operating_margin: float = Field(ge=0, le=1)
    min_rate: float = Field(ge=0, le=1)
    max_rate: float = Field(gt=0, le=1)

    @model_validator(mode="after")
    def _bounds(self) -> PricingConfig:
        if self.min_rate > self.max_rate:
            raise ValueError(f"pricing: min_rate {self.min_rate} > max_rate {self.max_rate}")
        return self


class LimitConfig(StrictModel):
    """Limit = min(requested, revenue capacity, cap of the entity type), rounded down."""

    revenue_feature: str = "tax_monthly.declared_sales__mean_12m"  # average monthly sales
    requested_field: str = "requested_amount"  # the applicant field holding the amount asked for
    segment_field: str = "entity_type"  # the applicant field `caps` are keyed by
    revenue_months: float = Field(gt=0, le=60)  # months of revenue a loan may reach
    caps: dict[str, float]  # by entity type
    round_to: float = Field(default=1000, gt=0)


class CreditPolicyConfig(StrictModel):
    """A credit policy: `configs/policy/<name>.yaml`."""

    name: str
    version: str
    hard_rules: tuple[HardRule, ...] = ()
    admission: AdmissionConfig
    pricing: PricingConfig
    limit: LimitConfig


def load_credit_policy(name_or_path: str | Path) -> CreditPolicyConfig:
    """`configs/policy/<name>.yaml` (or a path); errors name the offending key."""
    return load_config("policy", name_or_path, CreditPolicyConfig)
