"""The gateway as an attacker meets it: one real ``python -m serving`` process on loopback over
a small SavedModel (the real raw-bytes decode path, an 8x8 grey input), sent hostile images
made here, slow and huge headers and bodies, deep JSON, oversized batches and spoofed headers,
while a prober checks that ``/healthz`` keeps answering fast and a victim client's good
requests still get answers. Each attack comes from its own loopback address (127.0.0.N), so
rate limits by address are per attack. The attacks run twice: on the gateway alone
(``make serve-app``) and on ``python -m serving.edge``, nginx in front, as ``make serve`` and
the pods run it (skipped where nginx is not installed); slow headers only on the latter,
whose deadlines they are (the gateway alone is for development)."""
from __future__ import annotations

import base64
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from typing import NamedTuple

import httpx
import jwt
import numpy as np
import pytest
from PIL import Image

from domain import registry
from serving.edge import nginx_binary
from tests.helpers import free_port, publish_tiny_model, wait_ready

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "attack-test-secret-with-32-bytes-or-more"
MODEL = "image_classifier"
PATH = f"/v1/models/{MODEL}"
HEADER_TIMEOUT, BODY_TIMEOUT = 1.0, 1.0


def token(sub: str | None = "attacker", **claims) -> str:
    body = {"exp": time.time() + 600, **claims}
    if sub is not None:
        body["sub"] = sub
    return jwt.encode(body, SECRET, "HS256")


def rss_mb(pid: int) -> float:
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    return int(fields["VmRSS"].split()[0]) / 1024


PROBE = """
import json, os, sys, time
import httpx
url, stop, bearer, image = sys.argv[1:]
image = bytes.fromhex(image)
latencies, failures, victim = [], 0, []
with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=5) as client, \\
        httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.3"), timeout=10) as good:
    while not os.path.exists(stop):
        start = time.perf_counter()
        try:
            ok = client.get(url + "/healthz").status_code == 200
        except httpx.HTTPError:
            ok = False
        latencies.append(time.perf_counter() - start)
        failures += not ok
        if len(latencies) % 15 == 1:  # about 3 a second: under its address's rate
            start = time.perf_counter()
            try:
                status = good.post(url + "/v1/models/image_classifier:classify", content=image,
                                   headers={"Content-Type": "image/png",
                                            "Authorization": "Bearer " + bearer}).status_code
            except httpx.HTTPError:
                status = 0
            victim.append((status, time.perf_counter() - start))
        time.sleep(0.02)
print(json.dumps({"latencies": latencies, "failures": failures, "victim": victim}))
"""


class Prober:
    """From a process and addresses of its own (the tests' own work never delays it): asks
    ``/healthz`` every 20 ms, and a victim client classifies a good image about 3 times a
    second. ``results()`` stops it: ``(/healthz latencies in s, /healthz failures, the
    victim's (status, latency) pairs)``."""

    def __init__(self, url: str, stop: str):
        self.stop = stop
        self.process = subprocess.Popen([sys.executable, "-c", PROBE, url, stop, token("victim"),
                                         encode(grey(), "PNG").hex()],
                                        stdout=subprocess.PIPE, text=True)

    def results(self) -> tuple[list[float], int, list[tuple[int, float]]]:
        open(self.stop, "w").close()
        answer = json.loads(self.process.communicate(timeout=30)[0])
        return answer["latencies"], answer["failures"], answer["victim"]


class Target(NamedTuple):
    kind: str  # "app": the gateway alone; "edge": behind nginx, as ``make serve`` runs it
    url: str
    pid: int  # the gateway's
    prober: Prober


@pytest.fixture(scope="module")
def push_dir(tmp_path_factory) -> str:
    """A serving dir holding the small model as version 1."""
    return publish_tiny_model(str(tmp_path_factory.mktemp("attacks")), MODEL)


def _gateway_pid(edge_pid: int) -> int:
    """The gateway process ``python -m serving.edge`` started (its child that is no nginx)."""
    for _ in range(100):
        for child in open(f"/proc/{edge_pid}/task/{edge_pid}/children").read().split():
            if b"serving" in open(f"/proc/{child}/cmdline", "rb").read():
                return int(child)
        time.sleep(0.1)
    raise AssertionError("python -m serving.edge started no gateway")


@pytest.fixture(scope="module", params=["app", "edge"])
def gateway(request, push_dir, tmp_path_factory):
    """A ``Target``, with short deadlines: the gateway process alone, or ``python -m
    serving.edge`` (nginx in front with the same deadlines, the gateway on loopback behind):
    one process of each per module."""
    if request.param == "edge" and not nginx_binary():
        pytest.skip("nginx is not installed: `make edge` installs Debian's nginx-light")
    root = tmp_path_factory.mktemp(request.param)
    (root / "key").write_text(SECRET + "\n")
    port = free_port()
    options = ["--serving-dir", os.path.dirname(push_dir), "--jwt-key-file", str(root / "key"),
               "--body-timeout", str(BODY_TIMEOUT), "--max-header-bytes", "8192",
               "--address-rate", "5", "--address-burst", "30",
               "--rate", "1000", "--burst", "1000", "--max-connections", "200"]
    # (Alone, a connection idle after a refusal closes in a second; behind nginx, the gateway
    # keeps its 5 s, longer than nginx keeps an idle upstream connection.)
    command = ["-m", "serving", "--port", str(port), "--keep-alive", str(HEADER_TIMEOUT),
               *options] if request.param == "app" else [
        "-m", "serving.edge", "--listen", f"127.0.0.1:{port}", "--upstream-port",
        str(free_port()), "--prefix", str(root / "edge"), "--header-timeout",
        str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT), "--", *options]
    process = subprocess.Popen(
        [sys.executable, *command], cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        stdout=subprocess.DEVNULL, stderr=open(root / "gateway.log", "wb"))
    url = f"http://127.0.0.1:{port}"
    wait_ready(process, url, str(root / "gateway.log"))
    prober = Prober(url, str(root / "stop-probing"))
    yield Target(request.param, url, process.pid if request.param == "app" else _gateway_pid(
        process.pid), prober)
    if not os.path.exists(prober.stop):
        prober.results()
    process.terminate()
    assert process.wait(20) == 0 or request.param == "app"
    log = (root / "gateway.log").read_text()
    assert "Traceback" not in log and "unexpected failure" not in log, log[-3000:]


_ADDRESSES = iter(range(10, 250))


def client() -> httpx.Client:
    """An HTTP client on a loopback address of its own (its own rate-limit bucket)."""
    transport = httpx.HTTPTransport(local_address=f"127.0.0.{next(_ADDRESSES)}")
    return httpx.Client(transport=transport, timeout=30)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def grey(side: int = 8) -> Image.Image:
    return Image.fromarray(np.random.default_rng(side).integers(0, 256, (side, side), np.uint8))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data))


def gif_comment_bomb() -> bytes:
    """5 MB: an 8x8 GIF with a million comment blocks before its trailer."""
    return encode(grey(), "GIF")[:-1] + b"\x21\xfe\x01x\x00" * 1_000_000 + b";"


def jpeg_marker_bomb() -> bytes:
    """A 10 MB JPEG of 2.5 M empty comment segments."""
    data = encode(grey(), "JPEG")
    return data[:2] + b"\xff\xfe\x00\x02" * 2_500_000 + data[2:]


def png_text_bomb() -> bytes:
    """An 8x8 PNG with 200 k text chunks."""
    data = encode(grey(), "PNG")
    return data[:33] + png_chunk(b"tEXt", b"k\0v") * 200_000 + data[33:]


def jpeg_scan_bomb() -> bytes:
    """A progressive 2048x2048 JPEG header with 2,000 scans."""
    sof = b"\xff\xc2" + struct.pack(">HBHHB", 11, 8, 2048, 2048, 1) + b"\x01\x11\x00"
    scan = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00\x00\x3f\x00" + b"\x00" * 8
    return b"\xff\xd8" + sof + scan * 2000 + b"\xff\xd9"


def gif_hidden_frame() -> bytes:
    """An 8x8 GIF whose second frame declares 8000x8000 (47 KB at most)."""
    first = encode(grey(), "GIF")[:-1]
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 8000, 8000, 0) + b"\x02" + \
        b"\xff" + b"\x00" * 255 + b"\x00"
    return first + frame * 180 + b";"


def png_big_canvas() -> bytes:
    """A 7000x7000 grey PNG of zeros: 47 KB compressed, 49 megapixels."""
    raw = zlib.compress(b"\0" * (7000 + 1) * 7000, 9)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 7000, 7000, 8, 0,
                                                                0, 0, 0))
            + png_chunk(b"IDAT", raw) + png_chunk(b"IEND", b""))


def classify(http: httpx.Client, url: str, data: bytes, content_type: str,
             sub: str = "attacker") -> httpx.Response:
    return http.post(f"{url}{PATH}:classify", content=data, headers={
        "Content-Type": content_type, "Authorization": f"Bearer {token(sub)}"})


@pytest.mark.parametrize("make, content_type, status, reason", [
    (gif_comment_bomb, "image/gif", 422, "bad_header"),
    (jpeg_marker_bomb, "image/jpeg", 422, "bad_header"),
    (png_text_bomb, "image/png", 422, "bad_header"),
    (jpeg_scan_bomb, "image/jpeg", 422, "bad_header"),
    (gif_hidden_frame, "image/gif", 422, "bad_header"),
    (png_big_canvas, "image/png", 422, "too_many_pixels"),
])
def test_hostile_images_are_refused_from_their_headers_in_milliseconds(
        gateway, make, content_type, status, reason):
    url, pid = gateway.url, gateway.pid
    data = make()
    before = rss_mb(pid)
    with client() as http:
        start = time.perf_counter()
        response = classify(http, url, data, content_type)
        elapsed = time.perf_counter() - start
    assert (response.status_code, response.json()["reason"]) == (status, reason), response.text
    assert elapsed < 2.0, f"{make.__name__} took {elapsed:.1f} s"
    assert rss_mb(pid) - before < 100  # nothing decoded


@pytest.mark.parametrize("fmt, options", [("GIF", {}), ("PNG", {}), ("JPEG", {}), ("BMP", {}),
                                          ("WEBP", {"lossless": True})])
def test_every_format_classifies_on_a_one_channel_model(gateway, fmt, options):
    url = gateway.url
    with client() as http:
        response = classify(http, url, encode(grey(16).convert("RGB"), fmt, **options),
                            f"image/{fmt.lower()}")
    assert response.status_code == 200, response.text
    assert response.json()["top"][0]["class"] in {"zero", "one", "two"}


# What a connection that missed its body deadline gets before it is closed: the gateway
# answers 408; nginx resets it without an answer (reset_timedout_connection).
TIMED_OUT = {"app": b"HTTP/1.1 408", "edge": b""}


def until_closed(connection: socket.socket) -> bytes:
    """What the server sends before it closes ``connection`` (or resets it)."""
    answer = b""
    try:
        for chunk in iter(lambda: connection.recv(1000), b""):
            answer += chunk
    except ConnectionResetError:
        pass
    return answer


def test_huge_headers_are_cut_off_before_authentication(gateway):
    url, pid = gateway.url, gateway.pid
    port = int(url.rsplit(":", 1)[1])
    before = rss_mb(pid)
    huge = []
    for index in range(20):  # 16 MiB of headers, as fast as the gateway takes them
        connection = socket.create_connection(("127.0.0.1", port))
        connection.settimeout(5)
        try:
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 2**24)
        except OSError:
            pass  # the gateway closed it part-way: that is the point
        huge.append(connection)
    for connection in huge:
        try:
            answer = connection.recv(200)
        except ConnectionResetError:
            answer = b""
        assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer
        connection.close()
    assert rss_mb(pid) - before < 50


def test_slow_headers_are_cut_off_at_the_edges_deadline(gateway):
    """Header deadlines are the edge's: the gateway alone (development only) has none."""
    if gateway.kind == "app":
        pytest.skip("the edge owns header deadlines; the gateway alone is development-only")
    port = int(gateway.url.rsplit(":", 1)[1])
    slow = []
    for index in range(20):  # headers that never finish
        connection = socket.create_connection(("127.0.0.1", port))
        connection.sendall(b"POST " + PATH.encode() + b":classify HTTP/1.1\r\nHost: x\r\n")
        slow.append(connection)
    start = time.monotonic()
    for connection in slow:
        connection.settimeout(HEADER_TIMEOUT + 5)
        assert until_closed(connection) == b""  # reset without an answer, and closed
        connection.close()
    assert time.monotonic() - start < HEADER_TIMEOUT + 3


def test_slow_bodies_time_out_and_a_client_leaving_mid_body_is_no_500(gateway):
    """The gateway alone times the body out and refuses a forged token before it; behind
    nginx, no part of a body that never finishes reaches the gateway."""
    url = gateway.url
    port = int(url.rsplit(":", 1)[1])
    def head(bearer: str = token("slow-body")) -> bytes:
        return (f"POST {PATH}:classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                f"Authorization: Bearer {bearer}\r\nContent-Length: 1000\r\n\r\n").encode()

    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(head() + b"0123456789")
        connection.settimeout(BODY_TIMEOUT + 5)
        start = time.monotonic()
        assert until_closed(connection).startswith(TIMED_OUT[gateway.kind])
        assert time.monotonic() - start < BODY_TIMEOUT + 2
    with socket.create_connection(("127.0.0.1", port)) as connection:  # refused, then closed
        connection.sendall(head("forged") + b"0123")
        connection.settimeout(5)  # (a socket.timeout here: left open for the rest)
        answer = until_closed(connection)
        assert answer.startswith(b"HTTP/1.1 401") and b"invalid_token" in answer \
            if gateway.kind == "app" else answer == b""
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(head() + b"0123456789")
    time.sleep(0.3)
    metrics = httpx.get(f"{url}/metrics").text
    for reason in ("body_timeout", "client_gone"):
        seen = f'gateway_rejected_total{{reason="{reason}"}}' in metrics
        assert seen == (gateway.kind == "app"), reason
    assert 'status="500"' not in metrics


def test_deep_json_long_paths_and_oversized_batches_get_4xx_never_5xx(gateway):
    url = gateway.url
    auth = {"Authorization": f"Bearer {token('json', scope='feedback')}"}
    deep = b"[" * 5000 + b"]" * 5000
    image = base64.b64encode(encode(grey(), "PNG")).decode()
    near_limit = base64.b64encode(encode(Image.new("L", (1024, 1000)), "PNG")).decode()
    with client() as http:
        for route, body in ((":predict", b'{"instances": ' + deep + b"}"),
                            (":feedback", b'{"request_id": ' + deep + b"}")):
            response = http.post(f"{url}{PATH}{route}", content=body, headers=auth)
            assert (response.status_code, response.json()["reason"]) == (400, "bad_request")
            assert "nested" in response.json()["error"]
        response = http.post(f"{url}{PATH}/versions/{'9' * 5000}:predict", content=b"{}",
                             headers=auth)
        assert response.status_code == 404
        start = time.perf_counter()
        many = json.dumps({"instances": [{"b64": image}] * 50_000})
        response = http.post(f"{url}{PATH}:predict", content=many, headers=auth)
        assert response.status_code == 413 and time.perf_counter() - start < 3
        heavy = json.dumps({"instances": [{"b64": near_limit}] * 32})
        response = http.post(f"{url}{PATH}:predict", content=heavy, headers=auth)
        assert (response.status_code, response.json()["reason"]) == (413, "too_many_pixels")
        response = http.post(f"{url}{PATH}:predict", headers=auth,
                             content=json.dumps({"instances": [{"b64": image}] * 3}))
        assert response.status_code == 200 and len(response.json()["predictions"]) == 3


def test_spoofed_forwarded_for_and_bad_tokens_are_rate_limited_by_address(gateway):
    """Three addresses, each sending forged and subject-less tokens under a new
    ``X-Forwarded-For`` every time: each address is one bucket (its own), whatever it
    claims."""
    url = gateway.url
    for attacker in range(3):
        statuses = []
        with client() as http:
            for index in range(50):
                headers = {"X-Forwarded-For": f"10.{attacker}.{index // 256}.{index % 256}",
                           "Content-Type": "image/png",
                           "Authorization": f"Bearer {token(None) if index % 2 else 'forged'}"}
                statuses.append(http.post(f"{url}{PATH}:classify", content=b"x",
                                          headers=headers).status_code)
        assert set(statuses[:30]) == {401} and statuses[-1] == 429, (attacker, statuses)
    with client() as http:  # another address is not affected
        assert classify(http, url, encode(grey(), "PNG"), "image/png").status_code == 200


def test_multipart_uploads_are_parsed_off_the_event_loop(gateway):
    url = gateway.url
    auth = {"Authorization": f"Bearer {token('multipart')}"}
    with client() as http:
        response = http.post(f"{url}{PATH}:classify", headers=auth,
                             files={"image": ("g.gif", encode(grey(), "GIF"), "image/gif")})
        assert response.status_code == 200, response.text
        response = http.post(f"{url}{PATH}:classify", content=b"--b\r\nno headers end" * 1000,
                             headers=dict(auth, **{"Content-Type":
                                                   "multipart/form-data; boundary=b"}))
        assert (response.status_code, response.json()["reason"]) == (400, "bad_multipart")


def test_healthz_answered_fast_throughout_and_good_requests_still_served(gateway):
    """Measured during every attack above: ``/healthz`` from one address, a victim client
    classifying a good image from another."""
    url, pid = gateway.url, gateway.pid
    with client() as http:
        assert classify(http, url, encode(grey(), "PNG"), "image/png").status_code == 200
    latencies, failures, victim = gateway.prober.results()
    latencies.sort()
    assert len(latencies) > 20 and failures == 0
    p99 = latencies[int(len(latencies) * 0.99)]
    assert p99 < 0.1, f"/healthz p99 {p99 * 1e3:.0f} ms, slowest {latencies[-1] * 1e3:.0f} ms"
    assert latencies[-1] < 1.0  # never frozen
    served = sorted(seconds for status, seconds in victim if status == 200)
    assert len(victim) > 5 and len(served) == len(victim), victim
    assert served[int(len(served) * 0.99)] < 2.0, served[-5:]  # (a loaded CI machine)
    print(f"{gateway.kind}: /healthz p99 {p99 * 1e3:.0f} ms of {len(latencies)}; the victim "
          f"served {len(served)}/{len(victim)}, p99 {served[int(len(served) * 0.99)] * 1e3:.0f}"
          " ms")
    assert rss_mb(pid) < 1500


def test_the_batcher_answers_every_waiter_whatever_fails(push_dir):
    import asyncio

    from serving.backends import Batcher, LocalBackend, Unavailable

    class Buggy(LocalBackend):  # the real backend, with a bug on one input
        def classify(self, images, version):
            if b"bug" in images:
                raise RuntimeError("a bug")
            return super().classify(images, version)

    good = encode(grey(), "PNG")

    async def scenario():
        batcher = Batcher(Buggy(push_dir), max_batch=32, window=0.05)
        waiters = [asyncio.ensure_future(batcher.classify([good], 1)) for _ in range(4)]
        await asyncio.sleep(0.01)
        waiters[1].cancel()  # its request timed out
        cancelled = await asyncio.gather(*waiters, return_exceptions=True)
        buggy = await asyncio.gather(batcher.classify([good], 1), batcher.classify([b"bug"], 1),
                                     return_exceptions=True)
        missing = await asyncio.gather(batcher.classify([good], 7), return_exceptions=True)
        return cancelled, buggy, missing

    cancelled, buggy, missing = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert isinstance(cancelled[1], asyncio.CancelledError)
    assert [len(r[0]) for i, r in enumerate(cancelled) if i != 1] == [1, 1, 1]
    assert [type(r) for r in buggy] == [RuntimeError, RuntimeError]
    assert isinstance(missing[0], Unavailable)


def test_a_load_holds_only_its_own_version_and_happens_once(push_dir, tmp_path):
    from serving.backends import LocalBackend
    base = str(tmp_path / MODEL)
    for _ in range(2):
        registry.publish(os.path.join(push_dir, "1"), base, {"action": "push"}, keep=3)
    loads, disk = [], threading.Event()

    class SlowDisk(LocalBackend):  # the real backend; version 2's files come when told
        def _load(self, version):
            loads.append(version)
            if version == 2:
                disk.wait(30)
            return super()._load(version)

    backend = SlowDisk(base)
    backend.classify([encode(grey(), "PNG")], 1)
    assert not backend.ready(2)  # asking never loads
    threads = [threading.Thread(target=backend.load, args=(2,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    while 2 not in loads:
        time.sleep(0.01)
    for _ in range(3):  # version 1 answers while version 2 loads
        assert len(backend.classify([encode(grey(), "PNG")], 1)[0]) == 1
    assert all(thread.is_alive() for thread in threads) and loads == [1, 2]
    disk.set()
    for thread in threads:
        thread.join(30)
    assert loads == [1, 2] and backend.ready(2)  # one load for three callers


def test_a_hanging_tf_serving_and_a_full_house_never_stall_healthz(tmp_path):
    """A gateway in front of a TF Serving that accepts connections and never answers, capped at
    5 connections and 2 bodies in progress: /healthz and /readyz answer at once, a third body
    is refused (503) while two never finish, and a sixth connection's request is refused."""
    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(64)  # never accepted, never answered
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "serving", "--serving-dir", str(tmp_path), "--no-auth",
         "--backend", f"http://127.0.0.1:{hanging.getsockname()[1]}", "--port", str(port),
         "--max-connections", "5", "--max-bodies", "2"], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=5) as http:
            for _ in range(100):
                try:
                    http.get(f"{url}/healthz")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            for _ in range(5):
                start = time.perf_counter()
                assert http.get(f"{url}/healthz").status_code == 200
                assert http.get(f"{url}/readyz").status_code == 503
                response = http.post(f"{url}{PATH}:classify", content=encode(grey(), "PNG"),
                                     headers={"Content-Type": "image/png"})
                assert (response.status_code, response.json()["reason"]) == (503, "no_route")
                assert time.perf_counter() - start < 0.5
            slow = []  # two bodies that never finish take every body slot
            for _ in range(2):
                slow.append(socket.create_connection(("127.0.0.1", port)))
                slow[-1].sendall(f"POST {PATH}:predict HTTP/1.1\r\nHost: x\r\n"
                                 "Content-Length: 100\r\n\r\n{".encode())
            time.sleep(0.3)
            response = http.post(f"{url}{PATH}:predict", content=b"{}")
            assert (response.status_code, response.json()["reason"]) == (503, "busy")
            assert http.get(f"{url}/healthz").status_code == 200
            for connection in slow:
                connection.close()
            time.sleep(0.3)
            others = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
            extra = socket.create_connection(("127.0.0.1", port))
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            extra.settimeout(5)
            assert b"".join(iter(lambda: extra.recv(100), b"")).startswith(b"HTTP/1.1 503")
            time.sleep(0.2)  # (the gateway forgets the closed connection)
            assert http.get(f"{url}/healthz").status_code == 200  # its connection was first
            for connection in others + [extra]:
                connection.close()
    finally:
        process.terminate()
        process.wait(10)
        hanging.close()
