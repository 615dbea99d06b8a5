"""The gateway's settings: its limits, keys and time budgets."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    """The gateway's limits and keys (times in seconds)."""

    model_name: str = "image_classifier"
    max_bytes: int = 10 * 2**20
    max_pixels: int = 0  # per image; 0: derived from the served version's input size
    max_batch_pixels: int = 2**24  # decoded pixels per request and per backend call
    max_instances: int = 32  # images per :predict request
    auth: bool = True
    jwt_key: str = ""  # HS256 secret (>= 32 bytes), or an RS256 public key (PEM)
    issuer: str = ""  # required ``iss`` when set
    audience: str = ""  # required ``aud`` when set
    max_token_lifetime: float = 86400.0  # an ``exp`` further ahead is refused (0: any)
    rate_per_second: float = 10.0  # per token subject
    burst: int = 20
    address_rate: float = 100.0  # per client address, every request
    address_burst: int = 200
    trusted_proxies: tuple[str, ...] = ()  # addresses/CIDRs whose X-Forwarded-For is believed
    top_k: int = 3
    max_batch: int = 32  # images per backend call, from concurrent requests
    batch_window: float = 0.002  # seconds a request waits for others to batch with
    max_bodies: int = 32  # requests past authentication at once (503 beyond)
    max_bodies_per_client: int = 8  # of those, per token subject and per client address
    body_timeout: float = 10.0  # to receive a whole body (408)
    check_timeout: float = 5.0  # budget of routing, parsing and checking a request's images
    control_timeout: float = 2.0  # budget of readiness, status and metrics
    model_timeout: float = 30.0  # budget of a backend call, a model load included
    refresh_interval: float = 2.0  # between background backend refreshes
    max_json_depth: int = 8
