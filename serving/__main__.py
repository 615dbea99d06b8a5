"""``python -m serving --serving-dir DIR``: the gateway on the pushed versions (in-process), or
``--backend http://tf-serving:8501`` to forward to TF Serving. It routes by the serving dir's
labels (``python -m ops.labels``), and serves the try-it page at ``/``."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from serving.backends import HttpBackend, LocalBackend
from serving.feedback import FEEDBACK, Answers
from serving.gateway import GatewayConfig, create_app
from serving.routing import Router


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    parser.add_argument("--serving-dir", default="outputs/serving")
    parser.add_argument("--model-name", default="image_classifier")
    parser.add_argument("--backend", default="", help="TF Serving REST URL; empty: in-process")
    parser.add_argument("--feedback-dir", default="",
                        help="where true classes are logged (default: <model dir>/feedback)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--max-bytes", type=int, default=GatewayConfig.max_bytes)
    parser.add_argument("--rate", type=float, default=GatewayConfig.rate_per_second,
                        help="requests per second per client")
    parser.add_argument("--burst", type=int, default=GatewayConfig.burst)
    parser.add_argument("--max-batch", type=int, default=GatewayConfig.max_batch,
                        help="images per backend call from concurrent requests (1: no batching)")
    parser.add_argument("--jwt-key-file", default="",
                        help="HS256 secret or RS256 public key; else $GATEWAY_JWT_KEY")
    parser.add_argument("--no-auth", action="store_true",
                        help="serve without authentication (local use only)")
    parser.add_argument("--access-log", action="store_true",
                        help="log every request (rejections are always logged)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = arguments()
    args = parser.parse_args(argv)
    key = open(args.jwt_key_file).read() if args.jwt_key_file else os.environ.get(
        "GATEWAY_JWT_KEY", "")
    if not args.no_auth and not key:
        parser.error("authentication is on: give --jwt-key-file or GATEWAY_JWT_KEY, or "
                     "--no-auth for local use")
    config = GatewayConfig(model_name=args.model_name, max_bytes=args.max_bytes,
                           auth=not args.no_auth, jwt_key=key, rate_per_second=args.rate,
                           burst=args.burst, max_batch=args.max_batch)
    push_dir = os.path.join(args.serving_dir, args.model_name)
    backend = HttpBackend(args.backend, args.model_name) if args.backend else LocalBackend(
        push_dir)
    answers = Answers(args.feedback_dir or os.path.join(push_dir, FEEDBACK))
    import uvicorn
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    uvicorn.run(create_app(config, Router(push_dir, backend), answers), host=args.host,
                port=args.port, log_level="info", access_log=args.access_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
