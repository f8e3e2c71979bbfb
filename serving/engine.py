"""The scoring engine behind the endpoint, free of BentoML so it can be used and measured in-process.

`Scorer.score(applicants)` builds features once per distinct feature schema, scores the champion in
the calling thread and the challenger in a small thread pool with a latency budget, applies the
credit policy to the deciding model's PD and returns one decision record per applicant.

Challenger isolation: the challenger runs beside the champion and is waited for only until its
budget (measured from when it started) is spent. If it raises, is missing, is busy with an earlier
slow request or runs late, the decision is the champion's and the record says why
(`challenger_status`). An abandoned challenger call finishes in the background; the pool has two
slots, so a stuck challenger can never queue work in front of new requests.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import orjson

from govrisk.core.pseudonym import Pseudonymizer, load_pseudonymizer
from govrisk.core.rating import MasterScale, load_master_scale
from govrisk.core.records import DecisionRecord, reason_codes
from govrisk.data.features import FeatureSet
from govrisk.serving.config import ServingConfig, load_credit_policy
from govrisk.serving.models import LoadedModel, ModelOutput
from govrisk.serving.policy import CreditPolicy
from govrisk.serving.request import Applicants, RequestParser

log = logging.getLogger(__name__)
CHALLENGER_SLOTS = 2
BATCH_BUDGET_MS_PER_APPLICANT = 0.5  # a batch's challenger budget grows with its size


def arm_of(applicant_id: str, *, share: float, salt: str) -> str:
    """'challenger' for a stable `share` of applicants (by hashed id), else 'champion'.

    A plain sha256 with a public salt (`routing.salt`, in git) on purpose: the draw only has to be
    stable and even, not secret, and the arm is logged in the clear anyway. The pseudonym of the
    decision log is keyed (`applicant_hash`)."""
    h = hashlib.sha256(f"{salt}:{applicant_id}".encode()).digest()
    return "challenger" if int.from_bytes(h[:8], "big") / 2.0**64 < share else "champion"


def applicant_hash(applicant_id: str, key: bytes) -> str:
    """The decision log's pseudonym of an applicant id: HMAC-SHA256 under the secret applicant key
    (`govrisk.core.pseudonym`; the Scorer holds a `Pseudonymizer` of the same)."""
    return Pseudonymizer(key)(applicant_id)


def input_digest(record: Any) -> str:
    """sha256 of the request record in canonical JSON (keys sorted, no spaces, UTF-8, as orjson writes
    it): proves later what was scored, holds no data. orjson: json.dumps cost ~0.2 ms per applicant."""
    return hashlib.sha256(orjson.dumps(record, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()


@dataclass
class ChallengerResult:
    status: str  # ok | error | timeout | missing | busy | off
    output: ModelOutput | None = None
    ms: float | None = None
    error: str | None = None


class Scorer:
    """Champion and challenger, the parser, the policy and the master scale of one serving config."""

    def __init__(self, *, config: ServingConfig, pseudonym: Pseudonymizer | None = None) -> None:
        self.config = config
        # the applicant pseudonym key: refused (SigningKeyError, one line) when none is configured
        self.pseudonym = pseudonym or load_pseudonymizer(with_old=False)
        self.mode = config.routing.mode
        self.champion = LoadedModel(tag=config.champion, threads=config.onnx_threads)
        self.challenger: LoadedModel | None = None
        self.challenger_problem: str | None = None  # why a configured challenger is not loaded
        if config.challenger.tag and self.mode != "champion_only":
            try:
                self.challenger = LoadedModel(tag=config.challenger.tag, threads=config.onnx_threads)
            except Exception as e:  # the champion serves on; every request records it as missing
                self.challenger_problem = f"{type(e).__name__}: {e}"
                log.error("challenger %s not loaded, serving the champion only: %s", config.challenger.tag, e)
        contract = self.champion.builder.contract
        if self.challenger and self.challenger.builder.contract.name != contract.name:
            raise ValueError(
                f"challenger {self.challenger.tag} is for contract {self.challenger.builder.contract.name!r}, "
                f"the champion for {contract.name!r}"
            )
        lookback = max(
            m.builder.config.lookback_months for m in (self.champion, self.challenger) if m is not None
        )
        self.parser = RequestParser(contract=contract, lookback_months=lookback)
        raw_features = list(self.champion.builder.schema().raw_features)
        self.policy = CreditPolicy(
            config=load_credit_policy(config.policy),
            applicant_fields=set(self.parser.applicant_columns),
            raw_features=raw_features,
        )
        self._raw_pos = {name: j for j, name in enumerate(raw_features)}
        self.scale: MasterScale = load_master_scale()
        self._pool = ThreadPoolExecutor(max_workers=CHALLENGER_SLOTS, thread_name_prefix="challenger")
        self._slots = threading.BoundedSemaphore(CHALLENGER_SLOTS)

    # --- models ---------------------------------------------------------------------------------
    def features(self, model: LoadedModel, batch: Applicants) -> FeatureSet:
        return model.builder.transform(batch.applicants, batch.monthly)

    def _challenger_job(self, fs: FeatureSet | None, batch: Applicants) -> tuple[ModelOutput, float]:
        try:
            t0 = time.perf_counter()
            assert self.challenger is not None
            if fs is None:  # a different feature schema: its own transform, off the champion's path
                fs = self.features(self.challenger, batch)
            out = self.challenger.predict(fs)
            return out, (time.perf_counter() - t0) * 1000
        finally:
            self._slots.release()

    def _start_challenger(self, fs: FeatureSet, batch: Applicants) -> Any:
        if self.mode == "champion_only" or not self.config.challenger.tag:
            return ChallengerResult("off")
        if self.challenger is None:
            return ChallengerResult("missing", error=self.challenger_problem)
        if not self._slots.acquire(blocking=False):
            return ChallengerResult("busy", error="earlier challenger calls still running")
        shared = fs if self.challenger.schema_digest == self.champion.schema_digest else None
        return self._pool.submit(self._challenger_job, shared, batch), time.perf_counter()

    def _finish_challenger(self, started: Any, n: int) -> ChallengerResult:
        if isinstance(started, ChallengerResult):
            return started
        fut, t0 = started
        budget = self._budget_ms(n)
        remaining = budget / 1000 - (time.perf_counter() - t0)
        try:
            out, ms = fut.result() if fut.done() else fut.result(timeout=max(remaining, 0.0))
        except FutureTimeout:
            return ChallengerResult(
                "timeout", ms=(time.perf_counter() - t0) * 1000, error=f"over {budget:g} ms"
            )
        except Exception as e:
            log.warning("challenger %s failed: %s", self.config.challenger.tag, e)
            return ChallengerResult(
                "error", ms=(time.perf_counter() - t0) * 1000, error=f"{type(e).__name__}: {e}"
            )
        return ChallengerResult("ok", output=out, ms=ms)

    # --- decisions ------------------------------------------------------------------------------
    def _budget_ms(self, n: int) -> float:
        return self.config.challenger.budget_ms + (BATCH_BUDGET_MS_PER_APPLICANT * n if n > 1 else 0.0)

    def score(
        self,
        batch: Applicants,
        *,
        endpoint: str = "score",
        request_id: str | None = None,
        request_ids: list[str] | None = None,
    ) -> list[DecisionRecord]:
        """One decision record per applicant of a checked batch: features, the challenger started beside
        the champion and waited for (in this thread) at most until its budget is spent, then routing
        and the policy.

        Everything that depends on the champion alone (reasons, grades, its policy outcome, hashes,
        the record itself) is done while the challenger is still running, and only the challenger's
        fields are added after: the challenger's time overlaps the champion's decision work instead of
        adding to it (for a batch of 1,000, ~60 ms of records against ~60 ms of the CNN).

        `request_ids`: the applicants are separate requests decided together, one id each.
        """
        if request_ids is not None and len(request_ids) != len(batch):
            raise ValueError(f"need one request id per applicant, got {len(request_ids)=} for {len(batch)=}")
        t0 = time.perf_counter()
        fs = self.features(self.champion, batch)
        t_feat = time.perf_counter()
        started = self._start_challenger(fs, batch)
        champ = self.champion.predict(fs)
        t_champ = time.perf_counter()

        reasons = self.champion.reasons(champ, self.config.reason_codes)
        ids = batch.ids
        n = len(ids)
        routing = self.config.routing
        champ_grades = self.scale.grade(champ.pd)
        # Column positions, not DataFrame look-ups: a pandas column read costs more than the policy.
        raw_matrix = fs.raw.to_numpy()
        raw = {f: raw_matrix[:, self._raw_pos[f]] for f in self.policy.raw_fields}
        now = dt.datetime.now(dt.UTC)
        pseudonym = self.pseudonym
        date_col = self.champion.builder.contract.applicants.application_date
        # Python values (float, bool, str, datetime.date) of each applicant column in one C pass per
        # column, not one numpy scalar at a time: a batch's records cost less than its JSON.
        columns = {c: batch.applicants[c].tolist() for c in self.parser.applicant_columns}
        request_id = request_id or uuid.uuid4().hex
        challenger_model = self.challenger.tag if self.challenger else self.config.challenger.tag
        policy = self.policy.label
        features_ms, champion_ms = (t_feat - t0) * 1000, (t_champ - t_feat) * 1000
        records: list[DecisionRecord] = []
        inputs = []
        for i in range(n):
            if request_ids is not None:  # separate requests: each its own request and decision
                rid = decision_id = request_ids[i]
            else:
                rid, decision_id = request_id, request_id if n == 1 else f"{request_id}-{i}"
            arm = (
                arm_of(ids[i], share=routing.split_share, salt=routing.salt)
                if self.mode == "split"
                else "champion"
            )
            applicant = {c: v[i] for c, v in columns.items()}
            raw_i = {f: float(v[i]) for f, v in raw.items()}
            pd_i = float(champ.pd[i])
            outcome = self.policy.decide(pd_=pd_i, applicant=applicant, raw=raw_i)
            grade_i = str(champ_grades[i])
            inputs.append((applicant, raw_i))
            records.append(
                DecisionRecord(
                    decision_id=decision_id,
                    request_id=rid,
                    applicant_id=ids[i],
                    created_at=now,
                    endpoint=endpoint,
                    applicant_hash=pseudonym(ids[i]),
                    input_digest=input_digest(batch.records[i]),
                    application_date=applicant[date_col],
                    routing_mode=self.mode,
                    arm=arm,
                    decided_by="champion",
                    decision=outcome.decision,
                    hard_rule=outcome.hard_rule,
                    hard_rule_reason=outcome.hard_rule_reason,
                    pd=pd_i,
                    grade=grade_i,
                    rate=outcome.rate,
                    credit_limit=outcome.credit_limit,
                    reason_codes=reason_codes(outcome, reasons[i]),
                    champion_model=self.champion.tag,
                    champion_pd=pd_i,
                    champion_score=None if champ.score is None else float(champ.score[i]),
                    champion_grade=grade_i,
                    challenger_model=challenger_model,
                    policy=policy,
                    features_ms=features_ms,
                    champion_ms=champion_ms,
                    batch_size=n,
                )
            )

        ch = self._finish_challenger(started, n)
        total_ms = (time.perf_counter() - t0) * 1000
        ch_grades = self.scale.grade(ch.output.pd) if ch.output is not None else None
        for i, record in enumerate(records):
            record.challenger_status, record.challenger_error = ch.status, ch.error
            record.challenger_ms, record.total_ms = ch.ms, total_ms
            if ch.output is None:
                continue
            ch_pd = float(ch.output.pd[i])
            applicant, raw_i = inputs[i]
            # what the challenger would have decided (governance compares), or decides on its arm
            ch_outcome = self.policy.decide(pd_=ch_pd, applicant=applicant, raw=raw_i)
            ch_grade = str(ch_grades[i])
            record.challenger_pd, record.challenger_grade = ch_pd, ch_grade
            record.challenger_decision = ch_outcome.decision
            if record.arm == "challenger":
                record.set_decision(ch_outcome, pd=ch_pd, grade=ch_grade, reasons=reasons[i])
                record.decided_by = "challenger"
        return records

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
