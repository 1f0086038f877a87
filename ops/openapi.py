"""drf-spectacular post-processing: the probes and the metrics endpoint are plain Django views (no
DRF on the path Kubernetes and Prometheus poll), so the schema gets their operations from here."""

from __future__ import annotations

from typing import Any

_TAG = "operations"
_CHECKS = {
    "type": "object",
    "description": "Each dependency: `ok` or `unavailable: <reason>`.",
    "additionalProperties": {"type": "string"},
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


PROBE_PATHS: dict[str, dict[str, Any]] = {
    "/healthz": {
        "get": {
            "operationId": "healthz",
            "summary": "Liveness: 200 while the process is alive.",
            "tags": [_TAG],
            "security": [],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["status"],
                        "properties": {"status": {"type": "string", "const": "alive"}},
                    },
                    "The process answers.",
                )
            },
        }
    },
    "/readyz": {
        "get": {
            "operationId": "readyz",
            "summary": "Readiness: 200 when broker, database and store answer; 503 names what is down.",
            "tags": [_TAG],
            "security": [],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["status", "checks"],
                        "properties": {"status": {"type": "string", "const": "ready"}, "checks": _CHECKS},
                    },
                    "Every dependency answers.",
                ),
                "503": _json(
                    {
                        "type": "object",
                        "required": ["error", "checks"],
                        "properties": {
                            "error": {"$ref": "#/components/schemas/ProbeError"},
                            "checks": _CHECKS,
                        },
                    },
                    "A dependency is down (`error.code` is `not_ready`; `details` name it).",
                ),
            },
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus text format: the API processes' own metrics and the platform-wide ones.",
            "tags": [_TAG],
            "security": [],
            "responses": {
                "200": {
                    "description": "One scrape (text exposition format 0.0.4).",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
}

_PROBE_ERROR = {
    "type": "object",
    "required": ["code", "message", "details"],
    "properties": {
        "code": {"type": "string"},
        "message": {"type": "string"},
        "details": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


def document_probes(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    result.setdefault("paths", {}).update(PROBE_PATHS)
    result.setdefault("components", {}).setdefault("schemas", {})["ProbeError"] = _PROBE_ERROR
    tags = result.setdefault("tags", [])
    if not any(tag.get("name") == _TAG for tag in tags):
        tags.append({"name": _TAG, "description": "Probes and metrics (no API key)."})
    return result
