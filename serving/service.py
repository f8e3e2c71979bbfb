"""The BentoML scoring service: `bentoml serve serving.service:Scoring` (or `govrisk serve`).

Configuration comes from `$GOVRISK_SERVING_CONFIG` (a name in configs/serving/ or a YAML path;
default `default`), read once at import so that a bad config stops the server before it listens.

Routes: POST /score (one applicant), POST /score_batch (up to `max_batch`), both behind API keys;
GET /healthz, /livez, /readyz, /metrics and the OpenAPI docs (/, /docs.json) stay open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import bentoml
from _bentoml_sdk.io_models import IORootModel
from starlette.responses import JSONResponse, Response

from serving.config import ServingConfig, key_accepted, load_serving_config
from serving.decision_log import DecisionLog
from serving.engine import ChallengerResult, Scorer, log_row, response_of
from serving.request import BadInput, FieldError, json_safe

log = logging.getLogger("govrisk.serving")
CONFIG: ServingConfig = load_serving_config()
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


class Malformed:
    """A body that is not JSON: handed to the API function, which answers a 400 in the usual format."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


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

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> _RootBody:
        try:
            parsed = json.loads(json_data or b"{}")
        except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
            parsed = Malformed(f"{type(e).__name__}: {e}")
        return cls.model_validate(parsed, **kwargs)

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {**cls.openapi, "root_input": True}


def _body_spec(name: str, schema: dict[str, Any]) -> type[_RootBody]:
    return type(name, (_RootBody,), {"openapi": schema})


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
)


def _answer(payload: dict[str, Any]) -> Response:
    """The decision as JSON, the same bytes BentoML writes for a returned dict (`json.dumps` with its
    defaults), without BentoML's pydantic round trip of the dict and the JSON schema it rebuilds for
    every response (together about a millisecond per /score, more per batch)."""
    return Response(json.dumps(payload).encode(), media_type="application/json")


def _malformed(endpoint: str, body: Malformed) -> JSONResponse:
    BAD_REQUESTS.labels(endpoint=endpoint, status="400").inc()
    return _error(400, "body", None, f"body is not JSON ({body.problem})", "bad_json")


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
)
class Scoring:
    """Champion and challenger scoring with a durable decision log (see the module docstring)."""

    def __init__(self) -> None:
        self.config = CONFIG
        self.scorer = Scorer(config=CONFIG)
        dl = CONFIG.decision_log
        self.log = DecisionLog(
            url=dl.resolved_url(), table=dl.table, schema=dl.schema_, sqlite_synchronous=dl.sqlite_synchronous
        )
        log.info(
            "serving champion %s, challenger %s (%s), routing %s; decision log %s",
            self.scorer.champion.tag,
            self.scorer.challenger.tag if self.scorer.challenger else None,
            self.scorer.challenger_problem or "loaded",
            CONFIG.routing.mode,
            self.log.where,
        )

    def __is_ready__(self) -> bool:
        return self.scorer.champion is not None and self.log._writer.is_alive()

    async def _decide(self, bodies: list[Any], *, endpoint: str, prefix: str) -> list[dict] | JSONResponse:
        try:
            batch = self.scorer.parser.parse(bodies, prefix=prefix)
        except BadInput as e:
            BAD_REQUESTS.labels(endpoint=f"/{endpoint}", status="422").inc()
            return JSONResponse(e.body(), status_code=422)
        if endpoint == "score":
            # One applicant is ~2 ms of CPU: cheaper inline than a thread hop. The challenger runs in
            # its own thread and is awaited, within its budget, without blocking other requests.
            pending = self.scorer.begin(batch)
            if not isinstance(pending.started, ChallengerResult):
                fut = pending.started[0]
                wait = self.scorer.challenger_wait(pending)
                if wait > 0 and not fut.done():
                    # shield: a timeout abandons the challenger call, it does not cancel it mid-run
                    with contextlib.suppress(Exception):  # timeout or its own error: collect() reports it
                        await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), wait)
            records = self.scorer.finish(pending, self.scorer.collect(pending), endpoint=endpoint)
        else:
            records = await asyncio.to_thread(self.scorer.score, batch, endpoint=endpoint)
        try:
            await asyncio.wrap_future(self.log.submit([log_row(r) for r in records]))
        except Exception as e:  # never acknowledge a decision that is not on record
            log.exception("decision log write failed")
            return JSONResponse(
                {"error": "decision_log_unavailable", "message": f"{type(e).__name__}: {e}"}, status_code=503
            )
        self._observe(records, endpoint)
        return records

    def _observe(self, records: list[dict], endpoint: str) -> None:
        r0 = records[0]
        MODEL_LATENCY.labels(role="features", endpoint=endpoint).observe(r0["features_ms"] / 1000)
        MODEL_LATENCY.labels(role="champion", endpoint=endpoint).observe(r0["champion_ms"] / 1000)
        if r0["challenger_ms"] is not None:
            MODEL_LATENCY.labels(role="challenger", endpoint=endpoint).observe(r0["challenger_ms"] / 1000)
        if r0["challenger_status"] not in ("ok", "off"):
            CHALLENGER_FAILURES.labels(status=r0["challenger_status"]).inc()
        for r in records:
            DECISIONS.labels(decision=r["decision"], decided_by=r["decided_by"]).inc()
            if r["challenger_pd"] is not None:
                COMPARISONS.inc()
                if r["challenger_grade"] != r["champion_grade"]:
                    DISAGREEMENTS.labels(kind="grade").inc()
                champion_decision = r["decision"] if r["decided_by"] == "champion" else None
                if champion_decision and r["challenger_decision"] != champion_decision:
                    DISAGREEMENTS.labels(kind="decision").inc()

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
        result = await self._decide([body], endpoint="score", prefix="")
        if isinstance(result, JSONResponse):
            return result  # type: ignore[return-value]
        return _answer(response_of(result[0]))  # type: ignore[return-value]

    @bentoml.api(route="/score_batch", input_spec=BATCH_BODY)
    async def score_batch(self, body: Any, /) -> dict[str, Any]:
        """Decide up to `max_batch` applicants in one call (parsing, features, models and the log write
        run vectorised over the batch).

        Example body: {"applicants": [<a /score body>, ...]}
        """
        if isinstance(body, Malformed):
            return _malformed("/score_batch", body)  # type: ignore[return-value]
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
        result = await self._decide(applicants, endpoint="score_batch", prefix="applicants[{i}].")
        if isinstance(result, JSONResponse):
            return result  # type: ignore[return-value]
        decisions = [response_of(r) for r in result]
        return _answer({"request_id": result[0]["request_id"], "decisions": decisions})  # type: ignore[return-value]

    @staticmethod
    def _refuse(field: str, value: Any, message: str) -> JSONResponse:
        """A 422 for a malformed /score_batch envelope, in the bad-input format of the parser."""
        BAD_REQUESTS.labels(endpoint="/score_batch", status="422").inc()
        return JSONResponse(BadInput([FieldError(field, json_safe(value), message)]).body(), status_code=422)

    @bentoml.on_shutdown
    def _close(self) -> None:
        self.scorer.close()
        self.log.close()


Scoring.add_asgi_middleware(
    ApiKeyMiddleware,
    hashes=CONFIG.key_hashes(),
    limits={"/score": CONFIG.max_payload_kib * 1024, "/score_batch": CONFIG.max_batch_payload_kib * 1024},
)
