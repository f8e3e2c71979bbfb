"""What a scoring request must pass before anything parses it: its media type, the worker's capacity,
and (for /score_batch) a count of its applicants; and the JSON parsing of the body itself.

Every refusal here is a 4xx or a 503 in the bad-input format (`error`, `field`, `value`, `message`),
never a 500, and costs at most a scan of the raw bytes.

Memory per worker is bounded by what may be in flight at once (see docs/configs/serving.md, "Memory and
back-pressure"): at most `max_in_flight` scoring requests, of which at most `max_batches_in_flight`
are /score_batch requests, each body at most its payload limit; a request beyond either limit is
answered 503 with `Retry-After` before its body is read.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from starlette.responses import JSONResponse

JSON_MEDIA_TYPE = "application/json"
RETRY_AFTER_S = 1  # seconds a client is told to wait after a 503 for capacity
# Python refuses to turn more digits than this into an int (sys.get_int_max_str_digits)
_MAX_INT_DIGITS = 4300
# An applicant of a /score_batch body: the key "applicant" followed by a colon. In JSON text a quote
# inside a string is escaped, so this matches object keys only; a valid batch has one per applicant.
_APPLICANT_KEY = re.compile(rb'"applicant"\s*:')


class Malformed:
    """A body that is not JSON: handed to the API function, which answers a 400 in the usual format."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


class TooMany:
    """A /score_batch body with more applicants than `max_batch`, found before parsing it."""

    def __init__(self, count: int) -> None:
        self.count = count


def parse_json(data: str | bytes | bytearray) -> Any:
    """The JSON value of a body, or `Malformed` naming why it is not one.

    orjson first (~3x faster than json on a 12 KiB body); it refuses NaN, Infinity, integers beyond
    64 bits and lone surrogates (`"\\ud800"`), which `json` reads: those bodies are JSON to a
    decision system, and the request checks name the field and the value. An integer too long for
    Python to read (over 4,300 digits) becomes an infinite float there (the checks call it not
    finite, naming the field); nesting deeper than Python's recursion limit is Malformed.
    """
    try:
        return orjson.loads(data or b"{}")
    except orjson.JSONDecodeError as e:
        if "recursion" in str(e).lower():
            return Malformed("nested deeper than 1,024 levels")
    try:
        return json.loads(data, parse_int=_int)
    except RecursionError:
        return Malformed("nested deeper than 1,024 levels")
    except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
        return Malformed(f"{type(e).__name__}: {e}")


def _int(text: str) -> int | float:
    return int(text) if len(text) <= _MAX_INT_DIGITS else float(text)  # float("9" * 5000) is inf


def count_applicants(data: str | bytes | bytearray) -> int:
    """Applicants in a raw /score_batch body, counted without parsing it (an upper bound: a key
    named "applicant" anywhere else is counted too, and no valid body has one)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    return len(_APPLICANT_KEY.findall(raw))


def media_type_ok(content_type: str | None) -> bool:
    """Only `application/json` (parameters such as `charset=utf-8` allowed) is a scoring body."""
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() == JSON_MEDIA_TYPE


def problem(status: int, kind: str, field: str, value: Any, message: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {"error": kind, "field": field, "value": value, "message": message, "errors": []},
        status_code=status,
        headers=headers or None,
    )


class AdmissionMiddleware:
    """415 for a scoring body that is not `application/json`; 503 with `Retry-After` when the worker
    already holds `max_in_flight` scoring requests (or `max_batches` /score_batch ones).

    Runs outside the API-key middleware: an overloaded worker sheds load before reading a body or
    hashing a key. The counts are per worker process (each has its own event loop and middleware).
    """

    def __init__(
        self, app: Any, *, paths: frozenset[str], max_in_flight: int, max_batches: int, on_refuse: Any = None
    ) -> None:
        self.app = app
        self.paths = paths
        self.max_in_flight = max_in_flight
        self.max_batches = max_batches
        self.on_refuse = on_refuse  # (path, status) -> None: the bad-request counter
        self.in_flight = 0
        self.batches = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if scope["method"] == "POST":
            content_type = None
            for k, v in scope["headers"]:
                if k.lower() == b"content-type":
                    content_type = v.decode("latin-1")
                    break
            if not media_type_ok(content_type):
                await self._refuse(scope, receive, send, 415, "unsupported_media_type", "content-type",
                                   (content_type or "")[:80] or None, f"the body must be {JSON_MEDIA_TYPE}")  # fmt: skip
                return
        batch = path.endswith("_batch")
        if self.in_flight >= self.max_in_flight or (batch and self.batches >= self.max_batches):
            limit = f"{self.max_batches} /score_batch" if batch and self.batches >= self.max_batches else ""
            limit = limit or f"{self.max_in_flight} scoring"
            await self._refuse(scope, receive, send, 503, "overloaded", "body", None,
                               f"this worker already holds {limit} requests; retry after "
                               f"{RETRY_AFTER_S} s", **{"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
            return
        self.in_flight += 1
        self.batches += batch
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.batches -= batch

    async def _refuse(
        self, scope: dict, receive: Any, send: Any, status: int, kind: str, field: str, value: Any,
        message: str, **headers: str,
    ) -> None:  # fmt: skip
        if self.on_refuse is not None:
            self.on_refuse(scope["path"], str(status))
        await problem(status, kind, field, value, message, **headers)(scope, receive, send)
