"""The ARI client against a tiny HTTP server that misbehaves like a busy Asterisk."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from pbxbrain.adapters.ari import AriClient, AriUnavailable

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]"


class Server:
    """Reads each request; the first ``drops`` connections are closed without an answer
    (a kept-alive connection Asterisk closed as it was reused), then answers ``[]``."""

    def __init__(self, drops: int) -> None:
        self.drops = drops
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            self.requests += 1
            if self.drops > 0:
                self.drops -= 1
                writer.close()
                return
            writer.write(OK)
            await writer.drain()


@pytest.fixture
async def serve() -> AsyncIterator[tuple[Server, AriClient]]:
    server = Server(drops=0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await server.handle(reader, writer)

    tcp = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    client = AriClient(f"http://127.0.0.1:{port}", "u", "p", "app")
    try:
        yield server, client
    finally:
        await client.close()
        tcp.close()
        await tcp.wait_closed()


async def test_given_a_dropped_connection_then_a_get_is_sent_again_once(
    serve: tuple[Server, AriClient],
) -> None:
    server, client = serve
    server.drops = 1
    assert await client.endpoints_of("PJSIP") == []
    assert server.requests == 2


async def test_given_asterisk_keeps_dropping_then_it_is_unavailable(
    serve: tuple[Server, AriClient],
) -> None:
    server, client = serve
    server.drops = 10
    with pytest.raises(AriUnavailable, match="Server disconnected"):
        await client.request("DELETE", "/channels/c1")
    assert server.requests == 2  # sent again once (by aiohttp), not more


async def test_given_a_post_dropped_then_it_is_not_sent_again(
    serve: tuple[Server, AriClient],
) -> None:
    server, client = serve
    server.drops = 1  # Asterisk may have originated before the connection dropped
    with pytest.raises(AriUnavailable, match="Server disconnected"):
        await client.request("POST", "/channels/c1-1", params={"endpoint": "PJSIP/101"})
    assert server.requests == 1


async def test_given_requests_then_they_carry_basic_auth(
    serve: tuple[Server, AriClient],
) -> None:
    _, client = serve
    assert client.session.headers["Authorization"] == "Basic dTpw"  # u:p
