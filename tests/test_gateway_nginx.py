"""The gateway as deployed behind its edge (issue 33): real nginx (``serving/nginx.conf``,
rendered by ``serving.edge``) in front of a real ``python -m serving`` with JWT on, attacked
at the connection level from loopback addresses of their own: idle sockets, clients that
never read, 1-byte chunked bodies, slow bodies, spoofed ``X-Forwarded-For`` and oversized
heads. nginx takes each; the victim from another address is served and ``/healthz`` stays
fast. Skips where nginx is not installed (``make edge`` installs Debian's)."""
from __future__ import annotations

import io
import os
import socket
import subprocess
import threading
import time

import httpx
import jwt
import pytest

from serving.edge import EdgeLimits, nginx_binary, prepare
from tests.helpers import free_port, publish_tiny_model, start_gateway, wait_ready

pytestmark = pytest.mark.skipif(not nginx_binary(), reason="nginx is not installed: `make "
                                "edge` installs Debian's nginx-light where apt-get can")
SECRET = "nginx-test-secret-with-32-bytes-or-more"
MODEL = "image_classifier"
PATH = f"/v1/models/{MODEL}"
SEND_TIMEOUT, PER_ADDRESS = 2.0, 8


def _png() -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buffer, "PNG")
    return buffer.getvalue()


PNG = _png()


def bearer(sub: str) -> str:
    return jwt.encode({"sub": sub, "exp": time.time() + 600}, SECRET, "HS256")


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_from(address: str, timeout: float = 10) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=timeout)


def classify(http: httpx.Client, url: str, sub: str = "victim") -> httpx.Response:
    return http.post(f"{url}{PATH}:classify", content=PNG, headers={
        "Content-Type": "image/png", "Authorization": f"Bearer {bearer(sub)}"})


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    """``(nginx url, gateway process)``: the gateway on loopback behind nginx."""
    root = tmp_path_factory.mktemp("edge")
    push_dir = publish_tiny_model(str(root), MODEL)
    (root / "key").write_text(SECRET)
    upstream = free_port()
    gateway, _ = start_gateway(
        os.path.dirname(push_dir), str(root / "gateway.log"), "--jwt-key-file",
        str(root / "key"), "--trusted-proxy", "127.0.0.1/32", "--max-connections", "1000",
        "--address-rate", "1", "--address-burst", "40", "--rate", "1000", "--burst", "1000", port=upstream)
    listen = free_port()
    command = prepare(str(root / "nginx"), EdgeLimits(
        listen=f"127.0.0.1:{listen}", upstream=f"127.0.0.1:{upstream}",
        connections_per_address=PER_ADDRESS, requests_per_second=1000, request_burst=1000,
        header_timeout=2.0, body_timeout=2.0, send_timeout=SEND_TIMEOUT))
    nginx = subprocess.Popen(command, stderr=open(root / "nginx.stderr", "wb"))
    url = f"http://127.0.0.1:{listen}"
    for _ in range(100):
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        pytest.fail("nginx never answered: " + (root / "nginx.stderr").read_text())
    yield url, gateway
    nginx.terminate()
    nginx.wait(10)
    gateway.terminate()
    gateway.wait(10)
    log = (root / "gateway.log").read_text()
    assert "Traceback" not in log and "unexpected failure" not in log, log[-3000:]


def connect(url: str, source: str, receive_buffer: int = 0) -> socket.socket:
    connection = socket.socket()
    if receive_buffer:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    connection.bind((source, 0))
    connection.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    return connection


class Healthz:
    """``/healthz`` through nginx every 20 ms from an address of its own; ``worst()`` stops
    it: the slowest answer in seconds (inf if one failed)."""

    def __init__(self, url: str, source: str):
        self.latencies, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(url, source), daemon=True)
        self._thread.start()

    def _poll(self, url: str, source: str) -> None:
        with http_from(source) as http:
            while not self._stop.is_set() or not self.latencies:  # at least one probe
                start = time.perf_counter()
                try:
                    ok = http.get(f"{url}/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.latencies.append(time.perf_counter() - start if ok else float("inf"))
                time.sleep(0.02)

    def worst(self) -> float:
        self._stop.set()
        self._thread.join(15)
        return max(self.latencies, default=float("inf"))


def test_a_thousand_idle_sockets_from_one_address_do_not_deny_another(edge):
    url, _ = edge
    idle = [connect(url, "127.0.5.1") for _ in range(1000)]  # the whole cap of the app before
    try:
        time.sleep(0.3)
        with http_from("127.0.5.2") as http:
            statuses = [classify(http, url).status_code for _ in range(16)]
        assert statuses == [200] * 16
    finally:
        for connection in idle:
            connection.close()


def test_clients_that_never_read_are_cut_off_at_the_send_deadline(edge):
    url, _ = edge
    pipelined = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3000  # 12 MB of answers, never read
    stalled = []
    for _ in range(PER_ADDRESS):
        stalled.append(connect(url, "127.0.6.1", receive_buffer=1024))
        stalled[-1].sendall(pipelined)
    try:
        time.sleep(0.5)
        with http_from("127.0.6.1") as http:  # every slot of that address is held...
            assert http.get(f"{url}/healthz").status_code == 503
        with http_from("127.0.6.2") as http:  # ...and only that address's
            assert http.get(f"{url}/healthz").status_code == 200
        time.sleep(SEND_TIMEOUT + 1.5)
        with http_from("127.0.6.1") as http:  # cut off at the deadline: slots free again
            assert http.get(f"{url}/healthz").status_code == 200
    finally:
        for connection in stalled:
            connection.close()


def test_a_one_byte_chunked_body_without_token_never_reaches_the_app(edge):
    url, gateway = edge
    healthz = Healthz(url, "127.0.7.2")
    connection = connect(url, "127.0.7.1")
    connection.sendall(f"POST {PATH}:classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png"
                       "\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
    cpu = cpu_seconds(gateway.pid)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # 13.5 s of the app's CPU in 12 s before
        connection.sendall(b"1\r\nx\r\n" * 100)
        time.sleep(0.001)
    used = cpu_seconds(gateway.pid) - cpu
    connection.sendall(b"0\r\n\r\n")
    connection.settimeout(10)
    answer = connection.recv(1000)
    connection.close()
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert used < 0.5, f"the gateway spent {used:.2f} s of CPU on the chunks"
    assert healthz.worst() < 2.0  # (a loaded CI machine; frozen for seconds before)


def test_slow_bodies_of_one_subject_do_not_starve_other_clients(edge):
    url, _ = edge
    head = (f"POST {PATH}:classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            f"Authorization: Bearer {bearer('slow')}\r\nContent-Length: 1000\r\n\r\n").encode()
    slow = [connect(url, f"127.0.8.{1 + i // PER_ADDRESS}") for i in range(32)]
    try:
        for _ in range(3):  # a byte each, every half second
            for connection in slow:
                connection.sendall(head if _ == 0 else b"\0")
            time.sleep(0.5)
        with http_from("127.0.8.100") as http:
            start = time.perf_counter()
            assert classify(http, url, "other").status_code == 200
            assert time.perf_counter() - start < 1.0
    finally:
        for connection in slow:
            connection.close()


def test_the_gateway_believes_the_address_nginx_saw_never_a_forwarded_header(edge):
    url, _ = edge
    statuses = []
    with http_from("127.0.9.1") as http:
        for index in range(60):  # a new X-Forwarded-For each time: one bucket all the same
            statuses.append(http.post(f"{url}{PATH}:classify", content=PNG, headers={
                "Content-Type": "image/png", "X-Forwarded-For": f"10.1.0.{index}",
                "Authorization": "Bearer forged"}).status_code)
    assert statuses[0] == 401 and statuses[-1] == 429
    with http_from("127.0.9.2") as http:
        assert classify(http, url).status_code == 200


def test_a_head_over_16_kib_is_refused_by_nginx(edge):
    url, _ = edge
    with http_from("127.0.10.1") as http:
        assert http.get(f"{url}/healthz", headers={"X-Pad": "a" * 12_000}).status_code == 200
        assert http.get(f"{url}/healthz", headers={"X-Pad": "a" * 60_000}).status_code in (
            400, 431, 494)


def test_a_whole_60_kb_head_of_short_headers_in_one_read_is_refused(edge):
    """Four headers of 15 KB, each under the line limit, sent at once: the gateway once
    accepted such a head (h11 caps only a head still incomplete)."""
    url, _ = edge
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-Pad-%d: " % index + b"a" * 15_000 + b"\r\n" for index in range(4)) + b"\r\n"
    with connect(url, "127.0.10.2") as connection:
        connection.settimeout(5)
        connection.sendall(head)
        answer = connection.recv(100)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    with http_from("127.0.10.2") as http:  # a head of 15 KB passes
        assert http.get(f"{url}/healthz", headers={
            f"X-Pad-{index}": "a" * 5_000 for index in range(3)}).status_code == 200


def test_the_edge_command_runs_both_and_stops_both(tmp_path):
    """``make serve``: ``python -m serving.edge`` starts nginx and the gateway behind
    it, and a SIGTERM stops both."""
    import sys

    from tests.helpers import ROOT
    push_dir = publish_tiny_model(str(tmp_path), MODEL)
    listen, upstream = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.edge", "--listen", f"127.0.0.1:{listen}",
         "--upstream-port", str(upstream), "--prefix", str(tmp_path / "edge"), "--",
         "--serving-dir", os.path.dirname(push_dir), "--no-auth"], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "edge.log", "wb"))
    wait_ready(process, f"http://127.0.0.1:{listen}", str(tmp_path / "edge.log"))
    try:
        answer = httpx.post(f"http://127.0.0.1:{listen}{PATH}:classify", content=PNG,
                            headers={"Content-Type": "image/png"})
        assert answer.status_code == 200, answer.text
    finally:
        process.terminate()
        assert process.wait(20) == 0
    for port in (listen, upstream):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
