"""The BentoML scoring service: `bentoml serve govrisk.serving.service:Scoring` (or `govrisk serve`).

Configuration comes from `$GOVRISK_SERVING_CONFIG` (a name in configs/serving/ or a YAML path;
default `default`), read once at import so that a bad config stops the server before it listens.

Routes: POST /score (one applicant), POST /score_batch (up to `max_batch`), both behind API keys;
GET /healthz, /livez, /readyz, /metrics and the OpenAPI docs (/, /docs.json) stay open.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import sys
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import bentoml
import orjson
import sqlalchemy as sa
from _bentoml_sdk.io_models import IORootModel
from starlette.responses import JSONResponse, Response

from govrisk.core.records import DecisionRecord
from govrisk.serving.admission import AdmissionMiddleware, Malformed, TooMany, count_applicants, parse_json
from govrisk.serving.config import ServingConfig, key_accepted, load_serving_config, startup_problem
from govrisk.serving.decision_log import DecisionLog, describe_error
from govrisk.serving.engine import Scorer
from govrisk.serving.openapi import OpenApiMiddleware, champion_source
from govrisk.serving.request import BadInput, FieldError, json_safe
from govrisk.serving.supervise import bind_worker_to_server

log = logging.getLogger("govrisk.serving")
CONFIG: ServingConfig = load_serving_config()
# Start-up checks, in the arbiter before it listens and in each worker (serving/supervise.py: a worker
# dies with its server; serving/config.py startup_problem: API keys or auth.open, the pseudonym key).
bind_worker_to_server()
if _problem := startup_problem(CONFIG):
    raise SystemExit(f"govrisk: refusing to start: {_problem}")
if CONFIG.auth.open:
    print(  # loud on purpose: an open endpoint decides for anyone who can reach it
        "govrisk: WARNING: auth.open is true: /score and /score_batch accept requests WITHOUT an API key",
        file=sys.stderr,
        flush=True,
    )
PROTECTED = {"/score", "/score_batch"}
EXAMPLE = json.loads((Path(__file__).parent / "example_request.json").read_text())

# --- Prometheus metrics (BentoML's wrapper: correct across worker processes) ----------------------
MODEL_LATENCY = bentoml.metrics.Histogram(
    name="govrisk_model_latency_seconds",
    documentation="Scoring time per request and model role (features: the shared transform)",
    labelnames=["role", "endpoint"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
CHALLENGER_FAILURES = bentoml.metrics.Counter(
    name="govrisk_challenger_failures_total",
    documentation="Requests where the challenger raised, was missing, busy or over its latency budget",
    labelnames=["status"],
)
COMPARISONS = bentoml.metrics.Counter(
    name="govrisk_comparisons_total",
    documentation="Applicants scored by both champion and challenger",
    labelnames=[],
)
DISAGREEMENTS = bentoml.metrics.Counter(
    name="govrisk_disagreements_total",
    documentation="Champion-challenger disagreements: different grade, or a different decision",
    labelnames=["kind"],
)
DECISIONS = bentoml.metrics.Counter(
    name="govrisk_decisions_total",
    documentation="Decisions by outcome and deciding model",
    labelnames=["decision", "decided_by"],
)
BAD_REQUESTS = bentoml.metrics.Counter(
    name="govrisk_bad_requests_total",
    documentation="Requests refused as bad input (4xx), never logged as decisions",
    labelnames=["endpoint", "status"],
)


class _RootBody(IORootModel[Any]):
    """The whole JSON body as one value (BentoML's root input), so the request parser sees every key.

    Named API arguments would make BentoML build a model that silently drops unknown top-level keys;
    the contract requires a 422 naming such a field. Two BentoML defaults are replaced: a body that
    is not JSON becomes `Malformed` (BentoML's `json.loads` error would be a 500), and the request
    path skips BentoML's rebuilding of the JSON schema on every call. `IORootModel` and
    `__root_input__` are BentoML 1.4 internals (the version is pinned); tests/test_serving.py covers
    unknown keys, malformed JSON and the OpenAPI example.
    """

    __root_input__ = True
    openapi: ClassVar[dict[str, Any]] = {}
    max_applicants: ClassVar[int | None] = None  # /score_batch: counted in the raw bytes first

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> _RootBody:
        # serving/admission.py: orjson, then json for NaN, big integers and lone surrogates
        if cls.max_applicants is not None and (n := count_applicants(json_data)) > cls.max_applicants:
            return cls.model_validate(TooMany(n), **kwargs)  # refused before a byte is parsed
        return cls.model_validate(parse_json(json_data), **kwargs)

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {**cls.openapi, "root_input": True}


def _body_spec(name: str, schema: dict[str, Any], max_applicants: int | None = None) -> type[_RootBody]:
    return type(name, (_RootBody,), {"openapi": schema, "max_applicants": max_applicants})


_TABLE = {"type": "array", "items": {"type": "object"}}
SCORE_BODY = _body_spec(
    "ScoreBody",
    {
        "type": "object",
        "description": "One applicant; no other keys (an unknown key is a 422 naming it)",
        "properties": {
            "applicant": {
                "type": "object",
                "description": "The applicant's fields (contract `applicants` table, without the label)",
            },
            "tax_monthly": {
                **_TABLE,
                "description": "Monthly tax records, at most 24 months before the application month",
            },
            "social_security_monthly": {
                **_TABLE,
                "description": "Monthly social-security records, same window",
            },
        },
        "required": ["applicant"],
        "additionalProperties": False,
        "example": EXAMPLE,
    },
)
BATCH_BODY = _body_spec(
    "ScoreBatchBody",
    {
        "type": "object",
        "properties": {
            "applicants": {**_TABLE, "description": "A list of request bodies as /score takes them"}
        },
        "required": ["applicants"],
        "additionalProperties": False,
        "example": {"applicants": [EXAMPLE]},
    },
    max_applicants=CONFIG.max_batch,
)


def _answer(payload: dict[str, Any]) -> Response:
    """The decision as JSON (orjson), without BentoML's pydantic round trip of the dict and the JSON
    schema it rebuilds for every response (together about a millisecond per /score, more per batch)."""
    return Response(orjson.dumps(payload), media_type="application/json")


def _malformed(endpoint: str, body: Malformed) -> JSONResponse:
    BAD_REQUESTS.labels(endpoint=endpoint, status="400").inc()
    return _error(400, "body", None, f"body is not JSON ({body.problem})", "bad_json")


class LogUnavailable(Exception):
    """The decision log did not commit a request's record: it is answered 503, not acknowledged.

    The body carries a fixed message and `error_id` only; the database's error (one line, without SQL
    or parameters) goes to the server log under the same id. The database's message can hold the
    INSERT's parameters (the decision that was not recorded) and the database host."""

    def __init__(self, error_id: str) -> None:
        super().__init__(f"decision log unavailable (error id {error_id})")
        self.error_id = error_id


def _log_unavailable(e: LogUnavailable) -> JSONResponse:
    return JSONResponse(
        {
            "error": "decision_log_unavailable",
            "message": "the decision could not be recorded, so it is not given; retry later with the "
            "same Idempotency-Key",
            "error_id": e.error_id,
        },
        status_code=503,
        headers={"Retry-After": "1"},
    )


# --- idempotency: a client-chosen request id (docs/guides/integrator.md, "Idempotent retries") ----
IDEMPOTENCY_HEADER = "Idempotency-Key"
_IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9._:-]{1,40}$")  # /score_batch appends "-<position>": <= 64


class Conflict:
    """An Idempotency-Key already on record for another request: answered 409, nothing logged."""

    def __init__(self, key: str, message: str) -> None:
        self.key, self.message = key, message

    def response(self) -> JSONResponse:
        return _error(409, IDEMPOTENCY_HEADER, self.key, self.message, "idempotency_conflict")


class Replay:
    """The decision on record for a retried request (same key, same body): answered again, not logged."""

    def __init__(self, record: DecisionRecord) -> None:
        self.record = record


def _idempotency_key() -> str | JSONResponse | None:
    """The request's Idempotency-Key header: None if absent, a 422 if malformed."""
    value = Scoring.context.request.headers.get(IDEMPOTENCY_HEADER)
    if value is None:
        return None
    if not _IDEMPOTENCY_KEY.match(value):
        message = f"{IDEMPOTENCY_HEADER}: must be 1..40 characters of A-Z a-z 0-9 . _ : - (a UUID fits)"
        return _error(422, IDEMPOTENCY_HEADER, value[:100], message, "bad_input")
    return value


def _replayed(payload: dict[str, Any]) -> Response:
    response = _answer(payload)
    response.headers["Idempotent-Replayed"] = "true"
    return response


def _applicant_id(body: Any) -> Any:
    """The applicant id a /score body claims (checked later), to keep one request per id in a batch."""
    applicant = body.get("applicant") if isinstance(body, dict) else None
    value = applicant.get("applicant_id") if isinstance(applicant, dict) else None
    return value if isinstance(value, str) else None


def _error(status: int, field: str, value: Any, message: str, kind: str) -> JSONResponse:
    return JSONResponse(
        {"error": kind, "field": field, "value": value, "message": message, "errors": []}, status_code=status
    )


class ApiKeyMiddleware:
    """401 without a valid key, 413 above the payload limit, on the protected routes only.

    The body is read here (bounded by the limit) and replayed, so an oversized request is refused
    before anything parses it. Keys come as `Authorization: Bearer <key>` or `X-API-Key: <key>`.
    """

    def __init__(self, app: Any, *, hashes: frozenset[str], limits: dict[str, int]) -> None:
        self.app = app
        self.hashes = hashes
        self.limits = limits

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in PROTECTED:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        if not key and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        if not key_accepted(key, self.hashes):
            BAD_REQUESTS.labels(endpoint=scope["path"], status="401").inc()
            resp = JSONResponse(
                {"error": "unauthorized", "message": "a valid API key is required (X-API-Key or Bearer)"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await resp(scope, receive, send)
            return
        limit = self.limits[scope["path"]]
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, receive, send, int(declared), limit)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                await self._too_large(scope, receive, send, size, limit)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        payload = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": payload, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: dict, receive: Any, send: Any, size: int, limit: int) -> None:
        BAD_REQUESTS.labels(endpoint=scope["path"], status="413").inc()
        resp = _error(
            413, "body", size, f"body of {size} bytes exceeds the limit of {limit} bytes", "too_large"
        )
        await resp(scope, receive, send)


@bentoml.service(
    name=CONFIG.name,
    workers=CONFIG.workers,
    http={"host": CONFIG.host, "port": CONFIG.port},
    traffic={"timeout": 60},
    logging={"access": {"enabled": False}},  # the decision log is the record; access lines cost latency
    tracing={"excluded_urls": [] if CONFIG.observability.trace_scoring else sorted(PROTECTED)},
)
class Scoring:
    """Champion and challenger scoring with a durable decision log (see the module docstring)."""

    def __init__(self) -> None:
        self.config = CONFIG
        self.scorer = Scorer(config=CONFIG)
        dl = CONFIG.decision_log
        self.log = DecisionLog(
            url=dl.resolved_url(),
            table=dl.table,
            schema=dl.schema_,
            sqlite_synchronous=dl.sqlite_synchronous,
            connect_timeout_s=dl.connect_timeout_s,
            write_timeout_ms=dl.write_timeout_ms,
            ready_timeout_ms=dl.ready_timeout_ms,
            ready_cache_s=dl.ready_cache_s,
        )
        log.info(
            "serving champion %s, challenger %s (%s), routing %s; decision log %s",
            self.scorer.champion.tag,
            self.scorer.challenger.tag if self.scorer.challenger else None,
            self.scorer.challenger_problem or "loaded",
            CONFIG.routing.mode,
            self.log.where,
        )
        # /score micro-batching (see `_score_one`): requests waiting for the scoring thread.
        self._waiting: list[tuple[Any, asyncio.Future, str | None]] = []  # body, answer, Idempotency-Key
        self._drainer: asyncio.Task | None = None  # the one drain task, while it runs
        self._scoring_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="score")
        # Everything loaded so far (BentoML, onnxruntime, pandas, the models) lives as long as the
        # worker: frozen, the cyclic collector no longer walks it on every full collection. A request
        # of a thousand applicants allocates enough containers to set off several: collections took
        # ~49 ms of each ~230 ms batch, ~13 ms once frozen (one worker: 4,300 -> 5,500 applicants/s).
        gc.freeze()

    def __is_ready__(self) -> bool:
        # the log's cached write probe: bounded by decision_log.ready_timeout_ms, never hangs
        return self.scorer.champion is not None and self.log.ready()

    async def _decide(
        self, bodies: list[Any], *, endpoint: str, prefix: str, key: str | None = None
    ) -> list[DecisionRecord] | JSONResponse | Replay:
        """/score_batch: one request, many applicants, decided in a worker thread. With an
        Idempotency-Key: its decisions, or those on record for the same key and body (a `Replay` of
        each), or a 409."""
        try:
            batch = self.scorer.parser.parse(bodies, prefix=prefix)
        except BadInput as e:
            BAD_REQUESTS.labels(endpoint=f"/{endpoint}", status="422").inc()
            return JSONResponse(e.body(), status_code=422)
        try:
            results = await asyncio.to_thread(
                self._decide_and_record, batch, endpoint=endpoint, request_id=key, keyed=key is not None
            )
        except LogUnavailable as e:
            return _log_unavailable(e)
        if isinstance(results, Conflict):
            return results.response()
        if isinstance(results, list) and results and isinstance(results[0], Replay):
            return results  # type: ignore[return-value]
        self._observe(results, endpoint)  # type: ignore[arg-type]
        return results  # type: ignore[return-value]

    def _decide_and_record(
        self, batch: Any, *, keyed: bool | list[bool] = False, **score: Any
    ) -> list[DecisionRecord | Replay | Conflict] | Conflict:
        """Decide a checked batch and commit its records in one transaction, in the calling thread;
        LogUnavailable if the commit fails (a decision that is not on record is never acknowledged).

        `keyed`: which records carry a client's Idempotency-Key as their request id. /score (a list,
        one flag per request): a keyed record whose decision id is already on record is not logged;
        it becomes a `Replay` of the logged decision when that came from the same body, else a
        `Conflict`. /score_batch (True: the whole request is keyed): all rows or none; a key already
        on record replays the whole logged request or is one `Conflict`."""
        records = self.scorer.score(batch, **score)
        flags = keyed if isinstance(keyed, list) else [keyed] * len(records)
        whole = keyed is True
        try:
            try:
                if whole:
                    self.log.write([r.log_row() for r in records])
                    return list(records)
                skipped = self.log.write(
                    [r.log_row() for r, k in zip(records, flags, strict=True) if not k],
                    keyed=[r.log_row() for r, k in zip(records, flags, strict=True) if k],
                )
            except sa.exc.IntegrityError:
                if not whole:
                    raise
                return self._replay_request(records)
            if not skipped:
                return list(records)
            on_record = {row["decision_id"]: row for row in self.log.find("decision_id", sorted(skipped))}
        except (LogUnavailable, sa.exc.IntegrityError):
            raise
        except Exception as e:
            raise self._unavailable(e) from None
        return [
            self._replay_one(r, on_record.get(r.decision_id)) if r.decision_id in skipped else r
            for r in records
        ]

    def _unavailable(self, e: Exception) -> LogUnavailable:
        error_id = uuid.uuid4().hex
        log.error("decision log unavailable (error id %s): %s", error_id, describe_error(e))
        return LogUnavailable(error_id)

    def _from_row(self, record: DecisionRecord, row: dict[str, Any]) -> DecisionRecord:
        """The logged decision `row` as a record, with the response-only fields of `record` (a retry
        of the same body: the same applicant)."""
        reasons = {rule.name: rule.reason for rule in self.scorer.policy.config.hard_rules}
        values = {**row, "reason_codes": json.loads(row["reason_codes"])}
        return DecisionRecord(
            **values,
            applicant_id=record.applicant_id,
            hard_rule_reason=reasons.get(row["hard_rule"]) if row["hard_rule"] else None,
            batch_size=record.batch_size,
        )

    def _replay_one(self, record: DecisionRecord, row: dict[str, Any] | None) -> Replay | Conflict:
        key = record.request_id
        if row is None:  # refused as a duplicate, gone when looked up: not a decision on record
            return Conflict(key, f"{IDEMPOTENCY_HEADER} {key!r} collides with a decision id on record")
        if row["request_id"] != key or row["endpoint"] != record.endpoint:
            return Conflict(
                key, f"{IDEMPOTENCY_HEADER} {key!r} is already used by another request (another endpoint)"
            )
        if row["input_digest"] != record.input_digest:
            return Conflict(
                key, f"{IDEMPOTENCY_HEADER} {key!r} was already used with a different body; use a new key"
            )
        return Replay(self._from_row(record, row))

    def _replay_request(self, records: list[DecisionRecord]) -> list[Replay] | Conflict:
        """/score_batch with a key whose decision ids are on record: the logged request, if the same."""
        key = records[0].request_id
        try:
            rows = {row["decision_id"]: row for row in self.log.find("request_id", [key])}
        except Exception as e:
            raise self._unavailable(e) from None
        if len(rows) != len(records):
            return Conflict(
                key,
                f"{IDEMPOTENCY_HEADER} {key!r} was already used with a different body "
                f"({len(rows)} applicants on record, {len(records)} sent); use a new key",
            )
        replays = [self._replay_one(r, rows.get(r.decision_id)) for r in records]
        conflict = next((c for c in replays if isinstance(c, Conflict)), None)
        return conflict or replays  # type: ignore[return-value]

    # --- /score: concurrent requests decided together ----------------------------------------------
    # Every /score request joins `_waiting`; one drain task at a time hands everything waiting (up to
    # `max_batch`, one request per applicant id) to the scoring thread, which decides it as one batch:
    # parsing, features, both models, the challenger hand-off and the log commit are then paid once per
    # batch, not once per request (one applicant costs ~5 ms of CPU, a thousand ~0.5 s). Nothing waits
    # for a batch to fill: an idle server decides a lone request at once, a busy one decides together
    # whatever arrived while it was busy (adaptive batching), and commits each batch's records in one
    # transaction.
    async def _score_one(
        self, body: Any, key: str | None = None
    ) -> DecisionRecord | BadInput | LogUnavailable | Replay | Conflict:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._waiting.append((body, fut, key))
        if self._drainer is None or self._drainer.done():
            # the drain loop ends, with no await after its last look at `_waiting`, in the step that
            # sees it empty: a request appended afterwards always finds it done and starts another
            self._drainer = loop.create_task(self._drain())  # kept: the loop holds tasks weakly
        return await fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            take, rest, ids, keys = [], [], set(), set()
            for item in self._waiting:
                applicant_id, key = _applicant_id(item[0]), item[2]
                if len(take) < self.config.max_batch and applicant_id not in ids and key not in keys:
                    take.append(item)
                    if applicant_id is not None:
                        ids.add(applicant_id)
                    if key is not None:
                        keys.add(key)
                else:  # a second request for the same applicant (or key) goes in the next batch
                    rest.append(item)
            self._waiting = rest
            try:
                results = await loop.run_in_executor(
                    self._scoring_thread,
                    self._decide_requests,
                    [body for body, _, _ in take],
                    [key for _, _, key in take],
                )
            except Exception as e:  # a bug, not bad input: each request of the batch gets it (500)
                log.exception("scoring a batch of %d requests failed", len(take))
                results = [e] * len(take)
            for (_, fut, _), result in zip(take, results, strict=True):
                if not fut.done():  # a client that left has its future cancelled
                    fut.set_result(result)

    def _decide_requests(self, bodies: list[Any], keys: list[str | None]) -> list[Any]:
        """In the scoring thread: a record, a BadInput, a LogUnavailable or an exception per request.

        One request never changes another's answer: if deciding the batch together raises anything
        but bad input or an uncommitted log (a bug, or input the checks missed), nothing was logged,
        and each request is decided again alone, so only the one that raises answers 500.
        """
        try:
            return self._decide_together(bodies, keys)
        except Exception:
            if len(bodies) == 1:
                raise
            log.exception("deciding %d requests together failed; deciding each alone", len(bodies))
        results: list[Any] = []
        for body, key in zip(bodies, keys, strict=True):
            try:
                results.extend(self._decide_together([body], [key]))
            except Exception as e:
                results.append(e)
        return results

    def _decide_together(self, bodies: list[Any], keys: list[str | None]) -> list[Any]:
        """`_decide_requests` for requests decided as one batch (it raises what a bug raises)."""
        parser = self.scorer.parser
        results: list[Any] = [None] * len(bodies)
        good = list(range(len(bodies)))
        try:
            batch = parser.parse(bodies)
        except BadInput:  # someone's input is bad: check each request alone, for its own errors
            good = []
            for i, body in enumerate(bodies):
                try:
                    parser.parse([body])
                    good.append(i)
                except BadInput as e:
                    results[i] = e
            if not good:
                return results
            batch = parser.parse([bodies[i] for i in good])
        try:
            records = self._decide_and_record(
                batch,
                endpoint="score",
                request_ids=[keys[i] or uuid.uuid4().hex for i in good],  # a key is the request id
                keyed=[keys[i] is not None for i in good],
            )
        except LogUnavailable as e:
            for i in good:
                results[i] = e
            return results
        try:  # committed: a failing metric must not send the batch round again (a second record)
            new = [r for r in records if isinstance(r, DecisionRecord)]  # not replays or conflicts
            if new:
                self._observe(new, "score")
        except Exception:
            log.exception("recording metrics failed")
        for i, record in zip(good, records, strict=True):
            results[i] = record
        return results

    def _observe(self, records: list[DecisionRecord], endpoint: str) -> None:
        r0 = records[0]
        MODEL_LATENCY.labels(role="features", endpoint=endpoint).observe(r0.features_ms / 1000)
        MODEL_LATENCY.labels(role="champion", endpoint=endpoint).observe(r0.champion_ms / 1000)
        if r0.challenger_ms is not None:
            MODEL_LATENCY.labels(role="challenger", endpoint=endpoint).observe(r0.challenger_ms / 1000)
        if r0.challenger_status not in ("ok", "off"):
            CHALLENGER_FAILURES.labels(status=r0.challenger_status).inc()
        # Counted here, then one increment per label set: each increment of a multiprocess metric
        # writes its file, and one per applicant took 7 % of a worker's time on /score_batch.
        decisions = Counter((r.decision, r.decided_by) for r in records)
        compared = [r for r in records if r.challenger_pd is not None]
        grade = sum(r.challenger_grade != r.champion_grade for r in compared)
        decision = sum(r.decided_by == "champion" and r.challenger_decision != r.decision for r in compared)
        for (outcome, decided_by), count in decisions.items():
            DECISIONS.labels(decision=outcome, decided_by=decided_by).inc(count)
        if compared:
            COMPARISONS.inc(len(compared))
        for kind, count in (("grade", grade), ("decision", decision)):
            if count:
                DISAGREEMENTS.labels(kind=kind).inc(count)

    # Both routes take the whole JSON body as one positional-only argument (BentoML's root input):
    # named arguments would make BentoML build a model that silently drops unknown top-level keys,
    # and the contract requires a 422 naming such a field. The request parser checks the body.
    @bentoml.api(route="/score", input_spec=SCORE_BODY)
    async def score(self, body: Any, /) -> dict[str, Any]:
        """Decide one applicant: champion PD, grade, decision, price, limit, reasons; challenger beside.

        Example body: see `serving/example_request.json`.
        """
        if isinstance(body, Malformed):
            return _malformed("/score", body)  # type: ignore[return-value]
        tables = self.scorer.parser.contract.monthly
        if isinstance(body, dict) and any(body.get(t, ()) is None for t in tables):
            # a null table means no records, as /score has always read it (and digests it)
            body = {k: v for k, v in body.items() if not (k in tables and v is None)}
        key = _idempotency_key()
        if isinstance(key, JSONResponse):
            BAD_REQUESTS.labels(endpoint="/score", status="422").inc()
            return key  # type: ignore[return-value]
        result = await self._score_one(body, key)
        if isinstance(result, BadInput):
            BAD_REQUESTS.labels(endpoint="/score", status="422").inc()
            return JSONResponse(result.body(), status_code=422)  # type: ignore[return-value]
        if isinstance(result, LogUnavailable):
            return _log_unavailable(result)  # type: ignore[return-value]
        if isinstance(result, Conflict):
            BAD_REQUESTS.labels(endpoint="/score", status="409").inc()
            return result.response()  # type: ignore[return-value]
        if isinstance(result, Replay):
            return _replayed(result.record.response())  # type: ignore[return-value]
        if isinstance(result, Exception):
            raise result
        return _answer(result.response())  # type: ignore[return-value]

    @bentoml.api(route="/score_batch", input_spec=BATCH_BODY)
    async def score_batch(self, body: Any, /) -> dict[str, Any]:
        """Decide up to `max_batch` applicants in one call (parsing, features, models and the log write
        run vectorised over the batch).

        Example body: {"applicants": [<a /score body>, ...]}
        """
        if isinstance(body, Malformed):
            return _malformed("/score_batch", body)  # type: ignore[return-value]
        if isinstance(body, TooMany):
            return self._refuse(  # type: ignore[return-value]
                "applicants", body.count, f"must hold 1..{self.config.max_batch} applicants"
            )
        if not isinstance(body, dict):
            return self._refuse("body", body, 'must be a JSON object {"applicants": [...]}')  # type: ignore[return-value]
        for k in body:
            if k != "applicants":
                return self._refuse(k, body[k], "unknown field; expected ['applicants']")  # type: ignore[return-value]
        applicants = body.get("applicants")
        if not isinstance(applicants, list):
            return self._refuse("applicants", applicants, "must be a JSON array of /score bodies")  # type: ignore[return-value]
        if not applicants or len(applicants) > self.config.max_batch:
            return self._refuse(  # type: ignore[return-value]
                "applicants", len(applicants), f"must hold 1..{self.config.max_batch} applicants"
            )
        key = _idempotency_key()
        if isinstance(key, JSONResponse):
            BAD_REQUESTS.labels(endpoint="/score_batch", status="422").inc()
            return key  # type: ignore[return-value]
        result = await self._decide(applicants, endpoint="score_batch", prefix="applicants[{i}].", key=key)
        if isinstance(result, JSONResponse):
            if result.status_code == 409:
                BAD_REQUESTS.labels(endpoint="/score_batch", status="409").inc()
            return result  # type: ignore[return-value]
        if result and isinstance(result[0], Replay):
            replayed = [r.record.response() for r in result]  # type: ignore[union-attr]
            return _replayed({"request_id": key, "decisions": replayed})  # type: ignore[return-value]
        decisions = [r.response() for r in result]  # type: ignore[union-attr]
        return _answer({"request_id": result[0].request_id, "decisions": decisions})  # type: ignore[return-value]

    @staticmethod
    def _refuse(field: str, value: Any, message: str) -> JSONResponse:
        """A 422 for a malformed /score_batch envelope, in the bad-input format of the parser."""
        BAD_REQUESTS.labels(endpoint="/score_batch", status="422").inc()
        return JSONResponse(BadInput([FieldError(field, json_safe(value), message)]).body(), status_code=422)

    @bentoml.on_shutdown
    def _close(self) -> None:
        self._scoring_thread.shutdown(wait=True)
        self.scorer.close()
        self.log.close()


# Outermost (BentoML adds middlewares outside-in): media type and capacity before the key and the body.
Scoring.add_asgi_middleware(OpenApiMiddleware, source=champion_source(CONFIG))  # GET /docs.json only
Scoring.add_asgi_middleware(
    AdmissionMiddleware,
    paths=frozenset(PROTECTED),
    max_in_flight=CONFIG.max_in_flight,
    max_batches=CONFIG.max_batches_in_flight,
    on_refuse=lambda path, status: BAD_REQUESTS.labels(endpoint=path, status=status).inc(),
)
Scoring.add_asgi_middleware(
    ApiKeyMiddleware,
    hashes=None if CONFIG.auth.open else CONFIG.key_hashes(),  # None: open (auth.open)
    limits={"/score": CONFIG.max_payload_kib * 1024, "/score_batch": CONFIG.max_batch_payload_kib * 1024},
)
