"""The system pool's calls to the server (worker-protocol.md §5, §7, §8), over pooled keep-alive
connections (wire.py) with the internal token as bearer.

Every answer is classified here, so the pool only decides what to do with the message:
`claim()` returns a `Claim` naming the action of the table in §4, `post_event()` retries as §7
says and reports whether the server stored the event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from core.settings import Settings
from workers.system import metrics as m
from workers.system.wire import Answer, WireClient, WireError

log = logging.getLogger(__name__)

CLAIM_TIMEOUT_SECONDS = 10.0
EVENT_TIMEOUT_SECONDS = 15.0
EVENT_BACKOFF_START, EVENT_BACKOFF_MAX = 0.5, 10.0
NAK_MIN, NAK_MAX = 0.5, 30.0
RETRYABLE_STATUS = frozenset({408, 429, 502, 503, 504})
FINAL_EVENT_STATUS = frozenset({400, 404, 413, 422})
SKIP_CODES = frozenset({"active_claim", "already_terminal"})
STORED, REFUSED, GAVE_UP = "stored", "refused", "gave_up"


@dataclass(frozen=True)
class Claim:
    """What to do with a notification after its claim (worker-protocol.md §4).

    `action` is `run` (ack, then run `body`), `skip` (ack; `code` says why), `nak` (redeliver
    after `delay` seconds) or `term` (never redeliver)."""

    action: str
    body: dict[str, Any] | None = None
    code: str | None = None
    delay: float = 0.0
    reason: str = ""


def _retry_after(response: Answer) -> float | None:
    raw = response.headers.get("retry-after")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def _code(response: Answer) -> str | None:
    """`code`, or `detail.code` as NoETL workers read it (worker-protocol.md §5)."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    detail = body.get("detail")
    if isinstance(detail, dict) and isinstance(detail.get("code"), str):
        return str(detail["code"])
    code = body.get("code")
    return code if isinstance(code, str) else None


def backoff_delay(deliveries: int) -> float:
    """1 s × 2^(deliveries − 1), at most 30 s (a network error or an unexpected 5xx)."""
    return min(NAK_MAX, 1.0 * 2 ** max(0, deliveries - 1))


def classify_claim(response: Answer, deliveries: int) -> Claim:
    status = response.status_code
    if status == 200:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("context"), dict):
            return Claim("nak", delay=backoff_delay(deliveries), reason="malformed claim answer")
        return Claim("run", body=body)
    code = _code(response)
    if status == 409:
        if code in SKIP_CODES:
            return Claim("skip", code=code)
        return Claim("nak", code=code, delay=_retry_after(response) or 2.0, reason=f"409 {code}")
    if status == 404:
        return Claim("term", code=code, reason="command not found")
    if status in RETRYABLE_STATUS:
        after = _retry_after(response)
        delay = backoff_delay(deliveries) if after is None else min(NAK_MAX, max(NAK_MIN, after))
        return Claim("nak", code=code, delay=delay, reason=f"HTTP {status}")
    if status in (400, 422):
        return Claim("term", code=code, reason=f"HTTP {status}: {response.text[:500]}")
    # other 5xx, and statuses the protocol does not name (401/403: a token problem an operator
    # fixes): keep the message and back off, never lose the command
    return Claim("nak", code=code, delay=backoff_delay(deliveries), reason=f"HTTP {status}")


class ServerApi:
    """The pool's side of the server's worker routes."""

    def __init__(self, settings: Settings, worker_id: str, client: WireClient) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.client = client
        self.last_success = 0.0  # monotonic time of the last answered call (health)

    @staticmethod
    def auth_headers(settings: Settings) -> dict[str, str]:
        if settings.internal_api_token:
            return {"Authorization": f"Bearer {settings.internal_api_token}"}
        return {}

    @classmethod
    def make_client(cls, settings: Settings) -> WireClient:
        return WireClient(settings.server_url, cls.auth_headers(settings), EVENT_TIMEOUT_SECONDS)

    def _answered(self, response: Answer) -> Answer:
        # a refusal about the command (404, 409, 422) still shows a working server; an auth
        # failure or a 5xx does not
        if response.status_code < 400 or response.status_code in (404, 409, 422):
            self.last_success = time.monotonic()
        return response

    def healthy(self, within: float) -> bool:
        return self.last_success > 0 and time.monotonic() - self.last_success < within

    # --- claims ---------------------------------------------------------------------------

    async def claim(self, event_id: int, pool: str, deliveries: int) -> Claim:
        started = time.monotonic()
        try:
            response = self._answered(
                await self.client.post(
                    f"/api/commands/{event_id}/claim",
                    {"worker_id": self.worker_id},
                    timeout=CLAIM_TIMEOUT_SECONDS,
                )
            )
        except WireError as exc:
            return Claim("nak", delay=backoff_delay(deliveries), reason=str(exc))
        finally:
            m.CLAIM_DURATION.labels(pool=pool).observe(time.monotonic() - started)
        return classify_claim(response, deliveries)

    # --- events ---------------------------------------------------------------------------

    async def post_event(self, body: dict[str, Any], pool: str) -> str:
        """POST one event, retrying the same body as §7 says.

        Returns `stored`, `refused` (a final 4xx, logged) or `gave_up` (no answer within
        NOETL_WORKER_EVENT_RETRY_SECONDS: the lease and the reaper take over)."""
        deadline = time.monotonic() + self.settings.worker_event_retry_seconds
        backoff = EVENT_BACKOFF_START
        while True:
            delay: float | None = None
            try:
                response = self._answered(await self.client.post("/api/events", body))
            except WireError as exc:
                problem = str(exc)
            else:
                status = response.status_code
                if status == 200:
                    m.EVENTS_REPORTED.labels(pool=pool, outcome="ok").inc()
                    return STORED
                problem = f"HTTP {status}"
                if status < 500 and status not in RETRYABLE_STATUS:
                    # 400/404/413/422 are final by the protocol; 401/403/409 cannot get better
                    # by sending the same body again either
                    m.EVENTS_REPORTED.labels(pool=pool, outcome="failed").inc()
                    log.error(
                        "event refused",
                        extra={
                            "execution_id": str(body.get("execution_id")),
                            "event_type": body.get("event_type"),
                            "status": status,
                            "body": response.text[:2000],
                        },
                    )
                    return REFUSED
                delay = _retry_after(response)
            wait = backoff if delay is None else max(0.0, delay)
            if time.monotonic() + wait > deadline:
                m.EVENTS_REPORTED.labels(pool=pool, outcome="failed").inc()
                log.error(
                    "event not delivered within the retry budget; the lease and the reaper "
                    "hand the command on",
                    extra={
                        "execution_id": str(body.get("execution_id")),
                        "event_type": body.get("event_type"),
                        "problem": problem,
                    },
                )
                return GAVE_UP
            m.EVENTS_REPORTED.labels(pool=pool, outcome="retried").inc()
            await asyncio.sleep(wait)
            backoff = min(EVENT_BACKOFF_MAX, backoff * 2)

    async def post_heartbeat(self, body: dict[str, Any], pool: str) -> None:
        """One try: the next heartbeat comes soon, and a late one must not queue behind."""
        try:
            response = self._answered(await self.client.post("/api/events", body))
        except WireError as exc:
            log.warning("command heartbeat failed", extra={"problem": str(exc)})
            return
        outcome = "ok" if response.status_code == 200 else "failed"
        m.EVENTS_REPORTED.labels(pool=pool, outcome=outcome).inc()

    # --- registry -------------------------------------------------------------------------

    async def register(self, registration: dict[str, Any]) -> bool:
        return await self._registry("/api/worker/pool/register", registration)

    async def heartbeat(self, registration: dict[str, Any]) -> bool:
        body = {"name": self.worker_id, "registration": registration}
        return await self._registry("/api/worker/pool/heartbeat", body)

    async def deregister(self) -> bool:
        body = {"name": self.worker_id, "component_type": "worker_pool"}
        return await self._registry("/api/worker/pool/deregister", body, timeout=1.5)

    async def _registry(self, path: str, body: dict[str, Any], timeout: float = 5.0) -> bool:
        try:
            response = self._answered(await self.client.post(path, body, timeout=timeout))
        except WireError as exc:
            log.warning("worker registry call failed", extra={"path": path, "problem": str(exc)})
            return False
        if response.status_code != 200:
            log.warning(
                "worker registry call refused",
                extra={"path": path, "status": response.status_code, "body": response.text[:500]},
            )
            return False
        return True
