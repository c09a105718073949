"""Marketo REST client: OAuth token, lead changes, leads by id, bulk lead export.

``MarketoClient`` speaks the public Marketo REST API (identity, ``/rest/v1``
and ``/bulk/v1``) with ``requests``. It is a plain client, not a PTransform:
the extractor (``beam_pipelines.marketo_extract``) drives it page by page so
that it can acknowledge records in Kafka before it moves its high-water mark.

Endpoints used::

    GET  /identity/oauth/token?grant_type=client_credentials   access token
    GET  /rest/v1/activities/pagingtoken.json?sinceDatetime=    first page token
    GET  /rest/v1/activities/leadchanges.json?nextPageToken=&fields=
                                       one page of "Change Data Value" and
                                       "New Lead" activities (moreResult,
                                       nextPageToken)
    GET  /rest/v1/leads.json?filterType=id&filterValues=&fields=
                                       lead records, <= 300 ids per call
    POST /bulk/v1/leads/export/create.json          bulk export job
    POST /bulk/v1/leads/export/{id}/enqueue.json
    GET  /bulk/v1/leads/export/{id}/status.json
    GET  /bulk/v1/leads/export/{id}/file.json       the CSV file

Marketo reports most failures as HTTP 200 with ``success: false`` and a list
of ``errors`` (``{"code": "606", "message": ...}``). The policy per code:

==========  =======================================  ==========================
code        meaning                                  what the client does
==========  =======================================  ==========================
601, 602    access token invalid / expired           new token, retry once; a
                                                     second 601/602 in a row
                                                     raises ``MarketoAuthError``
606         rate limit (100 calls per 20 s)          wait ``rate_limit_wait_s``
                                                     and retry
615         concurrency limit (10 calls at once)     back off exponentially,
                                                     retry
604, 608,   timeout / temporarily unavailable /      back off exponentially,
611, 713    system error / transient                 retry
607         daily quota reached                      raise ``MarketoQuotaExceeded``
                                                     at once (retrying cannot
                                                     help before midnight CST)
other       bad request, permission, unknown field   raise ``MarketoApiError``
==========  =======================================  ==========================

HTTP 5xx, 429, connection errors and timeouts are retried with exponential
backoff; every retry of any kind counts against ``max_retries`` for that call,
after which ``MarketoUnavailable`` is raised. HTTP 401 is treated like 601.

Besides reacting to 606, the client paces itself: at most
``max_calls_per_window`` calls in any ``window_s`` seconds (Marketo's 100 per
20 s by default), so a well-behaved run rarely sees 606 at all.

Every call and every outcome is counted in ``MarketoClient.stats`` (a
``collections.Counter``): ``calls``, ``calls:<endpoint>``, ``error:<code>``,
``http:<status>``, ``network_errors``, ``retries``, ``token_requests``,
``throttle_waits``. The extractor prints them and exposes them as metrics.

The client takes every setting as an argument; it never reads the
environment (``iheard_io.settings`` does, for ``beam_pipelines.marketo_options``).
"""
from __future__ import annotations

import collections
import csv
import datetime as dt
import io
import logging
import threading
import time
import typing

__all__ = [
    "MarketoClient",
    "MarketoError",
    "MarketoApiError",
    "MarketoAuthError",
    "MarketoQuotaExceeded",
    "MarketoUnavailable",
    "LeadChangePage",
    "MAX_LEADS_PER_CALL",
    "DEFAULT_LEAD_FIELDS",
]

_LOG = logging.getLogger(__name__)

# Marketo's documented maximum for filterValues / batchSize on leads.json.
MAX_LEADS_PER_CALL = 300
# Marketo's documented rate limit: 100 calls per 20 s per instance.
RATE_LIMIT_CALLS = 100
RATE_LIMIT_WINDOW_S = 20.0

TOKEN_CODES = frozenset({"601", "602"})
RATE_LIMIT_CODE = "606"
CONCURRENCY_CODE = "615"
QUOTA_CODE = "607"
TRANSIENT_CODES = frozenset({"604", "608", "611", "713"})

DEFAULT_LEAD_FIELDS = (
    "id", "email", "firstName", "lastName", "company", "title", "phone",
    "leadSource", "leadStatus", "leadScore", "industry", "country", "state",
    "city", "postalCode", "website", "createdAt", "updatedAt",
)


class MarketoError(Exception):
    """Base class; ``code`` is Marketo's error code (text) or ``"http:<n>"``."""

    def __init__(self, message: str, code: typing.Optional[str] = None):
        super().__init__(message)
        self.code = code


class MarketoApiError(MarketoError):
    """A request Marketo refused for a reason retrying cannot fix."""


class MarketoAuthError(MarketoError):
    """The credentials were refused, or a fresh token was refused again."""


class MarketoQuotaExceeded(MarketoError):
    """Error 607: the daily API quota is used up."""


class MarketoUnavailable(MarketoError):
    """Transient failures outlasted ``max_retries``."""


class LeadChangePage(typing.NamedTuple):
    """One page of ``leadchanges.json``."""

    activities: typing.List[dict]
    next_page_token: typing.Optional[str]
    more_result: bool


def _format_since(since: dt.datetime) -> str:
    if since.tzinfo is None:
        since = since.replace(tzinfo=dt.timezone.utc)
    return since.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _CallPacer:
    """At most ``max_calls`` calls in any ``window_s`` seconds (sliding)."""

    def __init__(self, max_calls: typing.Optional[int], window_s: float, clock, sleep):
        self._max = max_calls
        self._window_s = window_s
        self._clock = clock
        self._sleep = sleep
        self._starts: typing.Deque[float] = collections.deque()
        self._lock = threading.Lock()

    def wait(self) -> bool:
        """Blocks until a call may start; True if it had to wait."""
        if not self._max:
            return False
        waited = False
        with self._lock:
            while True:
                now = self._clock()
                while self._starts and now - self._starts[0] >= self._window_s:
                    self._starts.popleft()
                if len(self._starts) < self._max:
                    self._starts.append(now)
                    return waited
                waited = True
                self._sleep(self._window_s - (now - self._starts[0]) + 0.001)


class MarketoClient:
    """A Marketo REST client for one instance (``base_url``).

    Use it as a context manager (or call ``close()``) so its HTTP session is
    released. Thread-compatible, not meant for concurrent use from several
    threads (Marketo allows 10 concurrent calls per instance anyway).
    """

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        max_retries: int = 6,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        rate_limit_wait_s: float = RATE_LIMIT_WINDOW_S,
        max_calls_per_window: typing.Optional[int] = RATE_LIMIT_CALLS,
        window_s: float = RATE_LIMIT_WINDOW_S,
        timeout_s: float = 30.0,
        sleep: typing.Callable[[float], None] = time.sleep,
        clock: typing.Callable[[], float] = time.monotonic,
        session=None,
    ):
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http(s) URL, e.g. https://123-ABC-456.mktorest.com")
        if not client_id or not client_secret:
            raise ValueError("client_id and client_secret are required")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if backoff_s < 0 or rate_limit_wait_s < 0:
            raise ValueError("backoff_s and rate_limit_wait_s must be >= 0")
        import requests

        self._base = base_url.rstrip("/")
        self._client_id = client_id
        self._client_secret = client_secret
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._rate_limit_wait_s = rate_limit_wait_s
        self._timeout_s = timeout_s
        self._sleep = sleep
        self._clock = clock
        self._pacer = _CallPacer(max_calls_per_window, window_s, clock, sleep)
        self._session = session or requests.Session()
        self._token: typing.Optional[str] = None
        self._token_expires_at = 0.0
        self.stats: typing.Counter[str] = collections.Counter()

    # -- lifecycle ------------------------------------------------------------
    def __enter__(self) -> "MarketoClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    # -- token ------------------------------------------------------------------
    def _fetch_token(self) -> None:
        self.stats["token_requests"] += 1
        body = self._http(
            "GET", "/identity/oauth/token", "identity",
            params={"grant_type": "client_credentials", "client_id": self._client_id,
                    "client_secret": self._client_secret},
            authorised=False)
        token = body.get("access_token") if isinstance(body, dict) else None
        if not token:
            message = (body or {}).get("error_description") or (body or {}).get("error") \
                if isinstance(body, dict) else body
            raise MarketoAuthError(f"no access token from the identity endpoint: {message}",
                                   code="auth")
        # Renew a minute early: a token that expires between our check and
        # Marketo's is a wasted call (602).
        expires_in = float(body.get("expires_in") or 3600)
        self._token = token
        self._token_expires_at = self._clock() + max(expires_in - 60.0, 0.0)

    def _ensure_token(self) -> str:
        if self._token is None or self._clock() >= self._token_expires_at:
            self._fetch_token()
        return typing.cast(str, self._token)

    # -- transport ------------------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        return min(self._backoff_s * (2 ** attempt), self._max_backoff_s)

    def _http(self, method, path, endpoint, *, params=None, json_body=None,
              authorised=True, raw=False):
        """One logical call with the retry policy of the module docstring.

        Returns the decoded JSON body (or the text when ``raw``) of a
        successful response.
        """
        import requests

        attempt = 0
        refreshed = False
        while True:
            headers = {}
            if authorised:
                headers["Authorization"] = f"Bearer {self._ensure_token()}"
            if self._pacer.wait():
                self.stats["throttle_waits"] += 1
            self.stats["calls"] += 1
            self.stats[f"calls:{endpoint}"] += 1
            retry_reason = None
            wait_s = None
            try:
                response = self._session.request(
                    method, self._base + path, params=params, json=json_body,
                    headers=headers, timeout=self._timeout_s)
            except (requests.ConnectionError, requests.Timeout) as exc:
                self.stats["network_errors"] += 1
                retry_reason = f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if status != 200:
                    self.stats[f"http:{status}"] += 1
                if status == 401 and authorised and not refreshed:
                    self.stats["error:401"] += 1
                    self._token = None
                    refreshed = True
                    continue
                if not authorised and status in (400, 401, 403):
                    raise MarketoAuthError(
                        f"the identity endpoint refused the credentials: HTTP {status} "
                        f"{response.text[:200]}", code=f"http:{status}")
                if status == 429 or status >= 500:
                    retry_reason = f"HTTP {status}"
                elif status != 200:
                    raise MarketoApiError(
                        f"{method} {path}: HTTP {status}: {response.text[:300]}",
                        code=f"http:{status}")
                elif raw and not response.headers.get("Content-Type", "").startswith(
                        "application/json"):
                    return response.text
                else:
                    try:
                        body = response.json()
                    except ValueError:
                        self.stats["malformed_responses"] += 1
                        retry_reason = "response is not JSON"
                        body = None
                    if body is not None:
                        if not isinstance(body, dict) or body.get("success", True) is not False:
                            return body
                        errors = body.get("errors") or [{}]
                        code = str(errors[0].get("code", ""))
                        message = str(errors[0].get("message", ""))
                        self.stats[f"error:{code}"] += 1
                        if code in TOKEN_CODES:
                            if refreshed:
                                raise MarketoAuthError(
                                    f"{path}: a fresh token was refused ({code} {message})",
                                    code=code)
                            self._token = None
                            refreshed = True
                            continue
                        if code == QUOTA_CODE:
                            raise MarketoQuotaExceeded(f"{path}: daily quota reached ({message})",
                                                       code=code)
                        if code == RATE_LIMIT_CODE:
                            retry_reason = f"rate limit ({code})"
                            wait_s = self._rate_limit_wait_s
                        elif code == CONCURRENCY_CODE or code in TRANSIENT_CODES:
                            retry_reason = f"{message or 'transient'} ({code})"
                        else:
                            raise MarketoApiError(f"{path}: {code} {message}", code=code)
            if attempt >= self._max_retries:
                raise MarketoUnavailable(
                    f"{method} {path}: giving up after {attempt} retries ({retry_reason})",
                    code="unavailable")
            delay = wait_s if wait_s is not None else self._backoff(attempt)
            attempt += 1
            self.stats["retries"] += 1
            _LOG.warning("Marketo %s: %s; retry %d/%d in %.2fs", path, retry_reason,
                         attempt, self._max_retries, delay)
            self._sleep(delay)

    # -- REST -------------------------------------------------------------------
    def paging_token(self, since: dt.datetime) -> str:
        """The page token for activities at or after ``since`` (UTC if naive)."""
        body = self._http("GET", "/rest/v1/activities/pagingtoken.json", "pagingtoken",
                          params={"sinceDatetime": _format_since(since)})
        token = body.get("nextPageToken")
        if not token:
            raise MarketoApiError("pagingtoken.json answered without nextPageToken", code="schema")
        return token

    def lead_changes(self, page_token: str, fields: typing.Sequence[str],
                     list_id: typing.Optional[int] = None) -> LeadChangePage:
        """One page (up to 300 activities) of lead changes from ``page_token``.

        ``fields``: the lead fields whose changes are reported (Marketo
        requires at least one).
        """
        if not fields:
            raise ValueError("leadchanges.json needs at least one field")
        params = {"nextPageToken": page_token, "fields": ",".join(fields)}
        if list_id is not None:
            params["listId"] = list_id
        body = self._http("GET", "/rest/v1/activities/leadchanges.json", "leadchanges",
                          params=params)
        result = body.get("result") or []
        if not isinstance(result, list):
            raise MarketoApiError("leadchanges.json: result is not a list", code="schema")
        return LeadChangePage(result, body.get("nextPageToken") or page_token,
                              bool(body.get("moreResult")))

    def leads_by_ids(self, ids: typing.Iterable[int],
                     fields: typing.Sequence[str] = DEFAULT_LEAD_FIELDS) -> typing.List[dict]:
        """Lead records for ``ids``, in calls of at most 300 ids each.

        Ids Marketo does not know (deleted leads) are simply absent.
        """
        ids = list(dict.fromkeys(int(i) for i in ids))
        out: typing.List[dict] = []
        for start in range(0, len(ids), MAX_LEADS_PER_CALL):
            chunk = ids[start:start + MAX_LEADS_PER_CALL]
            params = {"filterType": "id", "filterValues": ",".join(map(str, chunk)),
                      "batchSize": MAX_LEADS_PER_CALL}
            if fields:
                params["fields"] = ",".join(fields)
            body = self._http("GET", "/rest/v1/leads.json", "leads", params=params)
            result = body.get("result") or []
            if not isinstance(result, list):
                raise MarketoApiError("leads.json: result is not a list", code="schema")
            out.extend(result)
        return out

    # -- bulk export --------------------------------------------------------------
    def create_lead_export(self, fields: typing.Sequence[str], updated_from: dt.datetime,
                           updated_to: dt.datetime) -> str:
        """Creates a CSV export job of leads updated in [from, to] (Marketo
        allows at most 31 days per job); returns its ``exportId``."""
        body = self._http(
            "POST", "/bulk/v1/leads/export/create.json", "bulk_create",
            json_body={"fields": list(fields), "format": "CSV",
                       "filter": {"updatedAt": {"startAt": _format_since(updated_from),
                                                "endAt": _format_since(updated_to)}}})
        return str(self._first_result(body, "create")["exportId"])

    def enqueue_lead_export(self, export_id: str) -> str:
        body = self._http("POST", f"/bulk/v1/leads/export/{export_id}/enqueue.json",
                          "bulk_enqueue")
        return str(self._first_result(body, "enqueue").get("status"))

    def lead_export_status(self, export_id: str) -> dict:
        body = self._http("GET", f"/bulk/v1/leads/export/{export_id}/status.json", "bulk_status")
        return self._first_result(body, "status")

    def lead_export_file(self, export_id: str) -> typing.List[dict]:
        """The export's CSV as dicts (header row = field names; empty cells None)."""
        text = self._http("GET", f"/bulk/v1/leads/export/{export_id}/file.json", "bulk_file",
                          raw=True)
        if not isinstance(text, str):
            raise MarketoApiError("file.json: expected CSV text", code="schema")
        rows = []
        for row in csv.DictReader(io.StringIO(text)):
            rows.append({k: (v if v != "" else None) for k, v in row.items()})
        return rows

    def export_leads(self, fields: typing.Sequence[str], updated_from: dt.datetime,
                     updated_to: dt.datetime, poll_s: float = 30.0,
                     timeout_s: float = 6 * 3600) -> typing.List[dict]:
        """create -> enqueue -> poll status until Completed -> file."""
        export_id = self.create_lead_export(fields, updated_from, updated_to)
        self.enqueue_lead_export(export_id)
        deadline = self._clock() + timeout_s
        while True:
            status = self.lead_export_status(export_id).get("status")
            if status == "Completed":
                return self.lead_export_file(export_id)
            if status in ("Failed", "Cancelled"):
                raise MarketoApiError(f"bulk export {export_id} ended {status}", code="bulk")
            if self._clock() >= deadline:
                raise MarketoUnavailable(f"bulk export {export_id} still {status}", code="bulk")
            self._sleep(poll_s)

    @staticmethod
    def _first_result(body: dict, what: str) -> dict:
        result = body.get("result") or []
        if not result or not isinstance(result[0], dict):
            raise MarketoApiError(f"bulk {what}: empty result", code="schema")
        return result[0]
