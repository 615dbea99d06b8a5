"""Per-client rate limits: token buckets keyed by the peer address (every request, before
authentication) and by the token's subject (after it). The peer is the TCP peer unless it is a
configured trusted proxy; only then does ``X-Forwarded-For`` name the client."""
from __future__ import annotations

import collections
import ipaddress
import threading
import time

from starlette.requests import Request


class TokenBuckets:
    """Per-client token buckets: ``rate`` tokens a second, at most ``burst`` saved; at most
    ``clients`` remembered (the least recently seen forgotten: a full bucket again)."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic, clients: int = 100_000):
        self.rate, self.burst, self.clock, self.clients = rate, burst, clock, clients
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = \
            collections.OrderedDict()
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """0 if the client may go now, else the seconds until a token is free."""
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self._buckets[client] = (tokens - 1 if tokens >= 1 else tokens, now)
            if len(self._buckets) > self.clients:
                self._buckets.popitem(last=False)
            return wait


class Peers:
    """The client address of a request: the TCP peer, or, when that peer is one of the
    ``trusted`` proxies (addresses or CIDR networks), the last address in
    ``X-Forwarded-For`` that is not itself a trusted proxy."""

    def __init__(self, trusted: tuple[str, ...] = ()):
        self.trusted = [ipaddress.ip_network(t, strict=False) for t in trusted]

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted)

    def client(self, request: Request) -> str:
        peer = request.client.host if request.client else "unknown"
        if not self._is_trusted(peer):
            return peer
        hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",")]
        for hop in reversed(hops[-32:]):
            if hop and not self._is_trusted(hop):
                return hop[:64]
        return peer
