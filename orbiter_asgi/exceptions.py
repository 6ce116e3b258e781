"""One exception hierarchy; each error knows its HTTP status and event code.

    OrbiterError
    ├── RequestError             400  bad_request
    │   └── PayloadTooLarge      413  payload_too_large
    ├── Unauthorized             401  unauthorized
    ├── NotFoundError            404  not_found
    │   ├── AgentNotFound        404  agent_not_found
    │   └── SessionNotFound      404  session_not_found
    ├── ConflictError            409  conflict
    ├── NoAgentsRegistered       503  no_agents
    ├── Overloaded               503  overloaded
    │   └── ShuttingDown         503  shutdown
    ├── StoreError               503  store_unavailable
    └── AgentError               502  agent_error
        ├── MaxStepsExceeded     502  max_steps
        ├── RunTimeout           504  timeout
        └── ProviderError        502  provider_error
            ├── ProviderAuthError       provider_auth
            ├── ProviderRateLimited     rate_limited
            └── ProviderTimeout         provider_timeout

Lower-layer errors (httpx, sqlite3, redis) are translated where they happen,
with `raise ... from exc`, so callers only ever see these.
"""

from __future__ import annotations

__all__ = [
    "AgentError",
    "AgentNotFound",
    "ConflictError",
    "MaxStepsExceeded",
    "NoAgentsRegistered",
    "NotFoundError",
    "OrbiterError",
    "Overloaded",
    "PayloadTooLarge",
    "ProviderAuthError",
    "ProviderError",
    "ProviderRateLimited",
    "ProviderTimeout",
    "RequestError",
    "RunCancelled",
    "RunTimeout",
    "SessionNotFound",
    "ShuttingDown",
    "StoreError",
    "Unauthorized",
]


class OrbiterError(Exception):
    """Base of every error the package raises on purpose."""

    status_code: int = 500
    code: str = "internal_error"
    run_id: str | None = None  # the run it ended, answered as `X-Run-Id`

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message or self.__class__.__name__


class RequestError(OrbiterError):
    status_code = 400
    code = "bad_request"


class PayloadTooLarge(RequestError):
    status_code = 413
    code = "payload_too_large"


class Unauthorized(OrbiterError):
    """No valid API key; answered with `WWW-Authenticate`."""

    status_code = 401
    code = "unauthorized"


class NotFoundError(OrbiterError):
    status_code = 404
    code = "not_found"


class AgentNotFound(NotFoundError):
    code = "agent_not_found"


class SessionNotFound(NotFoundError):
    code = "session_not_found"

    @classmethod
    def of(cls, session_id: str) -> SessionNotFound:
        """The one wording clients see for a missing session."""
        return cls(f"Session {session_id!r} not found")


class ConflictError(OrbiterError):
    status_code = 409
    code = "conflict"


class NoAgentsRegistered(OrbiterError):
    """The app serves no agent at all: a deployment fault, not a bad request."""

    status_code = 503
    code = "no_agents"


class Overloaded(OrbiterError):
    status_code = 503
    code = "overloaded"


class ShuttingDown(Overloaded):
    """The process is draining for shutdown: new turns are refused, running
    ones are ended after the grace period."""

    code = "shutdown"


class RunCancelled(OrbiterError):
    """The client stopped its turn (`{"type": "cancel"}` on the WebSocket)."""

    status_code = 499  # nginx's "client closed request": only a client cancels a turn
    code = "cancelled"


class StoreError(OrbiterError):
    """The session store cannot be reached or answered wrongly."""

    status_code = 503
    code = "store_unavailable"


class AgentError(OrbiterError):
    """The agent, or the model behind it, failed."""

    status_code = 502
    code = "agent_error"


class MaxStepsExceeded(AgentError):
    code = "max_steps"


class RunTimeout(AgentError):
    status_code = 504
    code = "timeout"


class ProviderError(AgentError):
    """A model API answered with an error or a malformed stream."""

    code = "provider_error"

    def __init__(self, message: str = "", *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ProviderAuthError(ProviderError):
    code = "provider_auth"


class ProviderRateLimited(ProviderError):
    code = "rate_limited"


class ProviderTimeout(ProviderError):
    code = "provider_timeout"
