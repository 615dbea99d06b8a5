"""Native libraries' log lines, rate-limited: TensorFlow's decoders (libpng, giflib, libjpeg)
write a warning per malformed chunk straight to file descriptor 2, so a request's bytes could
become five times as many log bytes. ``limit_native_log`` puts a pipe on descriptor 2 and a
thread that passes at most ``burst`` lines of each kind (source line and message, digits
aside) per ``window`` seconds, then one JSON line counting what it dropped. Python's own
output (``sys.stderr``: logging, tracebacks) keeps the original descriptor and is never
held back."""
from __future__ import annotations

import io
import json
import os
import re
import select
import sys
import threading
import time

# absl's format: W0101 12:00:00.000000  1234 png_io.cc:96] PNG warning: gAMA: invalid
NATIVE = re.compile(rb"^[IWEF]\d{4} [\d:.]+ +\d+ ([^\]\s]+)\] ?(.*)$")


class LineLimiter:
    """Decides per line: ``burst`` lines of a kind per ``window`` seconds pass."""

    def __init__(self, burst: int = 5, window: float = 10.0, clock=time.monotonic):
        self.burst, self.window, self.clock = burst, window, clock
        self._start, self._counts = clock(), {}

    def kind(self, line: bytes) -> bytes | None:
        """The kind of a native log line (None: not one, always passes)."""
        match = NATIVE.match(line)
        return match and match.group(1) + b" " + re.sub(rb"\d+", b"#", match.group(2))[:120]

    def admit(self, line: bytes) -> bool:
        kind = self.kind(line)
        if kind is None or line[:1] == b"F":
            return True
        self._counts[kind] = self._counts.get(kind, 0) + 1
        return self._counts[kind] <= self.burst

    def rollover(self) -> list[bytes]:
        """At the end of a window: one line per kind that had lines dropped; a new window."""
        if self.clock() - self._start < self.window:
            return []
        dropped = [json.dumps({"event": "native_log_suppressed", "kind": kind.decode(
            "utf-8", "replace"), "lines": count - self.burst, "seconds": self.window}).encode()
            + b"\n" for kind, count in self._counts.items() if count > self.burst]
        self._start, self._counts = self.clock(), {}
        return dropped


def _forward(read_fd: int, write_fd: int, limiter: LineLimiter) -> None:
    pending = b""
    while True:
        ready, _, _ = select.select([read_fd], [], [], 1.0)
        chunk = os.read(read_fd, 65536) if ready else b""
        if ready and not chunk:
            return
        *lines, pending = (pending + chunk).split(b"\n")
        if len(pending) > 65536:
            lines, pending = lines + [pending], b""
        out = [line + b"\n" for line in lines if limiter.admit(line)] + limiter.rollover()
        if out:
            os.write(write_fd, b"".join(out))


def limit_native_log(limiter: LineLimiter | None = None) -> None:
    """Routes descriptor 2 through ``limiter`` (a daemon thread); ``sys.stderr`` keeps a
    duplicate of the original descriptor."""
    original = os.dup(2)
    sys.stderr.flush()
    sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(original), "wb", buffering=0),
                                  encoding="utf-8", errors="backslashreplace",
                                  line_buffering=True, write_through=True)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    threading.Thread(target=_forward, args=(read_fd, original, limiter or LineLimiter()),
                     name="native-log", daemon=True).start()
