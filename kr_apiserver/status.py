"""``metav1.Status`` bodies and the ``APIError`` exception that carries them.

Every failure the server reports is an ``APIError`` whose body is shaped as kube-apiserver's, so the
official client raises ``ApiException`` with ``.status`` set and a parsable ``.body``.

Invariant: ``APIError.code`` is the HTTP status code and always equals ``body()["code"]``.
"""

from __future__ import annotations

from typing import Any

from kr_apiserver.resources import Resource

#: reasons kube-apiserver gives for plain HTTP codes (apimachinery's ``NewGenericServerResponse``)
REASONS: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class APIError(Exception):
    """A request failed; ``body()`` is the Status to send with HTTP ``code``."""

    def __init__(self, code: int, message: str, reason: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details = details

    def body(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details:
            status["details"] = self.details
        status["code"] = self.code
        return status


def _details(resource: Resource, name: str, **extra: Any) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name}
    if resource.group:
        details["group"] = resource.group
    details["kind"] = resource.plural  # kube-apiserver puts the resource, not the kind, here
    details.update(extra)
    return details


def not_found(resource: Resource, name: str) -> APIError:
    return APIError(404, f'{resource.qualified} "{name}" not found', "NotFound", _details(resource, name))


def already_exists(resource: Resource, name: str) -> APIError:
    return APIError(409, f'{resource.qualified} "{name}" already exists', "AlreadyExists", _details(resource, name))


def conflict(resource: Resource, name: str, why: str) -> APIError:
    return APIError(
        409, f'Operation cannot be fulfilled on {resource.qualified} "{name}": {why}', "Conflict",
        _details(resource, name),
    )


def modified_conflict(resource: Resource, name: str) -> APIError:
    return conflict(
        resource, name, "the object has been modified; please apply your changes to the latest version and try again"
    )


def invalid(resource: Resource, name: str, field: str, message: str) -> APIError:
    return APIError(
        422, f'{resource.kind} "{name}" is invalid: {field}: {message}', "Invalid",
        _details(resource, name, causes=[{"reason": "FieldValueInvalid", "message": message, "field": field}]),
    )


def bad_request(message: str) -> APIError:
    return APIError(400, message, "BadRequest")


def expired(version: int, oldest: int) -> APIError:
    return APIError(410, f"too old resource version: {version} ({oldest})", "Expired")


def too_large(version: int, current: int) -> APIError:
    return APIError(
        504, f"Too large resource version: {version}, current: {current}", "Timeout",
        {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
         "retryAfterSeconds": 1},
    )


def success(resource: Resource, name: str, uid: str) -> dict[str, Any]:
    """The Status kube-apiserver returns for a DELETE of a kind that does not return the object."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": _details(resource, name, uid=uid),
    }
