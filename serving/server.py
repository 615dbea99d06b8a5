"""The gateway's HTTP server: uvicorn with its own limits, set from ``ServerLimits``: a request
head still incomplete past ``max_header_bytes`` is refused (400, closed), past
``max_connections`` connections every request is answered 503 and its connection closed, an
idle connection closes ``keep_alive`` seconds after its last answer, and proxy headers are
left to the app (``serving.rate.Peers`` trusts only configured proxies).

The connection level proper belongs to the edge proxy (``serving.edge``, nginx): per-address
connection caps, header, body and send deadlines, whole heads over 16 KiB, chunked and slow
bodies. Without it (``make serve-app``) the gateway is for development only."""
from __future__ import annotations

import dataclasses
import ipaddress
import logging


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    max_header_bytes: int = 16 * 1024
    max_connections: int = 1000
    keep_alive: float = 5.0  # seconds an idle connection stays open after an answer


def loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(app, host: str, port: int, limits: ServerLimits, access_log: bool = False) -> None:
    """Serves ``app`` until interrupted (a warning first when ``host`` faces a network)."""
    import uvicorn
    if not loopback(host):
        logging.getLogger("serving").warning(
            "the gateway listens on %s without its edge proxy: it has no per-address "
            "connection caps nor header, body-read and send deadlines; facing a network, run "
            "`make serve` (python -m serving.edge)", host)
    # uvicorn answers 503 once its connections reach limit_concurrency, this one counted.
    uvicorn.run(app, host=host, port=port, proxy_headers=False, http="h11",
                h11_max_incomplete_event_size=limits.max_header_bytes,
                limit_concurrency=limits.max_connections + 1,
                timeout_keep_alive=limits.keep_alive, log_level="info", access_log=access_log)
