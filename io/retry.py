"""The sinks' one retry strategy: which errors are worth retrying, and for how long.

Every batch a sink writes (``iheard_io.sink_base``) fails in one of three
ways, and each store says which is which (``StoreErrors``):

* **transient** - the store is down, restarting, overloaded or dropped the
  connection: the same batch will succeed later. Retried on a fresh client
  with capped exponential backoff (``RetryPolicy``) until the time budget is
  spent; what happens then is the store's ``on_exhausted`` policy (fail the
  bundle, or dead-letter the batch);
* **rejected** - the store refused a row's *content* (a constraint, a value
  it cannot take): retrying cannot help, so the batch is bisected and the
  refused rows become dead letters (``isolate_bad_rows``);
* **fatal** - anything else: a refused password or certificate, a missing
  table, a bug. Retrying cannot help and dead-lettering would hide it: the
  bundle fails at once, loudly.

The classification follows medzin/beam-postgres' split of transient from
permanent errors; the waiting is tenacity's (``wait_exponential`` capped at
``max_backoff_s``, ``stop_after_delay`` at ``budget_s``).
"""
from __future__ import annotations

import dataclasses
import enum
import logging
import typing

import tenacity

__all__ = [
    "OnExhausted",
    "RetryPolicy",
    "StoreErrors",
    "PostgresErrors",
    "SnowflakeErrors",
    "RedisErrors",
    "is_postgres_refusal",
    "run_with_retries",
    "DEFAULT_FIRST_BACKOFF_S",
    "DEFAULT_MAX_BACKOFF_S",
    "DEFAULT_RETRY_BUDGET_S",
]

_LOG = logging.getLogger(__name__)

# First retry after 0.2 s, doubling, never more than 5 s apart: a store that
# comes back is noticed within 5 s.
DEFAULT_FIRST_BACKOFF_S = 0.2
DEFAULT_MAX_BACKOFF_S = 5.0
# Twice the 30 s outage the fault tests (issue 20) must ride out: a server
# restart, a failover or a short network loss ends inside the budget.
DEFAULT_RETRY_BUDGET_S = 60.0


class OnExhausted(str, enum.Enum):
    """What a sink does with a batch when its store stays down past the budget."""

    # Raise: the bundle fails, Flink restores the job from its last
    # checkpoint and replays the input (nothing lost; the store must be back
    # within the job's restart strategy).
    FAIL = "fail"
    # Every row of the batch becomes a dead letter (stage ``sink:<store>``,
    # reason ``StoreUnavailable``) holding the row as JSON, and the job goes
    # on: the store misses those rows until they are replayed.
    DEAD_LETTER = "dead_letter"


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff within a time budget.

    Waits ``first_backoff_s``, then doubles up to ``max_backoff_s`` between
    attempts, and stops retrying once ``budget_s`` seconds have passed since
    the first attempt (``budget_s=0``: one attempt only)."""

    budget_s: float = DEFAULT_RETRY_BUDGET_S
    first_backoff_s: float = DEFAULT_FIRST_BACKOFF_S
    max_backoff_s: float = DEFAULT_MAX_BACKOFF_S
    on_exhausted: OnExhausted = OnExhausted.FAIL

    def __post_init__(self):
        if self.budget_s < 0:
            raise ValueError("retry budget_s must be >= 0")
        if self.first_backoff_s <= 0 or self.max_backoff_s < self.first_backoff_s:
            raise ValueError("need 0 < first_backoff_s <= max_backoff_s")
        object.__setattr__(self, "on_exhausted", OnExhausted(self.on_exhausted))

    def delays(self, attempts: int) -> typing.List[float]:
        """The waits before retries 1..``attempts`` (for docs and tests)."""
        return [min(self.first_backoff_s * 2 ** i, self.max_backoff_s) for i in range(attempts)]


class StoreErrors:
    """How one store's errors are classified (see the module docstring).
    Subclasses override ``is_transient`` and ``is_rejection``; everything
    that is neither is fatal."""

    name = "store"

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, (ConnectionError, TimeoutError))

    def is_rejection(self, exc: BaseException) -> bool:
        return False


# A server that refuses us (password, pg_hba.conf, TLS verification) will
# refuse every retry too: a configuration error. libpq reports these at
# connect time without a SQLSTATE, so the text decides.
_POSTGRES_REFUSALS = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "certificate verify failed",
    "server does not support SSL",
    "root certificate file",
    "does not match host name",
    "fe_sendauth: no password supplied",
)


def is_postgres_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL refusing our credentials or TLS."""
    message = str(exc)
    return any(marker in message for marker in _POSTGRES_REFUSALS)


class PostgresErrors(StoreErrors):
    name = "PostgreSQL"

    def is_transient(self, exc):
        import psycopg

        # OperationalError covers lost connections, AdminShutdown (terminated
        # backend), CannotConnectNow (server starting) and TransactionRollback
        # (serialization failure, deadlock).
        return (isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
                and not is_postgres_refusal(exc))

    def is_rejection(self, exc):
        """A row's content: the server refused a value or a constraint, or
        psycopg could not turn a Python value into the column's text form (a
        ProgrammingError without SQLSTATE, e.g. "cannot adapt type 'dict'")."""
        import psycopg

        if isinstance(exc, (psycopg.DataError, psycopg.IntegrityError)):
            return True
        if isinstance(exc, psycopg.ProgrammingError) and getattr(exc, "sqlstate", None) is None:
            return True
        return isinstance(exc, (TypeError, ValueError, UnicodeError))


class SnowflakeErrors(StoreErrors):
    name = "Snowflake"

    def is_transient(self, exc):
        from snowflake.connector import errors

        if isinstance(exc, errors.NonRetryableTlsError):
            return False
        retryable = (
            errors.OperationalError, errors.InterfaceError, errors.HttpError,
            errors.InternalServerError, errors.ServiceUnavailableError,
            errors.GatewayTimeoutError, errors.RequestTimeoutError,
            errors.BadGatewayError, errors.TooManyRequests,
            errors.OtherHTTPRetryableError, errors.RequestExceedMaxRetryError,
            errors.TokenExpiredError, errors.PresignedUrlExpiredError,
        )
        return isinstance(exc, retryable) or isinstance(exc, (ConnectionError, TimeoutError))

    def is_rejection(self, exc):
        """Snowflake reports a row's content with an SQLSTATE of class 22
        (data exception: NULL in a NOT NULL column, numeric value not
        recognized, string too long) or 23 (integrity); a DB-API
        ``IntegrityError``/``DataError`` of any driver counts too (fakesnow
        lets its engine's constraint errors through unwrapped)."""
        sqlstate = str(getattr(exc, "sqlstate", "") or "")
        if sqlstate[:2] in ("22", "23"):
            return True
        names = {cls.__name__ for cls in type(exc).__mro__}
        return bool(names & {"IntegrityError", "DataError"})


class RedisErrors(StoreErrors):
    """Connection errors and timeouts are transient (BusyLoadingError, a
    restarted server replaying its AOF/RDB, is a ConnectionError subclass in
    redis-py), except a refused AUTH or an untrusted certificate. A command
    Redis refuses (e.g. WRONGTYPE) comes back per element, not as a batch
    error, so nothing is a batch-level rejection."""

    name = "Redis"

    def is_transient(self, exc):
        import redis

        if isinstance(exc, redis.AuthenticationError) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return False
        return isinstance(exc, (redis.ConnectionError, redis.TimeoutError))


_T = typing.TypeVar("_T")


def run_with_retries(
    action: typing.Callable[[], _T],
    policy: RetryPolicy,
    errors: StoreErrors,
    on_retry: typing.Optional[typing.Callable[[BaseException, int, float], None]] = None,
    sleep: typing.Callable[[float], None] = tenacity.nap.sleep,
) -> _T:
    """Runs ``action`` until it succeeds, retrying transient errors of
    ``errors`` by ``policy``; raises the last error when the budget is spent
    or at once when an error is not transient. ``on_retry(exc, attempt,
    delay_s)`` runs before each wait (the sinks drop their client there)."""

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception()
        delay = state.next_action.sleep if state.next_action else 0.0
        _LOG.warning("transient %s error (%s: %s); retry %d in %.1fs", errors.name,
                     type(exc).__name__, exc, state.attempt_number, delay)
        if on_retry is not None:
            on_retry(exc, state.attempt_number, delay)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(errors.is_transient),
        wait=tenacity.wait_exponential(multiplier=policy.first_backoff_s,
                                       min=policy.first_backoff_s, max=policy.max_backoff_s,
                                       exp_base=2),
        stop=tenacity.stop_after_delay(policy.budget_s),
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )
    return retrying(action)
