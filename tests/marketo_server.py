"""A local Marketo-compatible HTTP server for the tests and the benchmark.

There is no internet here, so the client and the extractor are exercised
against this stand-in. It implements the endpoints ``iheard_io.marketo_client``
uses, with Marketo's answer shapes (HTTP 200 with ``success: false`` and an
``errors`` list for API errors), and lets a test inject the failures that
matter:

* ``expire_token_after_calls=N``: after N REST calls on one token, that token
  answers 602 (expired) - a token expiring in the middle of a run;
* ``rate_limit_every=N`` / ``concurrency_every=N``: every Nth REST call
  answers 606 / 615;
* ``http_500_every=N``: every Nth REST call answers HTTP 500;
* ``daily_quota=N``: after N REST calls every call answers 607;
* ``max_calls_per_window`` / ``window_s``: a real sliding-window rate limit
  (606 beyond it), like Marketo's 100 calls per 20 s;
* malformed records: ``add_raw_lead`` stores a record exactly as given (no
  id, a bad email, a date that is not a date ...).

Lead changes are an ordered activity log; a paging token is the position in
it (opaque to the client). ``calls`` counts requests per endpoint and
``served_lead_ids`` every lead id returned by leads.json.

Run it by hand for a demo::

    python -m tests.marketo_server --port 18765 --leads 500
"""
from __future__ import annotations

import base64
import collections
import csv
import datetime as dt
import io
import json
import threading
import typing
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["MarketoStub", "iso", "sample_lead"]

CLIENT_ID = "test-client"
CLIENT_SECRET = "test-secret"


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str) -> int:
    return int(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def sample_lead(lead_id: int, updated_ms: int) -> dict:
    """A plausible lead as leads.json returns it."""
    companies = ["Acme Corp", "Globex", "Initech LLC", "Umbrella Inc.", "Hooli"]
    domains = ["acme-corp.com", "globex.com", "initech.io", "gmail.com", "mailinator.com"]
    i = lead_id % 5
    return {
        "id": lead_id,
        "email": f"lead{lead_id}@{domains[i]}",
        "firstName": f"first{lead_id}",
        "lastName": "SMITH",
        "company": companies[i],
        "title": ["VP Sales", "Engineer", "CTO", "Student", "Director of IT"][i],
        "leadSource": ["Website", "Referral", "Paid Search", "Organic Search", "Event"][i],
        "country": ["USA", "Germany", "United Kingdom", "US", "France"][i],
        "state": ["CA", None, None, "New York", None][i],
        "city": "  springfield ",
        "createdAt": iso(updated_ms - 86_400_000),
        "updatedAt": iso(updated_ms),
    }


class MarketoStub:
    """The server and its state; ``with MarketoStub() as stub: stub.base_url``."""

    def __init__(self, *, page_size: int = 300, expire_token_after_calls: int = 0,
                 rate_limit_every: int = 0, concurrency_every: int = 0,
                 http_500_every: int = 0, daily_quota: int = 0,
                 max_calls_per_window: int = 0, window_s: float = 20.0,
                 token_ttl_s: int = 3600):
        self.page_size = page_size
        self.expire_token_after_calls = expire_token_after_calls
        self.rate_limit_every = rate_limit_every
        self.concurrency_every = concurrency_every
        self.http_500_every = http_500_every
        self.daily_quota = daily_quota
        self.max_calls_per_window = max_calls_per_window
        self.window_s = window_s
        self.token_ttl_s = token_ttl_s
        self.leads: typing.Dict[int, dict] = {}
        self.activities: typing.List[dict] = []
        self.exports: typing.Dict[str, dict] = {}
        self.calls: typing.Counter[str] = collections.Counter()
        self.errors_sent: typing.Counter[str] = collections.Counter()
        self.served_lead_ids: typing.List[int] = []
        self._tokens: typing.Dict[str, int] = {}  # token -> REST calls made with it
        self._token_seq = 0
        self._rest_calls = 0
        self._recent: typing.Deque[float] = collections.deque()
        self._lock = threading.Lock()
        self._server: typing.Optional[ThreadingHTTPServer] = None
        self._thread: typing.Optional[threading.Thread] = None

    # -- data ---------------------------------------------------------------
    def upsert_lead(self, lead: dict, activity_ms: typing.Optional[int] = None) -> None:
        """Stores ``lead`` and logs a change activity at ``activity_ms``
        (default: its updatedAt)."""
        lead_id = int(lead["id"])
        when = activity_ms if activity_ms is not None else _parse_iso(lead["updatedAt"])
        self.add_raw_lead(lead_id, lead, when)

    def add_raw_lead(self, lead_id: int, record: dict, activity_ms: int) -> None:
        """Stores ``record`` verbatim as lead ``lead_id`` (may be malformed)."""
        with self._lock:
            self.leads[lead_id] = record
            self.activities.append({
                "id": len(self.activities) + 1,
                "marketoGUID": f"guid-{len(self.activities) + 1}",
                "leadId": lead_id,
                "activityDate": iso(activity_ms),
                "activityTypeId": 13,
                "fields": [{"id": 48, "name": "email", "newValue": record.get("email"),
                            "oldValue": None}],
                "attributes": [],
                "_ms": activity_ms,
            })
            self.activities.sort(key=lambda a: (a["_ms"], a["id"]))

    def add_leads(self, n: int, start_ms: int, step_ms: int = 1000, first_id: int = 1) -> None:
        for i in range(n):
            self.upsert_lead(sample_lead(first_id + i, start_ms + i * step_ms))

    def expire_all_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    # -- server -------------------------------------------------------------
    def __enter__(self) -> "MarketoStub":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, port: int = 0) -> None:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                stub._handle(self, "GET")

            def do_POST(self):
                stub._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- request handling -----------------------------------------------------
    @staticmethod
    def _send(handler, status: int, body, content_type="application/json") -> None:
        data = body.encode("utf-8") if isinstance(body, str) else json.dumps(body).encode("utf-8")
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _error(self, handler, code: str, message: str) -> None:
        self.errors_sent[code] += 1
        self._send(handler, 200, {"requestId": "stub", "success": False,
                                  "errors": [{"code": code, "message": message}]})

    def _handle(self, handler, method: str) -> None:
        url = urllib.parse.urlsplit(handler.path)
        params = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        path = url.path
        if path == "/identity/oauth/token":
            self.calls["identity"] += 1
            if params.get("client_id") != CLIENT_ID or params.get("client_secret") != CLIENT_SECRET:
                self._send(handler, 401, {"error": "unauthorized",
                                          "error_description": "Bad client credentials"})
                return
            with self._lock:
                self._token_seq += 1
                token = f"tok-{self._token_seq}"
                self._tokens[token] = 0
            self._send(handler, 200, {"access_token": token, "token_type": "bearer",
                                      "expires_in": self.token_ttl_s, "scope": "api@stub"})
            return
        body = None
        if method == "POST":
            length = int(handler.headers.get("Content-Length") or 0)
            raw = handler.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else {}
        auth = handler.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else params.get("access_token")
        injected = self._gate(token)
        if injected is not None:
            if injected == "500":
                self.errors_sent["http:500"] += 1
                self._send(handler, 500, "internal error", "text/plain")
            else:
                self._error(handler, injected, {
                    "601": "Access token invalid", "602": "Access token expired",
                    "606": "Max rate limit '100' exceeded with in '20' secs",
                    "607": "Daily quota reached",
                    "615": "Concurrent access limit reached"}[injected])
            return
        try:
            self._route(handler, method, path, params, body)
        except _NotFound:
            self._send(handler, 404, "not found", "text/plain")

    def _gate(self, token) -> typing.Optional[str]:
        """The injected failure for this REST call, if any (counts the call)."""
        import time

        with self._lock:
            if token not in self._tokens:
                return "601" if token is None or not token.startswith("tok-") else "602"
            self._rest_calls += 1
            n = self._rest_calls
            if self.daily_quota and n > self.daily_quota:
                return "607"
            if self.max_calls_per_window:
                now = time.monotonic()
                while self._recent and now - self._recent[0] >= self.window_s:
                    self._recent.popleft()
                if len(self._recent) >= self.max_calls_per_window:
                    return "606"
                self._recent.append(now)
            if self.rate_limit_every and n % self.rate_limit_every == 0:
                return "606"
            if self.concurrency_every and n % self.concurrency_every == 0:
                return "615"
            if self.http_500_every and n % self.http_500_every == 0:
                return "500"
            self._tokens[token] += 1
            if self.expire_token_after_calls and self._tokens[token] > self.expire_token_after_calls:
                del self._tokens[token]
                return "602"
            return None

    def _route(self, handler, method, path, params, body) -> None:
        ok = {"requestId": "stub", "success": True}
        if path == "/rest/v1/activities/pagingtoken.json":
            self.calls["pagingtoken"] += 1
            since = _parse_iso(params["sinceDatetime"])
            with self._lock:
                position = next((i for i, a in enumerate(self.activities) if a["_ms"] >= since),
                                len(self.activities))
            self._send(handler, 200, dict(ok, nextPageToken=_token_for(position)))
        elif path == "/rest/v1/activities/leadchanges.json":
            self.calls["leadchanges"] += 1
            if not params.get("fields"):
                self._error(handler, "1003", "fields is required")
                return
            position = _position_of(params["nextPageToken"])
            with self._lock:
                page = self.activities[position:position + self.page_size]
                end = position + len(page)
                more = end < len(self.activities)
            result = [{k: v for k, v in a.items() if k != "_ms"} for a in page]
            answer = dict(ok, nextPageToken=_token_for(end), moreResult=more)
            if result:
                answer["result"] = result
            self._send(handler, 200, answer)
        elif path == "/rest/v1/leads.json":
            self.calls["leads"] += 1
            if params.get("filterType") != "id":
                self._error(handler, "1003", "only filterType=id is implemented")
                return
            ids = [int(v) for v in params.get("filterValues", "").split(",") if v]
            if len(ids) > 300:
                self._error(handler, "1003", "filterValues exceeds 300")
                return
            with self._lock:
                found = [(i, self.leads[i]) for i in ids if i in self.leads]
                self.served_lead_ids.extend(i for i, _ in found)
            self._send(handler, 200, dict(ok, result=[r for _, r in found]))
        elif path == "/bulk/v1/leads/export/create.json" and method == "POST":
            self.calls["bulk_create"] += 1
            export_id = f"exp-{len(self.exports) + 1}"
            window = body["filter"]["updatedAt"]
            self.exports[export_id] = {"status": "Created", "polls": 0, "fields": body["fields"],
                                       "from": _parse_iso(window["startAt"]),
                                       "to": _parse_iso(window["endAt"])}
            self._send(handler, 200, dict(ok, result=[{"exportId": export_id, "status": "Created",
                                                       "format": "CSV"}]))
        elif path.startswith("/bulk/v1/leads/export/"):
            export_id, action = path[len("/bulk/v1/leads/export/"):].split("/", 1)
            job = self.exports.get(export_id)
            if job is None:
                raise _NotFound()
            if action == "enqueue.json":
                self.calls["bulk_enqueue"] += 1
                job["status"] = "Queued"
                self._send(handler, 200, dict(ok, result=[{"exportId": export_id, "status": "Queued"}]))
            elif action == "status.json":
                self.calls["bulk_status"] += 1
                job["polls"] += 1
                # Queued -> Processing -> Completed over successive polls.
                job["status"] = "Processing" if job["polls"] < 2 else "Completed"
                self._send(handler, 200, dict(ok, result=[{"exportId": export_id,
                                                           "status": job["status"]}]))
            elif action == "file.json":
                self.calls["bulk_file"] += 1
                if job["status"] != "Completed":
                    self._error(handler, "1029", "export not completed")
                    return
                self._send(handler, 200, self._csv(job), "text/csv")
            else:
                raise _NotFound()
        else:
            raise _NotFound()

    def _csv(self, job) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=job["fields"], extrasaction="ignore")
        writer.writeheader()
        with self._lock:
            leads = list(self.leads.values())
        for lead in leads:
            try:
                updated = _parse_iso(lead["updatedAt"])
            except (KeyError, TypeError, ValueError):
                continue
            if job["from"] <= updated <= job["to"]:
                writer.writerow({k: ("" if lead.get(k) is None else lead.get(k))
                                 for k in job["fields"]})
        return out.getvalue()


class _NotFound(Exception):
    pass


def _token_for(position: int) -> str:
    return base64.urlsafe_b64encode(f"pos:{position}".encode()).decode().rstrip("=")


def _position_of(token: str) -> int:
    padded = token + "=" * (-len(token) % 4)
    return int(base64.urlsafe_b64decode(padded.encode()).decode().split(":", 1)[1])


if __name__ == "__main__":
    import argparse
    import time

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=18765)
    parser.add_argument("--leads", type=int, default=500)
    args = parser.parse_args()
    stub = MarketoStub()
    stub.add_leads(args.leads, start_ms=int(time.time() * 1000) - args.leads * 1000)
    stub.start(args.port)
    print(f"Marketo stub on {stub.base_url} (client id {CLIENT_ID}, secret {CLIENT_SECRET})",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        stub.stop()
