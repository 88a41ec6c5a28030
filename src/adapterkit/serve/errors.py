"""Server errors, each with its HTTP status and OpenAI's error JSON.

OpenAI clients read `{"error": {"message", "type", "param", "code"}}` and retry on
5xx and 429, so the status must say whose fault it is: a bad request is 4xx and
never retried; only a full queue (429) and a draining server (503) invite a retry.
"""

from __future__ import annotations

from typing import Any


class ServeError(Exception):
    """An error answered to one request; the server goes on serving the others."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class BadRequestError(ServeError):
    """Bad parameters, a prompt longer than --max-model-len, max_tokens too large."""

    status = 400
    type = "invalid_request_error"


class AdapterLoadError(BadRequestError):
    """The adapter exists but could not be loaded (corrupt, another base, unsupported)."""

    code = "adapter_load_failed"


class AuthenticationError(ServeError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class AdminDisabledError(ServeError):
    """The admin endpoints are off because no key was configured."""

    status = 403
    type = "invalid_request_error"
    code = "admin_disabled"


class ModelNotFoundError(ServeError):
    """The request's `model` names no resident adapter, store ref or base."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class BodyTooLargeError(ServeError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class QueueFullError(ServeError):
    status = 429
    type = "rate_limit_error"  # OpenAI's type for 429; clients back off and retry
    code = "queue_full"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class DrainingError(ServeError):
    status = 503
    type = "server_error"
    code = "draining"

    def __init__(self, message: str = "the server is shutting down and finishes the requests in flight; "
                                      "retry on another instance") -> None:
        super().__init__(message, headers={"Retry-After": "1"})


# --- playground (the web page at /) -------------------------------------------------------
class StoreNotConfiguredError(ServeError):
    """The store browser was asked for, but the server runs without --store."""

    status = 404
    type = "invalid_request_error"
    code = "store_not_configured"


# --- merged_adapters (a request's weighted combination of adapters) ---------------------
class IncompatibleAdaptersError(BadRequestError):
    """The adapters in merged_adapters exist but cannot be combined as asked (ranks, targets, DoRA...)."""

    code = "incompatible_adapters"
