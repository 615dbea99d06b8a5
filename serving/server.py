"""The gateway's HTTP server: uvicorn with the limits that must hold before a request reaches
the app (before authentication): at most ``max_header_bytes`` of request line and headers
(400 beyond), all of them within ``header_timeout`` seconds of the connection or of the
previous response (else 408 and the connection closed: no slow-header client holds a
connection; the rest of a body the app refused without reading has the same deadline), at
most ``max_connections`` connections (503 and closed beyond), a share of them per peer address
(``max_connections_per_address``), as many requests in progress, and proxy headers ignored
(``serving.rate.Peers`` trusts only configured proxies). The connection level proper
(per-address caps, read and send deadlines, buffered bodies) belongs to the edge proxy
(``serving.edge``)."""
from __future__ import annotations

import asyncio
import dataclasses

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
TOO_LARGE = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n" \
    b"Content-Length: 0\r\n\r\n"
FULL = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    max_header_bytes: int = 16 * 1024
    header_timeout: float = 10.0
    max_connections: int = 1000
    keep_alive: int = 5  # seconds an idle connection stays open after a response
    # Connections of one peer address (0: a quarter of max_connections, at least 16); behind a
    # proxy that caps each client (serving.edge), every connection is the proxy's: set it to
    # max_connections.
    max_connections_per_address: int = 0

    def share(self) -> int:
        """The connections one peer address may hold."""
        return self.max_connections_per_address or max(self.max_connections // 4,
                                                       min(self.max_connections, 16))


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a connection cap."""

    limits = ServerLimits()

    per_address: dict[str, int] = {}  # open connections by peer address (one per server)

    def connection_made(self, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        self._address = peer[0] if isinstance(peer, tuple) else str(peer)
        full = len(self.connections) >= self.limits.max_connections or \
            self.per_address.get(self._address, 0) >= self.limits.share()
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        if full:
            self._address = None
            transport.write(FULL)
            transport.close()
            return
        self.per_address[self._address] = self.per_address.get(self._address, 0) + 1
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _waiting(self) -> bool:
        """Whether only the client can move: its next request's headers are due, or the rest
        of a body the app answered without reading (a refusal)."""
        return self.conn.their_state is h11.IDLE or (
            self.conn.their_state is h11.SEND_BODY and self.conn.our_state is h11.DONE)

    def _late(self) -> None:
        self._header_timer = None
        if self._waiting() and not self.transport.is_closing():
            if self.conn.their_state is h11.IDLE:
                self.transport.write(TIMEOUT)
            self.transport.close()

    def _head_too_large(self, data: bytes) -> bool:
        """Whether the request head now arriving is over ``max_header_bytes`` (h11 caps only
        a head still incomplete: a whole 60 KB head in one read passes it)."""
        if self.conn.their_state is not h11.IDLE:
            self._head = b""
            return False
        self._head = getattr(self, "_head", b"") + data
        end = self._head.find(b"\r\n\r\n")
        if end < 0 and len(self._head) <= self.limits.max_header_bytes:
            return False
        too_large = (len(self._head) if end < 0 else end + 4) > self.limits.max_header_bytes
        self._head = b""
        return too_large

    def data_received(self, data: bytes) -> None:
        if self._head_too_large(data):
            self._disarm()
            self.transport.write(TOO_LARGE)
            self.transport.close()
            return
        super().data_received(data)
        if not self._waiting():  # the request's headers are complete
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._waiting():
            self._arm()  # the same deadline for the next headers or the unread body's rest
            if self.conn.their_state is h11.SEND_BODY and self._chunked():
                self.transport.pause_reading()  # a refused chunked body is never parsed

    def _chunked(self) -> bool:
        """Whether the current request's body is chunked: h11 parses each chunk as an event
        in the event loop (1-byte chunks: 13.5 s of CPU in 12 s), so the rest of a refused
        one is left unread until the deadline closes the connection; a body of a declared
        length is read in large pieces and drained, keeping the connection."""
        cycle = getattr(self, "cycle", None)
        return cycle is not None and any(name == b"transfer-encoding"
                                         for name, _ in cycle.scope["headers"])

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if getattr(self, "_address", None) is not None:
            self.per_address[self._address] -= 1
            if not self.per_address[self._address]:
                del self.per_address[self._address]
            self._address = None
        super().connection_lost(exc)


def run(app, host: str, port: int, limits: ServerLimits, access_log: bool = False) -> None:
    """Serves ``app`` until interrupted."""
    import uvicorn
    protocol = type("GatewayProtocol", (GuardedH11Protocol,), {"limits": limits,
                                                                "per_address": {}})
    uvicorn.run(app, host=host, port=port, http=protocol, proxy_headers=False,
                h11_max_incomplete_event_size=limits.max_header_bytes,
                limit_concurrency=limits.max_connections + 1, timeout_keep_alive=limits.keep_alive,
                log_level="info", access_log=access_log)
