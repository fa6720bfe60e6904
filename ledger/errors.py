"""The errors domain code raises; one renderer per protocol turns them into HTTP bodies.

Each error carries the HTTP status and the machine-readable type/code a client of
that protocol expects, so no layer above has to guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class LedgerError(Exception):
    """Base of every error Ledger reports to a client."""

    message: str
    status: int = 500
    openai_type: str = "api_error"
    anthropic_type: str = "api_error"
    code: str | None = None
    param: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


class InvalidRequest(LedgerError):
    """The request cannot be served as sent (400)."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(
            message,
            status=400,
            openai_type="invalid_request_error",
            anthropic_type="invalid_request_error",
            code=code,
            param=param,
        )


class UnknownModel(InvalidRequest):
    """No price knows the model and no provider serves it unpriced (400
    ``model_not_priced``): a price is what is missing, never served at $0."""

    def __init__(self, message: str):
        super().__init__(message, param="model", code="model_not_priced")


class AuthenticationFailed(LedgerError):
    """No key, an unknown key, or a revoked key (401)."""

    def __init__(self, message: str = "Invalid or missing API key."):
        super().__init__(
            message,
            status=401,
            openai_type="invalid_request_error",
            anthropic_type="authentication_error",
            code="invalid_api_key",
        )


class PermissionDenied(LedgerError):
    """The key is valid but may not do this (403)."""

    def __init__(self, message: str, *, code: str = "permission_denied", param: str | None = None):
        super().__init__(
            message,
            status=403,
            openai_type="permission_error",
            anthropic_type="permission_error",
            code=code,
            param=param,
        )


class NotFound(LedgerError):
    def __init__(self, message: str):
        super().__init__(
            message,
            status=404,
            openai_type="invalid_request_error",
            anthropic_type="not_found_error",
            code="not_found",
        )


class Conflict(LedgerError):
    def __init__(self, message: str):
        super().__init__(
            message,
            status=409,
            openai_type="invalid_request_error",
            anthropic_type="invalid_request_error",
            code="conflict",
        )


class PayloadTooLarge(LedgerError):
    def __init__(self, limit: int):
        super().__init__(
            f"Request body is larger than the limit of {limit} bytes.",
            status=413,
            openai_type="invalid_request_error",
            anthropic_type="request_too_large",
            code="request_too_large",
        )


class RequestTimeout(LedgerError):
    """The client did not send its whole body in time (408)."""

    def __init__(self, timeout_s: float):
        super().__init__(
            f"The request body did not arrive within {timeout_s:g} s.",
            status=408,
            openai_type="invalid_request_error",
            anthropic_type="invalid_request_error",
            code="request_timeout",
            headers={"connection": "close"},
        )


class UpstreamFailed(LedgerError):
    """The provider could not be reached or answered with something unusable.

    ``may_have_billed`` is False only when the request provably never reached the
    provider (the connection was never made), so there is nothing it could charge for.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        code: str = "upstream_error",
        may_have_billed: bool = True,
    ):
        super().__init__(
            message,
            status=status,
            openai_type="api_error",
            anthropic_type="api_error",
            code=code,
        )
        self.may_have_billed = may_have_billed


class UpstreamCredentialsRefused(UpstreamFailed):
    """The provider refused Ledger's own key (its 401 or 403): a 502, not the client's fault.

    Relayed as it came, a provider's 401 would tell the client that *its* key is wrong,
    and the SDKs would say so. Retrying will not help until an operator fixes the key.
    """

    def __init__(self, provider: str):
        super().__init__(
            f"The provider refused the gateway's credentials for provider '{provider}'. "
            "This is a gateway configuration problem; your own key was accepted.",
            code="upstream_credentials_refused",
            may_have_billed=False,
        )
        self.headers = {"x-should-retry": "false"}


class UpstreamTimeout(UpstreamFailed):
    def __init__(
        self, message: str = "The provider did not answer in time.", *, may_have_billed: bool = True
    ):
        super().__init__(
            message, status=504, code="upstream_timeout", may_have_billed=may_have_billed
        )


class ServiceUnavailable(LedgerError):
    def __init__(self, message: str, *, code: str = "service_unavailable"):
        super().__init__(
            message,
            status=503,
            openai_type="api_error",
            anthropic_type="overloaded_error",
            code=code,
        )


def openai_error_body(error: LedgerError) -> dict[str, object]:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {
        "error": {
            "message": error.message,
            "type": error.openai_type,
            "param": error.param,
            "code": error.code,
        }
    }


def anthropic_error_body(error: LedgerError) -> dict[str, object]:
    """Anthropic's error shape: ``{"type": "error", "error": {"type", "message"}}``."""
    return {"type": "error", "error": {"type": error.anthropic_type, "message": error.message}}


class BudgetExceeded(LedgerError):
    """A hard budget cannot cover the request's worst-case cost (429, never retried)."""

    def __init__(self, message: str, *, budget_id: int, headers: dict[str, str]):
        super().__init__(
            message,
            status=429,
            openai_type="budget_exceeded",
            anthropic_type="budget_exceeded",
            code="budget_exceeded",
            # The SDKs retry 429s by default; a spent budget will not recover in seconds.
            headers={**headers, "x-should-retry": "false"},
        )
        self.budget_id = budget_id
        self.clampable = False
        self.remaining: int | None = None


class TooManyFailedAuthentications(LedgerError):
    """A client kept presenting bad keys; it is refused for a while (429)."""

    def __init__(self, retry_after_s: int):
        super().__init__(
            f"Too many requests with invalid keys from this client; retry in {retry_after_s} s.",
            status=429,
            openai_type="rate_limit_error",
            anthropic_type="rate_limit_error",
            code="too_many_failed_authentications",
            headers={"retry-after": str(retry_after_s)},
        )
