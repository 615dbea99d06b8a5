"""Gateway benchmarks; writes a Markdown section (``make bench`` -> bench/results.md).

A model is pushed by the pipeline on photo-like 224x224 JPEGs, then served by
``python -m serving`` (its own process, JWT on) on this machine:
1. Throughput and p50/p99 latency of ``:classify`` under CLIENTS concurrent clients, against
   calling the raw-bytes signature in-process with as many threads (target >= 0.7x).
2. A bad-request storm from another process while good clients keep going: oversize bodies,
   wrong types, decompression bombs, headers built to be slow to parse (GIF comments, empty
   JPEG markers, PNG text chunks, thousands of progressive scans, a hidden huge GIF frame),
   deep JSON, too many instances, bad and subject-less tokens with spoofed X-Forwarded-For,
   bursts over the rate limit, and connections that send headers or bodies too slowly. Each
   attacker and good client has its own loopback address (127.0.0.N), as distinct clients
   would. Reported: statuses per kind, 5xx count, the gateway still up, its memory, /healthz
   latency throughout (target: p99 under 100 ms), and the good requests' p99 against a quiet
   run (target <= 2x).

Both run twice: on the gateway alone (``make serve-app``) and on ``python -m serving.edge``,
nginx in front of it as ``make serve`` and the pods run it (issue 33); the edge runs are
skipped where nginx is not installed (``make edge``).

Every ratio compares two numbers measured in this one run: this machine is noisy.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import io
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tools")]

CLIENTS = 8
SECONDS = 10.0
GOOD = 4  # good clients during the storm
SECRET = "bench-secret-with-at-least-32-bytes!"
MAX_BYTES = 1_000_000
RATE, BURST = 150, 150  # per client: good clients stay below, the burst attacker does not
ATTACKERS, BURST_SIZE = 4, 100
SLOW = 10  # connections each attacker keeps sending headers or bodies too slowly
DEADLINE = 2.0  # nginx's header and body deadlines and the gateway's body deadline here (s)
STORM_RATE = 300  # bad requests/s, about twice the good traffic (the attackers' own CPU
# competes with the good clients' on this 2-core machine, so an unpaced storm measures that)


def token(sub: str | None, expired: bool = False) -> str:
    """A token for ``sub`` (None: without a subject)."""
    import jwt
    claims = {"exp": time.time() + (-60 if expired else 3600)}
    return jwt.encode(dict(claims, sub=sub) if sub else claims, SECRET, "HS256")


def drive(send, clients: int, seconds: float) -> dict:
    """Runs ``send(client index)`` in ``clients`` threads for ``seconds``: status counts,
    latencies (s) of the 200s, and requests/s."""
    statuses, latencies, lock = collections.Counter(), [], threading.Lock()
    deadline = time.perf_counter() + seconds

    def loop(index: int):
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            status = send(index)
            elapsed = time.perf_counter() - start
            with lock:
                statuses[status] += 1
                if status == 200:
                    latencies.append(elapsed)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(loop, range(clients)))
    latencies.sort()
    return {"statuses": statuses, "rate": len(latencies) / (time.perf_counter() - start),
            "p50": latencies[len(latencies) // 2] * 1e3,
            "p99": latencies[int(len(latencies) * 0.99)] * 1e3}


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of ``pid`` in MB."""
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    return tuple(int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))


def chunk(kind: bytes, data: bytes) -> bytes:
    """A PNG chunk."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int) -> bytes:
    """A valid PNG header declaring ``side`` x ``side`` grey pixels, then one empty row: a few
    dozen bytes that would decode to ``side``² bytes."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * (side + 1))) + chunk(b"IEND", b""))


def slow_headers(images: list[bytes]) -> dict[str, tuple[str, bytes]]:
    """Images whose headers cost a naive parser seconds, each under MAX_BYTES: name ->
    (format, bytes)."""
    gif, png = images
    room = MAX_BYTES - 1000  # for the image around the repeated blocks
    scan = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00\x00\x3f\x00" + b"\x00" * 8
    sof = b"\xff\xc2" + struct.pack(">HBHHB", 11, 8, 2048, 2048, 1) + b"\x01\x11\x00"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 8000, 8000, 0) + b"\x02\x01\x00\x00"
    return {"GIF comments": ("gif", gif[:-1] + b"\x21\xfe\x01x\x00" * (room // 5) + b";"),
            "JPEG empty markers": ("jpeg", b"\xff\xd8" + b"\xff\xfe\x00\x02" * (room // 4)
                                   + b"\xff\xd9"),
            "PNG text chunks": ("png", png[:33] + chunk(b"tEXt", b"k\0v") * (room // 15)
                                + png[33:]),
            "JPEG 2,000 scans": ("jpeg", b"\xff\xd8" + sof + scan * 2000 + b"\xff\xd9"),
            "GIF hidden frame": ("gif", gif[:-1] + frame + b";")}


def bad_requests(url: str, small: list[bytes]) -> tuple[list[tuple[str, str, dict, bytes]], str]:
    """The storm's kinds, ``(name, path, headers, body)``, and the gateway's model URL."""
    model = f"{url}/v1/models/image_classifier"
    good = {"Content-Type": "image/png", "Authorization": f"Bearer {token('attacker')}"}
    bomb = png_bomb(100_000)  # 10 gigapixels
    deep = b'{"instances": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    many = json.dumps({"instances": [{"b64": ""}] * 20_000}).encode()
    kinds = [
        ("oversize", ":classify", dict(good), b"\0" * (MAX_BYTES + 1)),
        ("wrong type", ":classify", dict(good, **{"Content-Type": "text/html"}), b"<html>"),
        ("wrong magic", ":classify", dict(good, **{"Content-Type": "image/jpeg"}), bomb),
        ("bomb", ":classify", dict(good), bomb),
        ("7000x7000 PNG", ":classify", dict(good), png_bomb(7000)),
        ("deep JSON", ":predict", dict(good), deep),
        ("20k instances", ":predict", dict(good), many),
        ("5,000-digit version", f"/versions/{'9' * 5000}:predict", dict(good), b"{}"),
        ("bad token", ":classify", dict(good, Authorization="Bearer not-a-token"), bomb),
        ("expired token", ":classify",
         dict(good, Authorization=f"Bearer {token('x', expired=True)}"), bomb),
        ("no sub, spoofed X-Forwarded-For", ":classify",
         dict(good, Authorization=f"Bearer {token(None)}"), bomb),
        ("burst", ":classify", dict(good, Authorization=f"Bearer {token('burst')}"), b"tiny"),
    ]
    kinds += [(name, ":classify", dict(good, **{"Content-Type": f"image/{fmt}"}), data)
              for name, (fmt, data) in slow_headers(small).items()]
    return kinds, model


def slowloris(port: int, counts: collections.Counter, lock, deadline: float, index: int):
    """Keeps SLOW connections sending an unfinished header, or a body shorter than its
    Content-Length, one byte a second; counts how the gateway ends them."""
    def opened(slow_body: bool) -> socket.socket:
        connection = socket.create_connection(("127.0.0.1", port),
                                              source_address=(f"127.0.0.{100 + index}", 0))
        head = (b"POST /v1/models/image_classifier:classify HTTP/1.1\r\nHost: x\r\n")
        if slow_body:
            head += (b"Content-Type: image/png\r\nAuthorization: Bearer "
                     + token(f"slow-{index}").encode() + b"\r\nContent-Length: 1000\r\n\r\n")
        connection.sendall(head)
        connection.setblocking(False)
        return connection

    open_ = [(opened(i % 2 == 1), i % 2 == 1) for i in range(SLOW)]
    while time.perf_counter() < deadline:
        time.sleep(1.0)
        for slot, (connection, slow_body) in enumerate(open_):
            try:
                answer = connection.recv(100)
            except BlockingIOError:
                try:
                    connection.send(b"a")
                except OSError:
                    pass
                continue
            except OSError:
                answer = b""
            name = "slow body" if slow_body else "slow headers"
            with lock:
                counts[(name, int(answer[9:12]) if answer[9:12].isdigit() else 0)] += 1
            connection.close()
            open_[slot] = (opened(slow_body), slow_body)
    for connection, _ in open_:
        connection.close()


def attack(url: str, seconds: float) -> None:
    """The storm, from its own process: ATTACKERS clients on their own loopback addresses,
    each sending every kind in turn (the burst kind BURST_SIZE times in a row, back to back),
    STORM_RATE requests/s in all, and each keeping SLOW connections too slow to finish."""
    import httpx
    import numpy as np
    from PIL import Image
    small = []
    for fmt in ("GIF", "PNG"):
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(buffer, fmt)
        small.append(buffer.getvalue())
    kinds, model = bad_requests(url, small)
    counts, lock = collections.Counter(), threading.Lock()
    deadline = time.perf_counter() + seconds

    def client_loop(index):
        sent, start = 0, time.perf_counter()
        transport = httpx.HTTPTransport(local_address=f"127.0.0.{100 + index}")
        with httpx.Client(timeout=30, transport=transport) as client:
            while time.perf_counter() < deadline:
                for name, path, headers, body in kinds:
                    if name.startswith("no sub"):
                        headers = dict(headers, **{"X-Forwarded-For": f"10.{sent % 250}.0.1"})
                    for _ in range(BURST_SIZE if name == "burst" else 1):
                        status = client.post(model + path, content=body,
                                             headers=headers).status_code
                        with lock:
                            counts[(name, status)] += 1
                        sent += 1
                    time.sleep(max(0.0, start + sent * ATTACKERS / STORM_RATE
                                   - time.perf_counter()))

    port = int(url.rsplit(":", 1)[1])
    with concurrent.futures.ThreadPoolExecutor(2 * ATTACKERS) as pool:
        slow = [pool.submit(slowloris, port, counts, lock, deadline, i) for i in range(ATTACKERS)]
        list(pool.map(client_loop, range(ATTACKERS)))
        for future in slow:
            future.result()
    print(json.dumps([[name, status, n] for (name, status), n in counts.items()]))


def probe(url: str, stop: threading.Event, latencies: list[float]) -> None:
    """/healthz every 20 ms until ``stop``; its latencies (s), a failure counted as 10 s."""
    import httpx
    with httpx.Client(timeout=10, transport=httpx.HTTPTransport(
            local_address="127.0.0.2")) as client:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                ok = client.get(f"{url}/healthz").status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start if ok else 10.0)
            time.sleep(0.02)


def start_gateway(serving: str, key_file: str, work: str, edge: bool = False
                  ) -> tuple[subprocess.Popen, str, int]:
    """The gateway alone, or behind nginx (``edge``): ``(process, url, the gateway's pid)``."""
    import httpx
    port = free_port()
    options = ["--serving-dir", serving, "--jwt-key-file", key_file, "--rate", str(RATE),
               "--burst", str(BURST), "--max-bytes", str(MAX_BYTES), "--body-timeout",
               str(DEADLINE)]
    command = ["-m", "serving", "--port", str(port), *options] if not edge else [
        "-m", "serving.edge", "--listen", f"127.0.0.1:{port}", "--upstream-port",
        str(free_port()), "--prefix", os.path.join(work, "edge"), "--header-timeout",
        str(DEADLINE), "--body-timeout", str(DEADLINE), "--max-body", str(MAX_BYTES), "--",
        *options]
    process = subprocess.Popen([sys.executable, *command], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/readyz", timeout=60).status_code == 200:
                return process, url, gateway_pid(process.pid) if edge else process.pid
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise RuntimeError("the gateway did not become ready")


def nginx_installed() -> bool:
    """Whether ``python -m serving.edge`` finds nginx (bench imports no serving code)."""
    return bool(shutil.which("nginx")) or os.access("/usr/sbin/nginx", os.X_OK)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gateway_pid(edge_pid: int) -> int:
    """The ``python -m serving`` that ``python -m serving.edge`` (``edge_pid``) started."""
    children = open(f"/proc/{edge_pid}/task/{edge_pid}/children").read().split()
    return next(int(c) for c in children if b"serving" in open(f"/proc/{c}/cmdline", "rb")
                .read())


def _pushed_model(work: str):
    """A model pushed by the pipeline from photo-like JPEGs: its config and the images."""
    from bench_model import jpeg_folder
    from ops.ingest import ingest
    from pipeline import local_runner
    from pipeline.config import PipelineConfig

    jpeg_folder(os.path.join(work, "images"), 20)
    ingest(os.path.join(work, "images"), os.path.join(work, "data"), progress=False)
    config = PipelineConfig(work_dir=work, data_root=os.path.join(work, "data"),
                            image_height=224, image_width=224, image_channels=3,
                            num_classes=3, train_steps=10, eval_steps=2, min_accuracy=0.0)
    assert local_runner.run(config).pushed
    images = []
    for folder, _, files in os.walk(os.path.join(work, "images")):
        images += [open(os.path.join(folder, f), "rb").read() for f in sorted(files)]
    return config, images


def _in_process(config, images) -> dict:
    """The raw-bytes signature called in-process by ``CLIENTS`` threads."""
    import tensorflow as tf

    from domain.features import RAW_INPUT, RAW_SIGNATURE
    signature = tf.saved_model.load(os.path.join(config.push_dir, "1")).signatures[
        RAW_SIGNATURE]

    def call(index: int) -> int:
        signature(**{RAW_INPUT: tf.constant([images[index % len(images)]])})
        return 200

    call(0)
    return drive(call, CLIENTS, SECONDS)


def _over_http(config, images, key_file: str, edge: bool = False) -> dict:
    """The gateway's ``:classify`` (behind nginx: ``edge``) alone, quiet, and during a
    bad-request storm."""
    import httpx
    gateway, url, pid = start_gateway(config.serving_dir, key_file, config.work_dir, edge)
    try:
        clients = [httpx.Client(timeout=30, transport=httpx.HTTPTransport(
            local_address=f"127.0.0.{10 + i}"), headers={
            "Content-Type": "image/jpeg", "Authorization": f"Bearer {token(f'good-{i}')}"})
            for i in range(CLIENTS)]
        classify = f"{url}/v1/models/image_classifier:classify"

        def call(index: int) -> int:
            return clients[index].post(classify, content=images[index % len(images)]
                                       ).status_code

        call(0)
        found = {"served": drive(call, CLIENTS, SECONDS), "quiet": drive(call, GOOD, SECONDS),
                 "before": rss_mb(pid)}
        stop, found["health"] = threading.Event(), []
        prober = threading.Thread(target=probe, args=(url, stop, found["health"]))
        prober.start()
        attacker = subprocess.Popen([sys.executable, __file__, "--attack", url,
                                     "--seconds", str(SECONDS)], cwd=ROOT,
                                    stdout=subprocess.PIPE, text=True)
        found["storm"] = drive(call, GOOD, SECONDS)
        found["attacks"] = {(name, status): n for name, status, n in
                            json.loads(attacker.communicate()[0])}
        stop.set()
        prober.join()
        found["after"] = rss_mb(pid)
        found["alive"] = gateway.poll() is None and \
            httpx.get(f"{url}/healthz").status_code == 200
    finally:
        gateway.terminate()
        gateway.wait(30)
    return found


def _throughput_lines(images, direct: dict, served: dict, edge: dict | None) -> list[str]:
    from bench_model import machine
    ratio = served["rate"] / direct["rate"]
    behind = [] if edge is None else [
        f"| nginx then the gateway (`make serve`: `python -m serving.edge`) | "
        f"{edge['rate']:.1f} | {edge['p50']:.1f} | {edge['p99']:.1f} |"]
    edge_ratio = [] if edge is None else [
        f"Behind nginx / in-process: **{edge['rate'] / direct['rate']:.2f}x**; target >= 0.7x: "
        f"{'met' if edge['rate'] / direct['rate'] >= 0.7 else 'MISSED'}. Behind nginx / the "
        f"gateway alone: **{edge['rate'] / served['rate']:.2f}x**; target >= 0.7x: "
        f"{'met' if edge['rate'] / served['rate'] >= 0.7 else 'MISSED'}.", ""]
    return [
        "# Gateway benchmarks", "", f"Machine: {machine()}", "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: a model pushed by the "
        f"pipeline (224x224 RGB), {len(images)} photo-like JPEGs of "
        f"{statistics.mean(map(len, images)):,.0f} bytes on average, one image per request, "
        f"{SECONDS:.0f} s per run, JWT on.", "",
        f"## Throughput under {CLIENTS} concurrent clients", "",
        "| path | requests/s | p50 ms | p99 ms |", "|---|---:|---:|---:|",
        f"| raw-bytes signature in-process, {CLIENTS} threads | {direct['rate']:.1f} | "
        f"{direct['p50']:.1f} | {direct['p99']:.1f} |",
        f"| gateway `:classify` over HTTP (uvicorn, its own process) | {served['rate']:.1f} | "
        f"{served['p50']:.1f} | {served['p99']:.1f} |", *behind, "",
        f"Gateway / in-process: **{ratio:.2f}x**; target >= 0.7x: "
        f"{'met' if ratio >= 0.7 else 'MISSED'}.", "", *edge_ratio]


def _storm_lines(m: dict, where: str) -> list[str]:
    attacks, storm, quiet, health = m["attacks"], m["storm"], m["quiet"], sorted(m["health"])
    bad = sum(attacks.values())
    server_errors = sum(n for (_, status), n in attacks.items() if status >= 500) + sum(
        n for s, n in list(storm["statuses"].items()) + list(m["served"]["statuses"].items())
        if s >= 500)
    by_kind = collections.defaultdict(collections.Counter)
    for (name, status), n in attacks.items():
        by_kind[name][status] += n
    p99_ratio = storm["p99"] / quiet["p99"]
    health_p99 = health[int(len(health) * 0.99)] * 1e3
    lines = [f"## Bad-request storm while {GOOD} good clients run: {where}", "",
             "| bad request | sent | statuses |", "|---|---:|---|"]
    lines += [f"| {name} | {sum(c.values())} | "
              f"{', '.join(f'{s}: {n}' for s, n in sorted(c.items()))} |"
              for name, c in by_kind.items()]
    return lines + [
        "", "| good traffic | requests/s | p50 ms | p99 ms | statuses |",
        "|---|---:|---:|---:|---|",
        *(f"| {name} | {run['rate']:.1f} | {run['p50']:.1f} | {run['p99']:.1f} | "
          f"{', '.join(f'{s}: {n}' for s, n in sorted(run['statuses'].items()))} |"
          for name, run in (("quiet", quiet), ("during the storm", storm))), "",
        f"- Bad requests: {bad} in {SECONDS:.0f} s ({bad / SECONDS:.0f}/s); 5xx answers: "
        f"**{server_errors}** (target 0); gateway still up: "
        f"**{'yes' if m['alive'] else 'NO'}**.",
        f"- Gateway memory: {m['before'][0]:.0f} MB before the storm, {m['after'][0]:.0f} MB "
        f"after (peak {m['after'][1]:.0f} MB).",
        f"- `/healthz` every 20 ms during the storm ({len(health)} probes): p50 "
        f"{health[len(health) // 2] * 1e3:.1f} ms, p99 **{health_p99:.1f} ms** (target < 100 ms: "
        f"{'met' if health_p99 < 100 else 'MISSED'}), slowest {health[-1] * 1e3:.0f} ms.",
        f"- Slow connections (1 byte a second) against the {DEADLINE:g} s deadlines, before "
        "authentication; the 'slow' rows count the connections ended. nginx resets slow headers "
        "(status 0) and holds slow bodies (its deadline is between two reads) without the "
        "gateway seeing a byte; the gateway alone (development-only) ends slow bodies with 408 "
        "and leaves slow headers open: their deadline is the edge's.",
        f"- Good p99 during the storm / quiet: **{p99_ratio:.2f}x**; target <= 2x: "
        f"{'met' if p99_ratio <= 2 else 'MISSED'}.", ""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results.md")
    parser.add_argument("--attack", default="", help=argparse.SUPPRESS)  # the storm process
    parser.add_argument("--seconds", type=float, default=SECONDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.attack:
        attack(args.attack, args.seconds)
        return 0
    with tempfile.TemporaryDirectory() as work:
        config, images = _pushed_model(work)
        key_file = os.path.join(work, "jwt.key")
        with open(key_file, "w") as f:
            f.write(SECRET)
        direct = _in_process(config, images)
        measured = _over_http(config, images, key_file)
        edge = _over_http(config, images, key_file, edge=True) if nginx_installed() else None
    lines = _throughput_lines(images, direct, measured["served"], edge and edge["served"]) + \
        _storm_lines(measured, "the gateway alone")
    lines += _storm_lines(edge, "behind nginx, as deployed") if edge else [
        "The gateway behind nginx: not measured, nginx is not installed (`make edge`).", ""]
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
