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
from typing import Annotated, Any

import bentoml
from pydantic import Field
from starlette.responses import JSONResponse

from serving.config import ServingConfig, key_accepted, load_serving_config
from serving.decision_log import DecisionLog
from serving.engine import ChallengerResult, Scorer, log_row, response_of
from serving.request import BadInput, FieldError

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

    @bentoml.api(route="/score")
    async def score(
        self,
        applicant: Annotated[
            Any,
            Field(
                description="The applicant's fields (contract `applicants` table, without the label)",
                examples=[EXAMPLE["applicant"]],
            ),
        ],
        tax_monthly: Annotated[
            Any,
            Field(
                description="Monthly tax records, at most 24 months before the application month",
                examples=[EXAMPLE["tax_monthly"]],
            ),
        ] = None,
        social_security_monthly: Annotated[
            Any,
            Field(
                description="Monthly social-security records, same window",
                examples=[EXAMPLE["social_security_monthly"]],
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Decide one applicant: champion PD, grade, decision, price, limit, reasons; challenger beside.

        Example body: see `serving/example_request.json`.
        """
        body: dict[str, Any] = {"applicant": applicant}
        for name, rows in (
            ("tax_monthly", tax_monthly),
            ("social_security_monthly", social_security_monthly),
        ):
            if rows is not None:
                body[name] = rows
        result = await self._decide([body], endpoint="score", prefix="")
        if isinstance(result, JSONResponse):
            return result  # type: ignore[return-value]
        return response_of(result[0])

    @bentoml.api(route="/score_batch")
    async def score_batch(
        self, applicants: Annotated[Any, Field(description="A list of request bodies as /score takes them")]
    ) -> dict[str, Any]:
        """Decide up to `max_batch` applicants in one call (features and models run vectorised).

        Example body: {"applicants": [<a /score body>, ...]}
        """
        if not isinstance(applicants, list):
            BAD_REQUESTS.labels(endpoint="/score_batch", status="422").inc()
            v = (
                applicants
                if isinstance(applicants, str | int | float | bool) or applicants is None
                else "object"
            )
            return _error(422, "applicants", v, "must be a JSON array of /score bodies", "bad_input")  # type: ignore[return-value]
        if not applicants or len(applicants) > self.config.max_batch:
            BAD_REQUESTS.labels(endpoint="/score_batch", status="422").inc()
            e = BadInput(
                [
                    FieldError(
                        "applicants", len(applicants), f"must hold 1..{self.config.max_batch} applicants"
                    )
                ]
            )
            return JSONResponse(e.body(), status_code=422)  # type: ignore[return-value]
        result = await self._decide(applicants, endpoint="score_batch", prefix="applicants[{i}].")
        if isinstance(result, JSONResponse):
            return result  # type: ignore[return-value]
        return {"request_id": result[0]["request_id"], "decisions": [response_of(r) for r in result]}

    @bentoml.on_shutdown
    def _close(self) -> None:
        self.scorer.close()
        self.log.close()


Scoring.add_asgi_middleware(
    ApiKeyMiddleware,
    hashes=CONFIG.key_hashes(),
    limits={"/score": CONFIG.max_payload_kib * 1024, "/score_batch": CONFIG.max_batch_payload_kib * 1024},
)
