"""The OpenAPI 3.1 document `scorer serve` publishes at /openapi.json (the contracts live in schemas/)."""

from __future__ import annotations

from typing import Any

from scorer.version import __version__

SCHEMAS = "https://scorer.dev/schemas"


def openapi_document(batch_max: int, keys: bool = True) -> dict[str, Any]:
    """What a client needs: the two scoring routes, their bodies, answers and errors, the probes; with
    `keys`, the bearer API key the scoring routes and /metrics require."""
    transaction = {"$ref": f"{SCHEMAS}/transaction.schema.json"}
    answer = {
        "oneOf": [{"$ref": "#/components/schemas/StreamDecision"}, {"$ref": "#/components/schemas/Fallback"}]
    }
    deadline = {
        "name": "X-Scorer-Deadline-Ms", "in": "header", "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 60000},
        "description": "How long to wait for the stream's decision (default: serve_deadline_ms).",
    }  # fmt: skip
    errors = {
        "400": _error("A bad X-Scorer-Deadline-Ms header."),
        "422": _error("Invalid transaction(s): the dead-letter topic's reason; nothing was published."),
        "503": _error("The transaction could not be published (it is not in the log): retry."),
        "504": _error("serve_on_deadline=504: no decision in time (the transaction still flows)."),
        "500": _error("A fault of serve's own (logged); nothing is known about the transaction."),
    }
    if keys:
        errors["401"] = _error("No valid API key (Authorization: Bearer <key>); see WWW-Authenticate.")
        errors["429"] = _error(
            "Over the key's rate (transactions per second); retry after Retry-After seconds."
        )
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "scorer serve", "version": __version__,
                 "description": "Synchronous fraud decisions, made by the stream's scorers (request-reply over Kafka)."},
        "paths": {
            "/v1/score": {"post": {
                "summary": "Score one transaction", "parameters": [deadline],
                "requestBody": {"required": True, "content": {"application/json": {"schema": transaction}}},
                "responses": {"200": {"description": "The decision, or the fallback.",
                                      "content": {"application/json": {"schema": answer}}}, **errors},
            }},
            "/v1/score:batch": {"post": {
                "summary": f"Score up to {batch_max} transactions", "parameters": [deadline],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "array", "minItems": 1, "maxItems": batch_max, "items": transaction}}}},
                "responses": {"200": {"description": "One decision or fallback per transaction, in order.",
                                      "content": {"application/json": {"schema": {
                                          "type": "object", "required": ["decisions"],
                                          "properties": {"decisions": {"type": "array", "items": answer}}}}}},
                              **{k: v for k, v in errors.items() if k not in ("503", "504")}},
            }},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "Readiness: a decision can come back (replies read, the scorers' group settled)",
                                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
        },
        "components": {"schemas": {
            "StreamDecision": {"allOf": [{"$ref": f"{SCHEMAS}/decision.schema.json"}, {
                "type": "object", "required": ["decision_source"],
                "properties": {"decision_source": {"enum": ["stream", "cache"]}}}]},
            "Fallback": {"type": "object",
                         "required": ["transaction_id", "decision_source", "fallback_reason", "action", "flagged"],
                         "properties": {"decision_source": {"const": "fallback"},
                                        "fallback_reason": {"type": "string"},
                                        "action": {"enum": ["approve", "review", "decline"]},
                                        "flagged": {"type": "boolean"}, "decided_at": {"type": "string"}}},
            "Error": {"type": "object", "required": ["error"],
                      "properties": {"error": {"type": "string"}, "reason": {"type": "string"},
                                     "detail": {"type": "string"}, "errors": {"type": "array"}}},
        }},
    }  # fmt: skip
    if keys:
        document["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
        for route in ("/v1/score", "/v1/score:batch", "/metrics"):
            for operation in document["paths"][route].values():
                operation["security"] = [{"apiKey": []}]
    return document


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}  # fmt: skip
