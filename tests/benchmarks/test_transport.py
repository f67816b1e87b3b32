"""The load generator's lean transport against real sockets: canned answers and a real uvicorn."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from benchmarks import loadgen
from benchmarks.inputs import generated
from benchmarks.transport import CookielessClient, LeanTransport, client_transport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request off the wire: (head, body by Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


async def with_server(handler: Handler, body: Callable[[str], Awaitable[None]]) -> None:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await body(f"http://127.0.0.1:{port}")
    finally:
        server.close()


def test_posts_keep_one_connection_and_read_length_and_chunked_bodies() -> None:
    connections: list[int] = []
    bodies: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        for i in range(3):
            _, body = await read_request(reader)
            bodies.append(body)
            if i == 1:  # the same answer, chunked, in two pieces
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nech")
                await writer.drain()
                writer.write(b"o:" + body[:1] + b"\r\n" + b"0\r\n\r\n")
            else:
                answer = b"echo:" + body[:1]
                writer.write(b"HTTP/1.1 201 Created\r\nx-n: %d\r\n" % i)
                writer.write(b"content-length: %d\r\n\r\n%s" % (len(answer), answer))
        await writer.drain()
        writer.close()

    async def go(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, transport=LeanTransport()) as client:
            first = await client.post("/x", content=b"a" * 70_000)  # more than one read
            assert (first.status_code, first.headers["x-n"], first.content) == (201, "0", b"echo:a")
            second = await client.post("/x", content=b"b")
            assert (second.status_code, second.content) == (200, b"echo:b")
            third = await client.post("/x", json={"z": 1})
            assert third.content == b"echo:{"

    asyncio.run(with_server(handler, go))
    assert connections == [1]  # kept alive across all three
    assert bodies == [b"a" * 70_000, b"b", b'{"z":1}']


def test_the_load_generators_client_keeps_no_cookies() -> None:
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            head, _ = await read_request(reader)
            heads.append(head)
            writer.write(b"HTTP/1.1 200 OK\r\nset-cookie: session=abc; Path=/\r\n")
            writer.write(b"content-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def go(url: str) -> None:
        async with CookielessClient(base_url=url, transport=LeanTransport()) as client:
            for _ in range(2):
                r = await client.get("/")
                assert r.text == "ok" and r.headers["set-cookie"].startswith("session=")
            assert not client.cookies

    asyncio.run(with_server(handler, go))
    assert len(heads) == 2 and all(b"cookie" not in h.lower() for h in heads)


def test_reopens_a_kept_alive_connection_the_server_closed_and_honours_connection_close() -> None:
    served: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(len(served))
        await read_request(reader)
        if len(served) == 1:  # keep-alive answer, then the server shuts the idle connection
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def go(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, transport=LeanTransport()) as client:
            for _ in range(3):
                assert (await client.get("/")).text == "ok"

    asyncio.run(with_server(handler, go))
    assert served == [0, 1, 2]  # one connection per request, each failure recovered


def test_errors_are_httpx_errors() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(1)
        writer.close()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await writer.drain()
        writer.close()

    async def expect(kind: type[Exception], **client: object) -> Callable[[str], Awaitable[None]]:
        async def go(url: str) -> None:
            async with httpx.AsyncClient(base_url=url, transport=LeanTransport(), **client) as c:  # type: ignore[arg-type]
                with pytest.raises(kind):
                    await c.get("/")

        return go

    async def all_cases() -> None:
        await with_server(silent, await expect(httpx.ReadTimeout, timeout=0.1))
        await with_server(garbage, await expect(httpx.RemoteProtocolError))
        await with_server(cut, await expect(httpx.RemoteProtocolError))
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        async with httpx.AsyncClient(transport=LeanTransport()) as c:
            with pytest.raises(httpx.ConnectError):
                await c.get(f"http://127.0.0.1:{port}/")
            with pytest.raises(httpx.UnsupportedProtocol):
                await c.get("https://127.0.0.1:1/")

    asyncio.run(all_cases())
    assert client_transport("https://example.org") is None  # httpx's own for TLS
    assert isinstance(client_transport("http://127.0.0.1:8000"), LeanTransport)


def test_load_generator_drives_a_real_uvicorn_through_the_lean_transport() -> None:
    app = FastAPI()

    @app.post("/classify")
    async def classify(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    request = loadgen.make_requester(
        "litserve", "classify", "m", generated(2, (8, 8), "RGB", "JPEG")
    )

    async def go() -> list[loadgen.PointResult]:
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        try:
            return await loadgen.sweep(
                f"http://127.0.0.1:{port}", "t", "classify", "m", request, [1, 3], 1.0, 0.2
            )
        finally:
            server.should_exit = True
            await serving

    points = loadgen.run(go())
    assert [p.concurrency for p in points] == [1, 3]
    assert all(p.requests > 0 and not p.errors for p in points), [
        (p.concurrency, p.requests, p.errors) for p in points
    ]
