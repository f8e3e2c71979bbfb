"""The OpenAPI document of the scoring routes, generated from the record contract.

BentoML documents a root-input route as an untyped object and knows neither the API-key scheme nor
the answers govrisk gives. `OpenApiMiddleware` takes BentoML's document (GET /docs.json) once per
worker and replaces, for /score and /score_batch: the request schema (every contract field with its
type, range, categories and the month pattern), the security schemes (X-API-Key, Bearer) and the
responses (200, 400, 401, 413, 415, 422, 503). A client generator or a fuzzer (schemathesis, in
tests/test_serving.py) learns the contract from it.

What JSON Schema cannot say is left to the 422: months inside the lookback window before the
application month, no date in the future, a date not after another (`not_after`), one record per
month, one request per applicant in a batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from govrisk.data.contract import MONTH, ColumnSpec, Contract

_MONTH_PATTERN = r"^[0-9]{4}-(0[1-9]|1[0-2])(-01)?$"
_DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_MAX_STRING = 256  # as serving/request.py

ERROR = {
    "type": "object",
    "description": "A refusal: what is wrong, where, and the value (rendered safely)",
    "properties": {
        "error": {"type": "string", "description": "bad_json, bad_input, unauthorized, too_large, ..."},
        "field": {"type": "string", "nullable": True, "description": "JSON path of the offending field"},
        "value": {"nullable": True, "description": "the offending value as received (long text cut)"},
        "message": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "field": {"type": "string"},
                    "value": {"nullable": True},
                    "message": {"type": "string"},
                },
            },
        },
    },
    "required": ["error", "message"],
}
DECISION = {
    "type": "object",
    "description": "The champion's decision with PD, grade, price, limit and reason codes; the challenger beside",
    "properties": {
        "request_id": {"type": "string"},
        "applicant_id": {"type": "string"},
        "decision": {"type": "string", "enum": ["approve", "refer", "decline"]},
        "pd": {"type": "number", "minimum": 0, "maximum": 1},
        "grade": {"type": "string"},
        "rate": {"type": "number", "nullable": True},
        "credit_limit": {"type": "number", "nullable": True},
        "reason_codes": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["request_id", "decision", "pd"],
}
SECURITY_SCHEMES = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "Bearer": {"type": "http", "scheme": "bearer", "description": "the same API key as a bearer token"},
}


def _error(description: str, **headers: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        out["headers"] = headers
    return out


IDEMPOTENCY_KEY = {  # serving/service.py reads it; docs/guides/integrator.md, "Idempotent retries"
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "The client's request id (a UUID fits). A retry with the same key and body answers the "
    "decision on record (header Idempotent-Replayed: true) and logs nothing; the same key with another "
    "body is a 409. It becomes the request id; decision ids are the key (/score) or key-<position> "
    "(/score_batch; a single applicant: the key).",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,40}$"},
}


def responses(ok: dict[str, Any]) -> dict[str, Any]:
    retry = {"Retry-After": {"description": "seconds to wait (overload)", "schema": {"type": "integer"}}}
    return {
        "200": {"description": "Decided and on record", "content": {"application/json": {"schema": ok}}},
        "400": _error("The body is not JSON (or is nested deeper than 1,024 levels)"),
        "401": _error("No valid API key (X-API-Key or Authorization: Bearer)"),
        "413": _error("The body exceeds the payload limit"),
        "415": _error("The body is not application/json"),
        "409": _error("The Idempotency-Key is on record for another body (nothing decided or logged)"),
        "422": _error("A field breaks the contract or the scoring window; `field` names it"),
        "503": _error("Overloaded (with Retry-After), or the decision log cannot record", **retry),
    }


def column_schema(spec: ColumnSpec) -> dict[str, Any]:
    """One contract column as a JSON Schema (OpenAPI 3.0 dialect)."""
    t = spec.type
    out: dict[str, Any]
    if t in {"string", "category"}:
        out = {"type": "string", "minLength": 1, "maxLength": _MAX_STRING}
        if t == "category" and not spec.open:
            out = {"type": "string", "enum": list(spec.categories or ())}
    elif t == "bool":
        out = {"type": "boolean"}
    elif t == "date":
        out = {"type": "string", "format": "date", "pattern": _DATE_PATTERN}
        bounds = [
            f"from {spec.min_date}" if spec.min_date else "",
            f"to {spec.max_date}" if spec.max_date else "",
        ]
        rules = " ".join(b for b in bounds if b) + (f"; not after {spec.not_after}" if spec.not_after else "")
        out["description"] = f"ISO date, not in the future{'; ' + rules if rules.strip() else ''}"
    else:
        out = {"type": "integer" if t == "int" else "number"}
        if spec.min is not None:
            out["minimum"] = spec.min
            if spec.exclusive_min:
                out["exclusiveMinimum"] = True
        if spec.max is not None:
            out["maximum"] = spec.max
    if spec.description and "description" not in out:
        out["description"] = spec.description
    return out


def applicant_body(contract: Contract, lookback: int, *, nullable_tables: bool) -> dict[str, Any]:
    """A /score body: the applicant's fields and each monthly table, exactly the contract's keys."""
    a = contract.applicants
    fields = {c: column_schema(s) for c, s in a.columns.items() if c != a.label}
    body: dict[str, Any] = {
        "applicant": {
            "type": "object",
            "description": f"The applicant (contract {contract.name} {contract.version}, without the label)",
            "properties": fields,
            "required": list(fields),
            "additionalProperties": False,
        }
    }
    for table, spec in contract.monthly.items():
        cols = {c: column_schema(s) for c, s in spec.columns.items()}
        record = {
            "type": "object",
            "properties": {
                MONTH: {"type": "string", "pattern": _MONTH_PATTERN, "description": "YYYY-MM or YYYY-MM-01"},
                contract.key: {
                    "type": "string",
                    "description": "optional; equal to applicant." + contract.key,
                },
                **cols,
            },
            "required": [MONTH, *cols],
            "additionalProperties": False,
        }
        body[table] = {
            "type": "array",
            "items": record,
            "maxItems": lookback,
            "description": f"{spec.description}: one record per month, the {lookback} months before the "
            "application month at most" + ("; null means none" if nullable_tables else ""),
        }
        if nullable_tables:
            body[table]["nullable"] = True
    return {"type": "object", "properties": body, "required": ["applicant"], "additionalProperties": False}


def patch_spec(spec: dict[str, Any], contract: Contract, lookback: int, max_batch: int) -> dict[str, Any]:
    """BentoML's document with the scoring routes described from the contract (see the docstring)."""
    one = applicant_body(contract, lookback, nullable_tables=True)
    batch = {
        "type": "object",
        "properties": {
            "applicants": {
                "type": "array",
                "items": applicant_body(contract, lookback, nullable_tables=False),
                "minItems": 1,
                "maxItems": max_batch,
                "description": "/score bodies, one per applicant (distinct applicant ids)",
            }
        },
        "required": ["applicants"],
        "additionalProperties": False,
    }
    comps = spec.setdefault("components", {})
    comps.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    schemas = comps.setdefault("schemas", {})
    example = json.loads((Path(__file__).parent / "example_request.json").read_text())
    examples = {"ScoreBody": example, "ScoreBatchBody": {"applicants": [example]}}
    schemas.update({"Error": ERROR, "Decision": DECISION, "ScoreBody": one, "ScoreBatchBody": batch})
    ok = {
        "/score": {"$ref": "#/components/schemas/Decision"},
        "/score_batch": {
            "type": "object",
            "properties": {
                "request_id": {"type": "string"},
                "decisions": {"type": "array", "items": {"$ref": "#/components/schemas/Decision"}},
            },
            "required": ["decisions"],
        },
    }
    for path, body in (("/score", "ScoreBody"), ("/score_batch", "ScoreBatchBody")):
        op = spec.get("paths", {}).get(path, {}).get("post")
        if op is None:
            continue
        media = {"schema": {"$ref": f"#/components/schemas/{body}"}, "example": examples[body]}
        op["requestBody"] = {"required": True, "content": {"application/json": media}}
        op["security"] = [{"ApiKey": []}, {"Bearer": []}]
        op["parameters"] = [IDEMPOTENCY_KEY]
        op["responses"] = responses(ok[path])
    return spec


def champion_source(config: Any) -> Any:
    """`OpenApiMiddleware`'s source for a serving config: the contract and lookback of the registered
    champion (and challenger: the parser takes the longer lookback), read from their feature schemas."""

    def source() -> tuple[Contract, int, int]:
        from govrisk.serving.models import schema_file

        schemas = []
        for tag in (config.champion, config.challenger.tag):
            try:
                schemas.append(json.loads(schema_file(tag).read_text()))
            except Exception:  # no challenger, or a missing one: the champion alone decides
                if not schemas:
                    raise
        lookback = max(int(s["config"]["lookback_months"]) for s in schemas)
        return Contract.model_validate(schemas[0]["contract"]), lookback, config.max_batch

    return source


class OpenApiMiddleware:
    """Serves /docs.json as BentoML builds it, patched by `patch_spec` (built once per worker).

    `source` returns (contract, lookback months, max_batch) when first asked: the champion's
    contract, read from its registered feature schema.
    """

    def __init__(self, app: Any, *, source: Any, path: str = "/docs.json") -> None:
        self.app = app
        self.source = source
        self.path = path
        self.body: bytes | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        if self.body is None:
            captured: dict[str, Any] = {"status": 500, "chunks": []}

            async def keep(message: dict) -> None:
                if message["type"] == "http.response.start":
                    captured["status"] = message["status"]
                elif message["type"] == "http.response.body":
                    captured["chunks"].append(message.get("body", b""))

            await self.app(scope, receive, keep)
            if captured["status"] != 200:
                await self.app(scope, receive, send)
                return
            spec = json.loads(b"".join(captured["chunks"]))
            self.body = json.dumps(patch_spec(spec, *self.source())).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})
