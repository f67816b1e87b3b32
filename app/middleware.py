"""One pure-ASGI middleware: request id, upload limit, HTTP metrics, access log, last-resort 500,
and a `Server-Timing` header: `app;dur=<ms>` (time in the app up to the response's first byte),
so a client can tell its own and the network's share of a latency from the server's, then
the phases the request went through (`app.timing`: decode, queue, infer).

Pure ASGI (not BaseHTTPMiddleware) so the body streams through untouched and can be counted:
an upload over the limit is refused from its Content-Length before it is read, and a chunked
one is cut off as soon as the running count passes the limit, never held whole in memory.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import timing
from app.errors import error_response
from app.logs import reset_request_id, set_request_id
from app.metrics import Metrics

log = logging.getLogger("app.access")

# Accept a client's id only if it is short and printable, so it cannot forge log lines.
_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class BodyTooLarge(HTTPException):
    """Raised from `receive` when the streamed body passes the limit (answered 413).

    An HTTPException so that FastAPI's body parsing re-raises it as is.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the {limit}-byte limit")


class ServingMiddleware:
    """Wraps every HTTP request of the app."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        request_id = given if _VALID_ID.match(given) else uuid.uuid4().hex
        token = set_request_id(request_id)
        phases, phases_token = timing.open_request()
        start = time.perf_counter()
        status = 500
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", request_id.encode()),
                    (b"server-timing", timing.header(time.perf_counter() - start, phases)),
                ]
            await send(message)

        received = 0
        length = headers.get("content-length", "")
        declared_over = length.isdigit() and int(length) > self.max_body

        async def receive_limited() -> Message:
            nonlocal received
            # Refused from Content-Length before a byte is read, but inside the app, so the
            # router has named the route (metrics) and the handlers answer as for the others.
            if declared_over:
                raise BodyTooLarge(self.max_body)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive_limited, send_wrapper)
        except BodyTooLarge as e:
            if not started:
                await error_response(413, e.detail, scope=scope)(scope, receive, send_wrapper)
        except Exception:
            # Last resort: log the trace with the request id, answer 500 without it.
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not started:
                detail = f"internal server error (request id {request_id})"
                await error_response(500, detail, scope=scope)(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            seconds = time.perf_counter() - start
            route = _route_template(scope)
            self.metrics.http_requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.http_duration.labels(route, scope["method"]).observe(seconds)
            log.info(
                "%s %s %d %.1fms",
                scope["method"],
                scope["path"],
                status,
                seconds * 1000,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                },
            )
            timing.close_request(phases_token)
            reset_request_id(token)


def _route_template(scope: Scope) -> str:
    """The matched route's path template (low cardinality); unmatched paths share one label."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "<unmatched>"
