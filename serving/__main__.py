"""``python -m serving --serving-dir DIR``: the gateway on the pushed versions (in-process), or
``--backend http://tf-serving:8501`` to forward to TF Serving. It routes by the serving dir's
labels (``python -m ops.labels``), and serves the try-it page at ``/``. Alone it is for
development only: facing a network, run it behind its edge proxy (``make serve``: ``python -m
serving.edge``), which owns per-address connection caps and header, body and send deadlines."""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys

from serving.auth import load_key
from serving.backends import HttpBackend, LocalBackend
from serving.config import GatewayConfig
from serving.feedback import FEEDBACK, Answers
from serving.gateway import create_app
from serving.native_log import limit_native_log
from serving.routing import Router
from serving.server import ServerLimits, run

DEFAULTS, SERVER = GatewayConfig(), ServerLimits()


def _network(text: str) -> str:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    parser.add_argument("--serving-dir", default="outputs/serving")
    parser.add_argument("--model-name", default="image_classifier")
    parser.add_argument("--backend", default="", help="TF Serving REST URL; empty: in-process")
    parser.add_argument("--feedback-dir", default="",
                        help="where true classes are logged (default: <model dir>/feedback)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="another than loopback warns: the edge proxy belongs in front")
    parser.add_argument("--port", type=int, default=8080)
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-bytes", type=int, default=DEFAULTS.max_bytes)
    limits.add_argument("--max-pixels", type=int, default=DEFAULTS.max_pixels,
                        help="decoded pixels per image (0: 16x the model's input area, at "
                        "least 1 Mi, at most the model's own max_pixels)")
    limits.add_argument("--max-batch-pixels", type=int, default=DEFAULTS.max_batch_pixels,
                        help="decoded pixels per request and per backend call")
    limits.add_argument("--max-instances", type=int, default=DEFAULTS.max_instances,
                        help="images per :predict request")
    limits.add_argument("--max-bodies", type=int, default=DEFAULTS.max_bodies,
                        help="requests past authentication at once (503 beyond)")
    limits.add_argument("--max-bodies-per-client", type=int,
                        default=DEFAULTS.max_bodies_per_client,
                        help="of those, per token subject and per client address")
    limits.add_argument("--body-timeout", type=float, default=DEFAULTS.body_timeout,
                        help="seconds to receive a whole body (408 beyond)")
    limits.add_argument("--max-header-bytes", type=int, default=SERVER.max_header_bytes,
                        help="of a request head still incomplete (400 beyond; whole heads: "
                        "the edge's limit)")
    limits.add_argument("--max-connections", type=int, default=SERVER.max_connections,
                        help="connections at once (their requests get 503 beyond)")
    limits.add_argument("--keep-alive", type=float, default=SERVER.keep_alive,
                        help="seconds an idle connection stays open after an answer")
    limits.add_argument("--rate", type=float, default=DEFAULTS.rate_per_second,
                        help="requests per second per token subject")
    limits.add_argument("--burst", type=int, default=DEFAULTS.burst)
    limits.add_argument("--address-rate", type=float, default=DEFAULTS.address_rate,
                        help="requests per second per client address, authenticated or not")
    limits.add_argument("--address-burst", type=int, default=DEFAULTS.address_burst)
    limits.add_argument("--trusted-proxy", action="append", default=[], type=_network,
                        help="address or CIDR of a proxy whose X-Forwarded-For is believed "
                        "(repeatable; default: none, the TCP peer is the client)")
    limits.add_argument("--max-batch", type=int, default=DEFAULTS.max_batch,
                        help="images per backend call from concurrent requests (1: no batching)")
    auth = parser.add_argument_group("authentication")
    auth.add_argument("--jwt-key-file", default="",
                      help="HS256 secret (>= 32 bytes) or RS256 public key; else $GATEWAY_JWT_KEY")
    auth.add_argument("--issuer", default="", help="required token issuer (iss)")
    auth.add_argument("--audience", default="", help="required token audience (aud)")
    auth.add_argument("--max-token-lifetime", type=float, default=DEFAULTS.max_token_lifetime,
                      help="seconds; a token expiring later is refused (0: any)")
    auth.add_argument("--no-auth", action="store_true",
                      help="serve without authentication (local use only)")
    parser.add_argument("--access-log", action="store_true",
                        help="log every request (rejections are always logged)")
    return parser


def _key(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    if args.no_auth:
        return ""
    try:
        if args.jwt_key_file:
            with open(args.jwt_key_file, encoding="utf-8") as f:
                return load_key(f.read(), f"--jwt-key-file {args.jwt_key_file}")
        if os.environ.get("GATEWAY_JWT_KEY"):
            return load_key(os.environ["GATEWAY_JWT_KEY"], "GATEWAY_JWT_KEY")
    except (OSError, ValueError) as err:
        parser.error(str(err))
    parser.error("authentication is on: give --jwt-key-file or GATEWAY_JWT_KEY, or "
                 "--no-auth for local use")


def main(argv: list[str] | None = None) -> int:
    parser = arguments()
    args = parser.parse_args(argv)
    config = GatewayConfig(
        model_name=args.model_name, max_bytes=args.max_bytes, max_pixels=args.max_pixels,
        max_batch_pixels=args.max_batch_pixels, max_instances=args.max_instances,
        auth=not args.no_auth, jwt_key=_key(parser, args), issuer=args.issuer,
        audience=args.audience, max_token_lifetime=args.max_token_lifetime,
        rate_per_second=args.rate, burst=args.burst, address_rate=args.address_rate,
        address_burst=args.address_burst, trusted_proxies=tuple(args.trusted_proxy),
        max_batch=args.max_batch, max_bodies=args.max_bodies,
        max_bodies_per_client=args.max_bodies_per_client, body_timeout=args.body_timeout)
    push_dir = os.path.join(args.serving_dir, args.model_name)
    backend = HttpBackend(args.backend, args.model_name) if args.backend else LocalBackend(
        push_dir)
    answers = Answers(args.feedback_dir or os.path.join(push_dir, FEEDBACK))
    if not args.backend:  # in-process decoders (TensorFlow loads later): their warnings
        limit_native_log()  # rate-limited in the log
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run(create_app(config, Router(push_dir, backend), answers), args.host, args.port,
        ServerLimits(args.max_header_bytes, args.max_connections, args.keep_alive),
        args.access_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
