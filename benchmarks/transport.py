"""A lean HTTP/1.1 transport for httpx.AsyncClient: the load generator's wire, kept cheap.

At concurrency 1 the client's own time is part of every latency the benchmark reports. This
transport writes the request in a single send on one keep-alive asyncio connection and parses
the answer with httptools (the C parser uvicorn itself uses) where httpx's default runs
httpcore over anyio and parses with h11 in pure Python: the load generator spends about 0.5 ms
of CPU per GET /healthz at c=1 and 0.24 ms at c=64 through it, 1.2 and 0.75 ms through
httpx's own, on a 2-core EPYC (`python -m benchmarks.experiments.loadgen_vs_wrk`,
docs/performance.md). Requests,
responses, timeouts and errors stay httpx's own types, so callers do not change.

Scope, on purpose: plain http:// only (the benchmark drives local servers; https falls back to
httpx's transport in `client_transport`), one request at a time per connection (one client per
closed-loop worker, as `loadgen.run_point` uses it), bodies already in memory. A connection that
the server closed while idle is reopened once, as httpcore does.
"""

from __future__ import annotations

import asyncio

import httptools
import httpx


class _ClosedBeforeAnswer(httpx.RemoteProtocolError):
    """The connection ended before any byte of the answer (a kept-alive one the server shut)."""


class _Reader:
    """httptools callbacks: collects one response's status, headers and body."""

    def __init__(self, head_only: bool) -> None:
        self.head_only = head_only
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.complete = False
        self.keep_alive = False
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        # llhttp answers this only until the message completes (then it reports False).
        self.keep_alive = self.parser.should_keep_alive()
        if self.head_only:  # a HEAD answer announces a length but carries no body
            self.complete = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class LeanTransport(httpx.AsyncBaseTransport):
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self) -> None:
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._origin: tuple[str, int] | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"LeanTransport speaks http:// only: {request.url}")
        timeout: dict[str, float | None] = request.extensions.get("timeout", {})
        body = await request.aread()
        lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode(), request.url.raw_path)]
        lines += [b"%s: %s\r\n" % (k, v) for k, v in request.headers.raw]
        wire = b"".join(lines) + b"\r\n" + body
        reused = self._writer is not None
        try:
            return await self._exchange(request, wire, timeout)
        except _ClosedBeforeAnswer:
            if not reused:
                raise
        # The server closed the kept-alive connection while it was idle: open a fresh one.
        return await self._exchange(request, wire, timeout)

    async def _exchange(
        self, request: httpx.Request, wire: bytes, timeout: dict[str, float | None]
    ) -> httpx.Response:
        origin = (request.url.host, request.url.port or 80)
        if self._writer is None or self._origin != origin:
            await self.aclose()
            try:
                async with asyncio.timeout(timeout.get("connect")):
                    self._reader, self._writer = await asyncio.open_connection(*origin)
            except TimeoutError:
                raise httpx.ConnectTimeout(
                    f"connect to {origin} timed out", request=request
                ) from None
            except OSError as e:
                raise httpx.ConnectError(str(e), request=request) from e
            self._origin = origin
        assert self._reader is not None and self._writer is not None
        reader = _Reader(head_only=request.method == "HEAD")
        parser = reader.parser
        got_bytes = False
        try:
            self._writer.write(wire)
            async with asyncio.timeout(timeout.get("read")):
                while not reader.complete:
                    data = await self._reader.read(65536)
                    if not data:
                        closed = _ClosedBeforeAnswer if not got_bytes else httpx.RemoteProtocolError
                        raise closed("server closed the connection", request=request)
                    got_bytes = True
                    parser.feed_data(data)
        except TimeoutError:
            await self.aclose()
            raise httpx.ReadTimeout("no answer within the read timeout", request=request) from None
        except httptools.HttpParserError as e:
            await self.aclose()
            raise httpx.RemoteProtocolError(f"malformed answer: {e}", request=request) from e
        except httpx.RemoteProtocolError:
            await self.aclose()
            raise
        except OSError as e:
            await self.aclose()
            raise httpx.ReadError(str(e), request=request) from e
        if not reader.keep_alive:
            await self.aclose()
        return httpx.Response(
            parser.get_status_code(),
            headers=reader.headers,
            content=b"".join(reader.body),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing."""

    def extract_cookies(self, response: httpx.Response) -> None:
        pass


class CookielessClient(httpx.AsyncClient):
    """An httpx.AsyncClient that neither keeps nor sends cookies.

    The servers measured set none, yet httpx passes every answer through http.cookiejar
    (wrapping request and answer in urllib objects) to look for Set-Cookie: ~35 us of client
    time per request on the 2-core box, in every latency at concurrency 1, whichever server
    answers. Everything else is httpx's own.
    """

    _jar = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._jar

    @cookies.setter
    def cookies(self, cookies: object) -> None:  # AsyncClient.__init__ sets it: nothing to keep
        pass


def client_transport(base_url: str) -> httpx.AsyncBaseTransport | None:
    """The lean transport for http:// targets; None (httpx's own) for anything else."""
    return LeanTransport() if httpx.URL(base_url).scheme == "http" else None
