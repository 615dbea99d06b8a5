"""The second round of attacks on a real gateway process (issue 33), the application's part:
one ``python -m serving`` with JWT on over the tiny model, attacked from loopback addresses of
its own (127.0.0.N) while ``/healthz`` is polled. Each test reproduces an attack that froze,
crashed or misled the gateway before: a quadratic JSON pre-check, PNG text chunks inflated
by the decoder, an OS/2 BMP that TensorFlow misreads, non-ASCII feedback ids and string
``exp`` claims (500s), answers by version number counted as A/B evidence, the model card
without a token, one subject holding every body slot. The connection-level attacks (a whole
oversized head in one read, idle sockets of one address, 1-byte chunks) are the edge's:
``tests/test_gateway_nginx.py``."""
from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import os
import socket
import struct
import threading
import time
import zlib

import httpx
import jwt
import numpy as np
import pytest
from PIL import Image

from serving.feedback import evidence, read_feedback
from tests.helpers import publish_tiny_model, start_gateway

SECRET = "edge-test-secret-with-32-bytes-or-more!"
MODEL = "image_classifier"
PATH = f"/v1/models/{MODEL}"


def token(sub: str = "edge", **claims) -> str:
    return jwt.encode({"sub": sub, "exp": time.time() + 600, **claims}, SECRET, "HS256")


def auth(sub: str = "edge", **claims) -> dict:
    return {"Authorization": f"Bearer {token(sub, **claims)}"}


_ADDRESSES = iter(range(20, 250))


def client(timeout: float = 30) -> httpx.Client:
    """An HTTP client on a loopback address of its own."""
    transport = httpx.HTTPTransport(local_address=f"127.0.0.{next(_ADDRESSES)}")
    return httpx.Client(transport=transport, timeout=timeout)


def rss_mb(pid: int) -> float:
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    return int(fields["VmRSS"].split()[0]) / 1024


def png(side: int = 8, extra: bytes = b"") -> bytes:
    """A grey PNG with ``extra`` chunks before its image data."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(side).integers(0, 256, (side, side), np.uint8)).save(
        buffer, "PNG")
    data = buffer.getvalue()
    return data[:33] + extra + data[33:]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


class Healthz:
    """Polls ``/healthz`` every 20 ms from a thread and an address of its own; ``worst()``
    stops it: the slowest answer in seconds (inf if one failed)."""

    def __init__(self, url: str):
        self.url, self.latencies, self._stop = url, [], threading.Event()
        self.error = ""
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        with client(timeout=10) as http:
            while not self._stop.is_set() or not self.latencies:  # at least one probe
                start = time.perf_counter()
                try:
                    ok = http.get(f"{self.url}/healthz").status_code == 200
                except httpx.HTTPError as err:
                    ok, self.error = False, repr(err)
                self.latencies.append(time.perf_counter() - start if ok else float("inf"))
                time.sleep(0.02)

    def worst(self) -> float:
        self._stop.set()
        self._thread.join(15)
        assert not self.error, self.error
        return max(self.latencies, default=float("inf"))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``(url, process, log path, serving dir)``: a gateway process, JWT on."""
    root = tmp_path_factory.mktemp("edge")
    push_dir = publish_tiny_model(str(root), MODEL)
    (root / "key").write_text(SECRET)
    log = str(root / "gateway.log")
    process, url = start_gateway(
        os.path.dirname(push_dir), log, "--jwt-key-file", str(root / "key"),
        "--body-timeout", "3", "--rate", "1000", "--burst", "1000", "--address-rate", "50",
        "--address-burst", "100", "--max-connections", "200", "--max-bodies", "32",
        "--max-bodies-per-client", "8")
    yield url, process, log, os.path.dirname(push_dir)
    process.terminate()
    process.wait(10)
    text = open(log).read()
    assert "Traceback" not in text and "unexpected failure" not in text, text[-3000:]


@pytest.mark.parametrize("route, claims, status", [
    (":predict", {}, 400),
    (":feedback", {"scope": "feedback"}, 400),
    (":feedback", {}, 403),  # the scope is checked before the body is looked at
])
def test_an_unterminated_json_string_is_refused_in_linear_time(served, route, claims, status):
    url, *_ = served
    body = b'{"instances": "' + b'\\"' * 65_536  # 128 KB: 26 s of quadratic regex before
    healthz = Healthz(url)
    with client() as http:
        start = time.perf_counter()
        response = http.post(f"{url}{PATH}{route}", content=body, headers=auth(**claims))
        elapsed = time.perf_counter() - start
    assert response.status_code == status, response.text
    assert elapsed < 2.0, f"{elapsed:.1f} s"
    assert healthz.worst() < 2.0  # (a loaded CI machine; frozen for seconds before)


def test_png_text_chunks_are_refused_by_what_they_inflate_to(served):
    url, _, log, _ = served
    ztxt = png_chunk(b"zTXt", b"k\0\0" + zlib.compress(b"\0" * 4_000_000, 9))
    bomb = png(extra=ztxt * 1021)  # 4 GB of text in 4 MB: 12.9 s of inflate before
    healthz = Healthz(url)
    with client() as http:
        start = time.perf_counter()
        response = http.post(f"{url}{PATH}:classify", content=bomb,
                             headers={"Content-Type": "image/png", **auth()})
        elapsed = time.perf_counter() - start
        assert (response.status_code, response.json()["reason"]) == (422, "bad_header")
        assert "inflate" in response.json()["error"] and elapsed < 2.0
        small = png(extra=png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"fine")))
        assert http.post(f"{url}{PATH}:classify", content=small,
                         headers={"Content-Type": "image/png", **auth()}).status_code == 200
    assert healthz.worst() < 2.0  # (a loaded CI machine; frozen for seconds before)


def test_malformed_ancillary_chunks_never_reach_the_decoder_or_flood_the_log(served):
    """Before: one libpng warning a chunk, 5 log bytes per request byte."""
    url, _, log, _ = served
    broken = png_chunk(b"tEXt", b"k\0v")[:-4] + b"\0\0\0\0"  # a bad CRC
    body = png(extra=broken * 1000)
    before = os.path.getsize(log)
    with client() as http:
        for _ in range(3):
            response = http.post(f"{url}{PATH}:classify", content=body,
                                 headers={"Content-Type": "image/png", **auth()})
            assert (response.status_code, response.json()["reason"]) == (422, "bad_header")
            assert "CRC" in response.json()["error"]
    time.sleep(0.2)
    grown = os.path.getsize(log) - before
    assert grown < 0.05 * 3 * len(body), f"{grown} log bytes for {3 * len(body)} request bytes"


def test_decoder_warnings_of_well_formed_odd_chunks_are_rate_limited_in_the_log(served):
    """Chunks with good CRCs that libpng still warns about (an empty gAMA): 95 log bytes per
    12 request bytes before, a few lines per kind and window now."""
    url, _, log, _ = served
    body = png(extra=png_chunk(b"gAMA", b"") * 300)
    before = os.path.getsize(log)
    with client() as http:
        for _ in range(3):
            response = http.post(f"{url}{PATH}:classify", content=body,
                                 headers={"Content-Type": "image/png", **auth()})
            assert response.status_code == 200, response.text
    time.sleep(0.5)
    grown = os.path.getsize(log) - before
    assert grown < 0.2 * 3 * len(body), f"{grown} log bytes for {3 * len(body)} request bytes"
    with open(log, "rb") as f:
        f.seek(before)
        assert f.read().count(b"gAMA") <= 5


def os2_bmp(width: int = 1000, height: int = 1) -> bytes:
    """A BMP with a 12-byte OS/2 header: 16-bit sizes TensorFlow reads as 32-bit ones
    (1000x1 here becomes 66,536x150)."""
    pixels = b"\x80" * (((width * 3 + 3) & ~3) * height)
    return (b"BM" + struct.pack("<IHHI", 26 + len(pixels), 0, 0, 26)
            + struct.pack("<IHHHH", 12, width, height, 1, 24) + pixels)


def test_an_os2_bmp_is_refused_before_tensorflow_misreads_it(served):
    url, process, *_ = served
    before = rss_mb(process.pid)
    with client() as http, concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: http.post(
            f"{url}{PATH}:classify", content=os2_bmp(),
            headers={"Content-Type": "image/bmp", **auth()}), range(16)))
    assert {(r.status_code, r.json()["reason"]) for r in responses} == {(422, "bad_header")}
    assert "OS/2" in responses[0].json()["error"]
    assert rss_mb(process.pid) - before < 100  # +925 MB before


@pytest.mark.parametrize("request_id", ["é", "\ud800.x", "abc.\u00ff\u00fe", "a" * 50 + ".☃"])
def test_feedback_ids_of_any_characters_get_404(served, request_id):
    url, *_ = served
    body = json.dumps({"request_id": request_id, "class": "zero"})  # (surrogates escaped)
    with client() as http:
        response = http.post(f"{url}{PATH}:feedback", content=body,
                             headers=auth(scope="feedback"))
    assert (response.status_code, response.json()["reason"]) == (404, "unknown_request")


@pytest.mark.parametrize("exp", ["4102444800", [1], {"a": 1}, True, None],
                         ids=["string", "list", "object", "bool", "null"])
def test_token_claims_of_any_type_get_401(served, exp):
    url, *_ = served
    bad = jwt.encode({"sub": "edge", "exp": exp}, SECRET, "HS256")
    with client() as http:
        response = http.post(f"{url}{PATH}:classify", content=png(),
                             headers={"Content-Type": "image/png",
                                      "Authorization": f"Bearer {bad}"})
    assert response.status_code == 401, response.text


def test_answers_by_version_number_carry_no_label_and_are_no_evidence(served):
    url, _, _, serving_dir = served
    with client() as http:
        by_version = http.post(f"{url}{PATH}/versions/1:classify", content=png(),
                               headers={"Content-Type": "image/png", **auth()}).json()
        by_label = http.post(f"{url}{PATH}/labels/stable:classify", content=png(),
                             headers={"Content-Type": "image/png", **auth()}).json()
        assert (by_version["label"], by_version["model_version"]) == ("", 1)
        assert by_label["label"] == "stable"
        for answer in (by_version, by_label):
            assert http.post(f"{url}{PATH}:feedback", headers=auth("judge", scope="feedback"),
                             json={"request_id": answer["request_id"],
                                   "class": "zero"}).status_code == 200
    status = httpx.get(f"{url}{PATH}", headers=auth()).json()
    feedback_dir = os.path.join(serving_dir, MODEL, "feedback")
    entries = [e for e in read_feedback(feedback_dir)
               if e["request_id"] in (by_version["request_id"], by_label["request_id"])]
    assert status["labels"] == {"stable": 1}
    assert len(evidence(entries, 1, 2, 0.0, 100)[1]) == 1  # the labelled answer only


def test_the_model_card_and_report_need_a_token(served):
    url, *_ = served
    with client() as http:
        for path in ("/model-card", "/model-card/report/stable"):
            response = http.get(f"{url}{path}")
            assert (response.status_code, response.json()["reason"]) == (401, "no_token")
        card = http.get(f"{url}/model-card", headers=auth())
        assert card.status_code == 200 and "stable" in card.text


def slow_body(port: int, source: str, bearer: str) -> socket.socket:
    """A request whose 1,000-byte body comes one byte at a time, slowly."""
    connection = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
    connection.sendall((f"POST {PATH}:classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png"
                        f"\r\nAuthorization: Bearer {bearer}\r\nContent-Length: 1000\r\n\r\n"
                        ).encode() + b"\x89")
    return connection


def test_one_subject_with_slow_bodies_holds_only_its_share_of_body_slots(served):
    url, *_ = served
    port = int(url.rsplit(":", 1)[1])
    bearer = token("slow-subject")
    slow = [slow_body(port, f"127.0.1.{i + 1}", bearer) for i in range(32)]  # 32 addresses
    time.sleep(0.3)
    try:
        with client() as http:  # another subject is served; the slow one is refused
            other = http.post(f"{url}{PATH}:classify", content=png(),
                              headers={"Content-Type": "image/png", **auth("other")})
            assert other.status_code == 200, other.text
            again = http.post(f"{url}{PATH}:classify", content=png(),
                              headers={"Content-Type": "image/png",
                                       "Authorization": f"Bearer {bearer}"})
            assert (again.status_code, again.json()["reason"]) == (503, "busy")
    finally:
        for connection in slow:
            connection.close()


def _encoded(fmt: str, size: tuple[int, int], **options) -> bytes:
    buffer = io.BytesIO()
    frames = [Image.new("RGB", size, (i * 40, 90, 200)) for i in range(3)]
    if options.pop("animated", False):
        options.update(save_all=True, append_images=frames[1:], duration=40)
    frames[0].save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt, options", [
    ("JPEG", {}), ("JPEG", {"progressive": True}), ("PNG", {}), ("GIF", {}),
    ("GIF", {"animated": True}), ("BMP", {}), ("WEBP", {}), ("WEBP", {"lossless": True})])
# (Not an animated WebP: TensorFlow 2.21's decode_image of one with expand_animations=True and
# no channels aborts the process with a corrupted heap; the gateway decodes with channels set
# and without expanding animations, which refuses it: "WebP Animation must be 4 channel".)
def test_the_header_parser_and_the_decoder_agree_on_the_size(fmt, options):
    """What the gateway checks is what TensorFlow materialises (the OS/2 BMP was not)."""
    import tensorflow as tf

    from domain.image_header import read_header
    data = _encoded(fmt, (37, 23), **options)
    header = read_header(data, 10**8)
    decoded = tf.io.decode_image(data, expand_animations=True).shape
    frames = decoded[0] if len(decoded) == 4 else 1
    assert (header.frames, header.height, header.width) == (frames, *decoded[-3:-1])


def test_the_gateway_alone_warns_once_when_it_faces_a_network(tmp_path):
    """Without its edge proxy the gateway is for development: bound to a non-loopback
    address, it says so once at start (on loopback, as behind nginx, it does not)."""
    for host, warnings in (("0.0.0.0", 1), ("127.0.0.1", 0)):
        log = str(tmp_path / f"{host}.log")
        process, _ = start_gateway(str(tmp_path), log, "--no-auth", host=host, ready="/healthz")
        process.terminate()
        process.wait(10)
        assert open(log).read().count("without its edge proxy") == warnings, host
