"""``python -m serving.edge``: the gateway behind its edge proxy, as it is meant to face the
internet. nginx (Debian's package; ``make edge`` installs it) owns the connection level with
``serving/nginx.conf``: connections and requests per client address, header, body and send
deadlines, the 16 KiB head limit, whole bodies (chunked or slow) buffered before the
application sees them. The gateway (``python -m serving``) listens on loopback behind it and
believes ``X-Forwarded-For`` from nginx alone (``--trusted-proxy``)."""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import shutil
import signal
import subprocess
import sys

TEMPLATE = pathlib.Path(__file__).with_name("nginx.conf")
NO_NGINX = ("nginx is not installed: `make edge` installs Debian's nginx-light (as root, with "
            "apt-get), or install nginx yourself; `make serve-app` runs the gateway alone")


@dataclasses.dataclass(frozen=True)
class EdgeLimits:
    """What ``serving/nginx.conf`` takes (times in seconds)."""

    listen: str = "127.0.0.1:8080"
    upstream: str = "127.0.0.1:8081"
    connections_per_address: int = 64
    requests_per_second: int = 100
    request_burst: int = 200
    header_timeout: float = 10.0
    body_timeout: float = 10.0  # between two reads of a body
    send_timeout: float = 10.0  # between two writes the client accepts
    max_body: str = "10m"


def render(limits: EdgeLimits) -> str:
    """``serving/nginx.conf`` with ``limits`` filled in."""
    text = TEMPLATE.read_text(encoding="utf-8")
    for field in dataclasses.fields(limits):
        value = getattr(limits, field.name)
        text = text.replace(f"@{field.name.upper()}@", f"{value:g}" if isinstance(
            value, float) else str(value))
    if "@" in text.split("# Per client", 1)[1]:
        raise ValueError("serving/nginx.conf has a placeholder nothing fills")
    return text


def nginx_binary() -> str:
    """The nginx executable ('' when it is not installed)."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), "")


def prepare(prefix: str, limits: EdgeLimits) -> list[str]:
    """Writes the rendered config into ``prefix``; the nginx command that runs it in the
    foreground."""
    binary = nginx_binary()
    if not binary:
        raise FileNotFoundError(NO_NGINX)
    os.makedirs(prefix, exist_ok=True)
    conf = os.path.join(os.path.abspath(prefix), "nginx.conf")
    text = render(limits)
    if os.geteuid() == 0:  # (CI, a dev container) workers that can write in the prefix
        text = "user root;\n" + text
    pathlib.Path(conf).write_text(text, encoding="utf-8")
    return [binary, "-e", "stderr", "-p", os.path.abspath(prefix) + "/", "-c", conf, "-g",
            "daemon off;"]


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving.edge", description=__doc__,
                                     epilog="Arguments after -- go to python -m serving.")
    defaults = EdgeLimits()
    parser.add_argument("--listen", default=defaults.listen, help="nginx's address:port")
    parser.add_argument("--upstream-port", type=int, default=8081,
                        help="the gateway's port on 127.0.0.1")
    parser.add_argument("--prefix", default="outputs/edge", help="nginx's config, pid, logs")
    for field in dataclasses.fields(EdgeLimits):
        if field.name not in ("listen", "upstream"):
            parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default),
                                default=field.default)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, gateway_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) \
        if "--" in argv else (argv, [])
    args = arguments().parse_args(ours)
    limits = EdgeLimits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(
        EdgeLimits) if f.name not in ("listen", "upstream")}, listen=args.listen,
        upstream=f"127.0.0.1:{args.upstream_port}")
    try:
        command = prepare(args.prefix, limits)
    except FileNotFoundError as error:  # a user's mistake: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    gateway = subprocess.Popen([sys.executable, "-m", "serving", "--host", "127.0.0.1",
                                "--port", str(args.upstream_port), "--trusted-proxy",
                                "127.0.0.1/32", *gateway_args])
    edge = subprocess.Popen(command)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    stopped = False
    try:
        while gateway.poll() is None and edge.poll() is None:
            try:
                gateway.wait(1)
            except subprocess.TimeoutExpired:
                pass
    except (KeyboardInterrupt, SystemExit):
        stopped = True  # asked to stop: both are stopped below
    finally:
        for process in (edge, gateway):
            process.terminate()
            process.wait(10)
    return 0 if stopped else (gateway.returncode or edge.returncode or 1)


if __name__ == "__main__":
    sys.exit(main())
