"""The request guard's pieces on their own: the bounded image-header parser on real and hostile
files, token policy and key hygiene, address resolution behind proxies, JSON limits, and the
TF Serving backend's promise never to import TensorFlow."""
from __future__ import annotations

import io
import struct
import subprocess
import sys
import time

import jwt
import pytest
from PIL import Image

from domain.image_header import (MAX_FRAMES, ImageRefused, pixel_limit, read_header, sniff)
from serving.auth import TokenPolicy, load_key
from serving.limits import Rejected, json_object, version_number

KEY = "k" * 32


def encode(fmt: str, size=(30, 20), **options) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (9, 80, 200)).save(buffer, fmt, **options)
    return buffer.getvalue()


def animated(fmt: str, frames: int) -> bytes:
    images = [Image.new("RGB", (40, 30), (i * 3 % 256, 0, 0)) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, fmt, save_all=True, append_images=images[1:], duration=40)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt, options", [("JPEG", {}), ("JPEG", {"progressive": True}),
                                          ("PNG", {}), ("GIF", {}), ("BMP", {}),
                                          ("WEBP", {}), ("WEBP", {"lossless": True})])
def test_headers_of_every_format_give_size_and_format(fmt, options):
    data = encode(fmt, **options)
    header = read_header(data, 10**6, sniff(data))
    assert (header.format, header.width, header.height, header.frames) == (
        fmt.lower(), 30, 20, 1)


def test_animations_count_every_frame_in_the_pixels():
    header = read_header(animated("GIF", 5), 10**6)
    assert (header.frames, header.pixels) == (5, 5 * 40 * 30)
    with pytest.raises(ImageRefused, match="x 5 frames is more than") as refused:
        read_header(animated("GIF", 5), 5000)
    assert refused.value.reason == "too_many_pixels"
    with pytest.raises(ImageRefused, match=f"more than {MAX_FRAMES} GIF frames"):
        read_header(animated("GIF", MAX_FRAMES + 1), 10**9)


@pytest.mark.parametrize("data, message", [
    (encode("GIF")[:-1] + b"\x2c" + struct.pack("<HHHHB", 25, 0, 10, 10, 0) + b"\x02\x00;",
     "GIF frame 2 .10x10 at 25,0. is not inside its 30x20 screen"),
    (encode("GIF")[:-1] + b"\x21\xfe\x01x\x00" * 2000 + b";", "more than 1024 GIF extension"),
    (encode("GIF")[:-1] + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02"
     + b"\x01x" * 140_000 + b"\x00;", "more than 131072 GIF data sub-blocks"),
    (encode("GIF")[:-1] + b"\x99", "GIF block 0x99"),
    (b"\xff\xd8" + b"\xff\x01" * 2000 + encode("JPEG")[2:], "more than 1024 JPEG markers"),
    (b"\xff\xd8\xff\xda\x00\x08", "JPEG scan before its frame header"),
    (b"\xff\xd8\xff\xc0\x00\x01", "JPEG segment of length 1"),
    (b"\xff\xd8\xff\xe0\x00\x04\x00\x00" + b"\x00" * 20, "JPEG with no marker at byte 8"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDX" + b"\0" * 17, "PNG without IHDR first"),
    (b"RIFF\0\0\0\0WEBPVP8X" + b"\0" * 4, "truncated"),
    (b"BM" + b"\0" * 12 + struct.pack("<I", 20) + b"\0" * 20, "BMP header of 20 bytes"),
])
def test_malformed_and_hostile_headers_are_refused_in_words(data, message):
    start = time.perf_counter()
    with pytest.raises(ImageRefused, match=message) as refused:
        read_header(data, 10**9)
    assert refused.value.reason in ("bad_header", "not_an_image")
    assert time.perf_counter() - start < 0.5


def test_jpeg_fill_bytes_are_walked_in_linear_time():
    data = encode("JPEG")
    padded = data[:-2] + b"\xff" * 5_000_000 + b"\x00" + data[-2:]  # inside the scan data
    start = time.perf_counter()
    assert read_header(padded, 10**6).width == 30
    assert time.perf_counter() - start < 0.5


def test_not_an_image_and_a_mismatched_type_are_named():
    with pytest.raises(ImageRefused, match="does not start like a JPEG, PNG, GIF, BMP or WebP"):
        read_header(b"plain text", 100)
    with pytest.raises(ImageRefused, match="does not start like image/png") as refused:
        read_header(encode("JPEG"), 10**6, "image/png")
    assert refused.value.reason == "not_an_image"


def test_the_pixel_limit_follows_the_model_input():
    assert pixel_limit(512, 512) == 16 * 512 * 512
    assert pixel_limit(8, 8) == 2**20  # the floor
    assert pixel_limit(1000, 1000, model_max=4_000_000) == 4_000_000


def test_hmac_keys_must_be_long_and_are_stripped():
    with pytest.raises(ValueError, match="needs at least 32 bytes, this one has 7"):
        load_key("seven!!\n", "--jwt-key-file k")
    assert load_key(f"  {KEY}\n", "GATEWAY_JWT_KEY") == KEY
    assert load_key("-----BEGIN PUBLIC KEY-----\nabc\n", "k").endswith("abc")


def test_the_command_refuses_a_short_key_with_exit_2(tmp_path, capsys):
    from serving.__main__ import main
    (tmp_path / "key").write_text("short\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--jwt-key-file", str(tmp_path / "key")])
    assert exit_info.value.code == 2
    assert "an HS256 secret needs at least 32 bytes" in capsys.readouterr().err


def _bearer(**claims) -> str:
    return "Bearer " + jwt.encode(claims, KEY, "HS256")


@pytest.mark.parametrize("claims, message", [
    ({"exp": 60}, 'Token is missing the "sub" claim'),
    ({"sub": "a"}, 'Token is missing the "exp" claim'),
    ({"sub": "", "exp": 60, "iss": "us", "aud": "gateway"}, "sub must be a non-empty string"),
    ({"sub": "a", "exp": 7200, "iss": "us", "aud": "gateway"}, "expires more than 3600 s"),
    ({"sub": "a", "exp": 60, "iss": "evil"}, "Invalid issuer"),
    ({"sub": "a", "exp": 60, "iss": "us"}, "Audience|aud"),
    ({"sub": "a", "exp": 60, "iss": "us", "aud": "them"}, "Audience doesn't match"),
])
def test_tokens_need_subject_expiry_issuer_audience_and_a_bounded_lifetime(claims, message):
    policy = TokenPolicy(KEY, issuer="us", audience="gateway", max_lifetime=3600)
    claims = {k: time.time() + v if k == "exp" else v for k, v in claims.items()}
    with pytest.raises(Rejected, match=message) as rejected:
        policy.claims(_bearer(**claims))
    assert rejected.value.status == 401
    good = policy.claims(_bearer(sub="a", exp=time.time() + 60, iss="us", aud="gateway"))
    assert good["sub"] == "a"


def test_forwarded_for_is_believed_only_from_a_trusted_proxy():
    from starlette.requests import Request

    from serving.rate import Peers

    def request(peer: str, forwarded: str) -> Request:
        return Request({"type": "http", "client": (peer, 1234), "headers": [
            (b"x-forwarded-for", forwarded.encode())]})

    assert Peers().client(request("127.0.0.1", "10.0.0.9")) == "127.0.0.1"
    trusting = Peers(("10.1.0.0/16",))
    assert trusting.client(request("203.0.113.5", "10.0.0.9")) == "203.0.113.5"
    # Behind the proxy: the last hop it added, not what the client wrote before it.
    assert trusting.client(request("10.1.2.3", "6.6.6.6, 198.51.100.7")) == "198.51.100.7"
    assert trusting.client(request("10.1.2.3", "198.51.100.7, 10.1.9.9")) == "198.51.100.7"


def test_json_is_refused_deep_or_wide_before_it_is_parsed():
    assert json_object(b'{"a": ["[[[[", {"b": 1}]}', "x") == {"a": ["[[[[", {"b": 1}]}
    with pytest.raises(Rejected, match="nested 9 deep, more than 8"):
        json_object(b'{"a":' + b"[" * 8 + b"]" * 8 + b"}", "x")
    with pytest.raises(Rejected, match="more than 10 arrays") as rejected:
        json_object(b'{"a": [' + b"{}," * 20 + b"{}]}", "x", max_containers=10)
    assert rejected.value.status == 413
    with pytest.raises(Rejected, match="not an object"):
        json_object(b"[]", "x")


@pytest.mark.parametrize("text", ["0", "01", "9" * 19, "1e3", "-1", ""])
def test_version_path_parameters_are_bounded(text):
    with pytest.raises(Rejected) as rejected:
        version_number(text)
    assert rejected.value.status == 404


def test_the_tf_serving_backend_never_imports_tensorflow():
    """Over a real HTTP server that answers like TF Serving refusing an image (400)."""
    script = """
import http.server, sys, threading
from serving.backends import BadImage, HttpBackend
class Refusing(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
        self.wfile.write(b'{"model_version_status": [{"version": "3", "state": "AVAILABLE"}]}')
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(400); self.end_headers(); self.wfile.write(b'{"error": "bad"}')
    def log_message(self, *args): pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
threading.Thread(target=server.serve_forever, daemon=True).start()
backend = HttpBackend(f"http://127.0.0.1:{server.server_port}", "m")
backend.refresh(set())
assert backend.versions() == [3] and backend.ready(3)
try:
    backend.classify([b"GIF89a"], 3)
except BadImage as err:
    print(err)
print("tensorflow" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "the image does not decode: corrupt or truncated image data (TF Serving answered 400 "
        "for 1 image(s))", "False"]


def test_a_models_pixel_limit_comes_from_its_training_options(tmp_path):
    from domain.features import TRAINING_FILE
    from domain.image_header import model_pixel_limit
    assert model_pixel_limit(str(tmp_path)) == 2**20  # no options: the floor
    (tmp_path / TRAINING_FILE).parent.mkdir(parents=True)
    (tmp_path / TRAINING_FILE).write_text('{"image_height": 512, "image_width": 384, '
                                          '"max_pixels": 50000000}')
    assert model_pixel_limit(str(tmp_path)) == 16 * 512 * 384


def test_png_chunks_are_checked_before_any_decoder_sees_them():
    """Issue 33: text and profile chunks by what they inflate to, every chunk's CRC besides
    the image data's, APNG frames counted, OS/2 BMPs (misread by TensorFlow) refused."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    def png(extra: bytes) -> bytes:
        data = encode("PNG")
        return data[:33] + extra + data[33:]

    bomb = chunk(b"zTXt", b"k\0\0" + zlib.compress(b"\0" * 2**21))
    for data, message in ((png(bomb), "inflate to more than"),
                          (png(chunk(b"tEXt", b"k\0v")[:-1] + b"?"), "fails its CRC"),
                          (png(chunk(b"fcTL", b"\0" * 26) * 300), "more than 256 APNG"),
                          (png(chunk(b"iCCP", b"p\0\0not zlib")), "corrupt zlib"),
                          (b"BM" + b"\0" * 12 + struct.pack("<IHHHH", 12, 1000, 1, 1, 24),
                           "OS/2 BMP")):
        start = time.perf_counter()
        with pytest.raises(ImageRefused, match=message):
            read_header(data, 10**9)
        assert time.perf_counter() - start < 0.1
    small = chunk(b"iTXt", b"k\0\1\0en\0k\0" + zlib.compress(b"a caption"))
    assert read_header(png(small), 10**6).width == 30
