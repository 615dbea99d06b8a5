"""The request guard's image-header parser: format, size and frame count of JPEG, PNG, GIF, BMP
and WebP bytes, read without decoding a pixel and in bounded work.

Every walk over blocks, chunks, markers, scans and frames stops at a hard cap, so a hostile
header (a million GIF comments, millions of empty JPEG markers, 200 k PNG text chunks, 2,000
progressive scans) costs milliseconds, never seconds. Every GIF and WebP frame must lie inside
the image's screen (decoders allocate the largest frame), and ``ImageHeader.pixels`` counts what
a decoder materialises: width x height x frames. Pure Python, no TensorFlow or Pillow, so the
gateway, ``ops.predict`` and any process can use it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
import zlib

from domain.features import TRAINING_FILE

# Content types a client may send, and the magic bytes each must start with.
MAGIC = {"image/jpeg": (b"\xff\xd8\xff",), "image/png": (b"\x89PNG\r\n\x1a\n",),
         "image/gif": (b"GIF87a", b"GIF89a"), "image/bmp": (b"BM",),
         "image/webp": (b"RIFF",)}
MAX_BLOCKS = 1024  # GIF extensions, PNG chunks other than IDAT, JPEG segments, WebP chunks
MAX_DATA_CHUNKS = 65536  # PNG IDAT chunks
MAX_SUB_BLOCKS = 131072  # GIF data sub-blocks (a 10 MB GIF of 255-byte ones has 41 k)
MAX_SCANS = 64  # JPEG scans (a progressive JPEG has about 10)
MAX_FRAMES = 256  # GIF and animated WebP frames
MAX_ANCILLARY_BYTES = 2**20  # PNG chunks other than IDAT, together
MAX_INFLATED = 2**20  # what PNG zTXt, compressed iTXt and iCCP chunks inflate to, together
# Input area multiple for the default pixel limit, and its floor: a 224x224 model takes 1 MP.
PIXELS_PER_INPUT_PIXEL, MIN_PIXEL_LIMIT = 16, 2**20


class ImageRefused(ValueError):
    """An image refused from its header: ``reason`` is ``not_an_image``, ``bad_header`` or
    ``too_many_pixels``; the message says why in words."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What a header declares: ``format`` (``jpeg``...), screen size and frame count."""

    format: str
    width: int
    height: int
    frames: int = 1

    @property
    def pixels(self) -> int:
        """Pixels a decoder materialises: every frame at the screen's size."""
        return self.width * self.height * self.frames


def pixel_limit(height: int, width: int, model_max: int = 0) -> int:
    """The default limit for a model of input ``height`` x ``width``: a few times its input
    area (at least ``MIN_PIXEL_LIMIT``), never more than the model's own ``model_max``."""
    limit = max(PIXELS_PER_INPUT_PIXEL * height * width, MIN_PIXEL_LIMIT)
    return min(limit, model_max) if model_max > 0 else limit


def model_pixel_limit(model_dir: str) -> int:
    """``pixel_limit`` of the SavedModel in ``model_dir``, from the training options exported
    beside it (``MIN_PIXEL_LIMIT`` without them)."""
    try:
        with open(os.path.join(model_dir, TRAINING_FILE), encoding="utf-8") as f:
            options = json.load(f)
        return pixel_limit(int(options["image_height"]), int(options["image_width"]),
                           int(options.get("max_pixels", 0)))
    except (OSError, ValueError, KeyError, TypeError):
        return pixel_limit(0, 0)


def sniff(data: bytes) -> str:
    """The content type whose magic bytes ``data`` starts with, or ``""``."""
    for kind, magics in MAGIC.items():
        if data.startswith(magics) and (kind != "image/webp" or data[8:12] == b"WEBP"):
            return kind
    return ""


def _bad(message: str) -> ImageRefused:
    return ImageRefused("bad_header", message)


def _unpack(fmt: str, data: bytes, offset: int) -> tuple:
    try:
        return struct.unpack_from(fmt, data, offset)
    except struct.error:
        raise _bad("the header is truncated") from None


def _count(seen: int, cap: int, what: str) -> int:
    if seen >= cap:
        raise _bad(f"more than {cap} {what}")
    return seen + 1


# PNG chunks whose data libpng inflates (zTXt, iTXt when flagged compressed, iCCP): where the
# zlib stream starts after the keyword's NUL (None: iTXt's flag decides).
_COMPRESSED = {b"zTXt": 1, b"iCCP": 1, b"iTXt": None}


def _inflated(data: bytes, kind: bytes, budget: int) -> int:
    """What a compressed ancillary chunk's ``data`` inflates to, refused past ``budget`` bytes
    (inflating stops there: the cost is bounded by the budget, not by the chunk)."""
    keyword = data.find(b"\0")
    if not 1 <= keyword <= 79:
        raise _bad(f"PNG {kind.decode()} chunk without a keyword")
    start = keyword + 1 + (_COMPRESSED[kind] or 0)
    if _COMPRESSED[kind] is None:  # iTXt: flag, method, language NUL, translated keyword NUL
        if data[start:start + 1] != b"\1":
            return 0
        language = data.find(b"\0", start + 2)
        translated = data.find(b"\0", language + 1) if language >= 0 else -1
        if translated < 0:
            raise _bad("PNG iTXt chunk truncated")
        start = translated + 1
    inflate = zlib.decompressobj()
    try:
        size = len(inflate.decompress(data[start:], budget + 1))
    except zlib.error:
        raise _bad(f"PNG {kind.decode()} chunk with a corrupt zlib stream") from None
    if size > budget or inflate.unconsumed_tail:
        raise _bad(f"PNG text and profile chunks inflate to more than {MAX_INFLATED} bytes")
    return size


def _ancillary(data: bytes, offset: int, length: int, kind: bytes, spent: list[int]) -> None:
    """Checks one chunk other than IDAT before any decoder sees it: its CRC (libpng logs a
    warning per bad ancillary chunk), the total bytes of such chunks and what the compressed
    ones inflate to (``spent``: bytes so far, inflated so far)."""
    body = data[offset + 8:offset + 8 + length]
    spent[0] += length
    if spent[0] > MAX_ANCILLARY_BYTES:
        raise _bad(f"PNG chunks besides the image data of more than {MAX_ANCILLARY_BYTES} bytes")
    (crc,) = _unpack(">I", data, offset + 8 + length)
    if len(body) != length or zlib.crc32(kind + body) != crc:
        raise _bad(f"PNG {kind.decode('latin-1')!r} chunk at byte {offset} fails its CRC")
    if kind in _COMPRESSED:
        spent[1] += _inflated(body, kind, MAX_INFLATED - spent[1])


def _png(data: bytes) -> ImageHeader:
    length, kind, width, height = _unpack(">I4sII", data, 8)
    if kind != b"IHDR" or length != 13:
        raise _bad("PNG without IHDR first")
    offset, blocks, idat, frames, spent = 8, 0, 0, 0, [0, 0]
    while offset + 8 <= len(data):
        length, kind = _unpack(">I4s", data, offset)
        if kind == b"IDAT":
            idat = _count(idat, MAX_DATA_CHUNKS, "PNG IDAT chunks")
        else:
            if kind == b"fcTL":  # (decoders show the default image: frames are only counted)
                frames = _count(frames, MAX_FRAMES, "APNG frames")
            blocks = _count(blocks, MAX_BLOCKS, "PNG chunks")
            _ancillary(data, offset, length, kind, spent)
        if kind == b"IEND":
            break
        offset += 12 + length
    return ImageHeader("png", width, height)


# A JPEG marker inside entropy-coded data: 0xFF, then neither a stuffed 0x00 nor a restart
# (one 0xFF at a time, so a long run of them is linear, not quadratic, to search).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_FILL = re.compile(rb"\xff*")
_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg(data: bytes) -> ImageHeader:
    offset, blocks, scans, size = 2, 0, 0, None
    while offset < len(data):
        fill = _FILL.match(data, offset).end()  # a marker is 0xFF, fill bytes, its code
        if fill == offset or fill >= len(data) or data[fill] in (0x00, 0xFF):
            raise _bad(f"JPEG with no marker at byte {offset}")
        marker, offset = data[fill], fill + 1
        blocks = _count(blocks, MAX_BLOCKS, "JPEG markers")
        if marker == 0xD9:  # end of image
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no segment follows these
            continue
        (length,) = _unpack(">H", data, offset)
        if length < 2:
            raise _bad(f"JPEG segment of length {length}")
        if marker in _SOF:
            if size:
                raise _bad("JPEG with more than one frame header")
            height, width = _unpack(">HH", data, offset + 3)
            size = (width, height)
        offset += length
        if marker == 0xDA:  # start of scan: skip its entropy-coded data to the next marker
            scans = _count(scans, MAX_SCANS, "JPEG scans")
            if not size:
                raise _bad("JPEG scan before its frame header")
            following = _JPEG_MARKER.search(data, offset)
            offset = following.start() if following else len(data)
    if not size:  # (a JPEG truncated after its frame header is the decoder's to refuse)
        raise _bad("JPEG without a frame header")
    return ImageHeader("jpeg", *size)


def _sub_blocks(data: bytes, offset: int, seen: int) -> tuple[int, int]:
    """The offset after a GIF sub-block chain, and the running count of sub-blocks."""
    while True:
        if offset >= len(data):
            raise _bad("the GIF is truncated inside a block")
        size = data[offset]
        offset += 1 + size
        if not size:
            return offset, seen
        seen = _count(seen, MAX_SUB_BLOCKS, "GIF data sub-blocks")


def _gif(data: bytes) -> ImageHeader:
    width, height, packed = _unpack("<HHB", data, 6)
    offset = 13 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0)
    blocks = frames = sub_blocks = 0
    while offset < len(data):
        introducer = data[offset]
        if introducer == 0x3B:  # trailer
            break
        if introducer == 0x21:
            blocks = _count(blocks, MAX_BLOCKS, "GIF extension blocks")
            offset, sub_blocks = _sub_blocks(data, offset + 2, sub_blocks)
        elif introducer == 0x2C:
            frames = _count(frames, MAX_FRAMES, "GIF frames")
            left, top, w, h, packed = _unpack("<HHHHB", data, offset + 1)
            if not w or not h or left + w > width or top + h > height:
                raise _bad(f"GIF frame {frames} ({w}x{h} at {left},{top}) is not inside its "
                           f"{width}x{height} screen")
            offset += 10 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0)
            offset, sub_blocks = _sub_blocks(data, offset + 1, sub_blocks)  # after LZW size
        else:
            raise _bad(f"GIF block 0x{introducer:02x} at byte {offset} is neither an "
                       "image, an extension nor the trailer")
    if not frames:
        raise _bad("GIF without an image")
    return ImageHeader("gif", width, height, frames)


def _bmp(data: bytes) -> ImageHeader:
    (header,) = _unpack("<I", data, 14)
    if header == 12:  # OS/2 1.x: TensorFlow's decoder reads its 16-bit sizes as 32-bit ones
        raise _bad("OS/2 BMP (12-byte header) is not supported")
    if header >= 40:
        width, height = _unpack("<ii", data, 18)
    else:
        raise _bad(f"BMP header of {header} bytes")
    return ImageHeader("bmp", width, abs(height))


def _vp8_size(data: bytes, kind: bytes, offset: int) -> tuple[int, int]:
    if kind == b"VP8 ":
        width, height = _unpack("<HH", data, offset + 6)
        return width & 0x3FFF, height & 0x3FFF
    (bits,) = _unpack("<I", data, offset + 1)
    return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1


def _u24(data: bytes, offset: int) -> int:
    low, high = _unpack("<HB", data, offset)
    return low | high << 16


def _webp(data: bytes) -> ImageHeader:
    if data[8:12] != b"WEBP":
        raise ImageRefused("not_an_image", "RIFF but not WebP")
    offset, blocks, frames, size = 12, 0, 0, None
    while offset + 8 <= len(data):
        kind, length = _unpack("<4sI", data, offset)
        blocks = _count(blocks, MAX_BLOCKS, "WebP chunks")
        body = offset + 8
        if kind == b"VP8X":
            if size:
                raise _bad("WebP with VP8X after its size")
            size = (_u24(data, body + 4) + 1, _u24(data, body + 7) + 1)
        elif kind == b"ANMF":
            frames = _count(frames, MAX_FRAMES, "WebP frames")
            left, top, w, h = (_u24(data, body + i) for i in (0, 3, 6, 9))
            if not size or 2 * left + w + 1 > size[0] or 2 * top + h + 1 > size[1]:
                raise _bad(f"WebP frame {frames} is not inside its canvas")
        elif kind in (b"VP8 ", b"VP8L"):
            width, height = _vp8_size(data, kind, body)
            if size is None:
                size = (width, height)
            elif width > size[0] or height > size[1]:
                raise _bad(f"WebP image of {width}x{height} in a {size[0]}x{size[1]} canvas")
        offset = body + length + (length & 1)
    if not size:
        raise _bad("WebP without an image")
    return ImageHeader("webp", *size, max(frames, 1))


PARSERS = {"image/jpeg": _jpeg, "image/png": _png, "image/gif": _gif, "image/bmp": _bmp,
           "image/webp": _webp}


def read_header(data: bytes, max_pixels: int, content_type: str = "") -> ImageHeader:
    """The header of ``data``, which must be an image (of ``content_type`` when given) of at
    most ``max_pixels`` decoded pixels (``ImageHeader.pixels``); else ``ImageRefused``."""
    kind = sniff(data)
    if not kind or (content_type and kind != content_type):
        expected = content_type or "a JPEG, PNG, GIF, BMP or WebP image"
        raise ImageRefused("not_an_image", f"the body does not start like {expected}")
    header = PARSERS[kind](data)
    if header.width <= 0 or header.height <= 0:
        raise _bad(f"{header.format.upper()} of {header.width}x{header.height} pixels")
    if header.pixels > max_pixels:
        frames = f" x {header.frames} frames" if header.frames > 1 else ""
        raise ImageRefused("too_many_pixels", f"{header.width}x{header.height}{frames} is more "
                           f"than max_pixels={max_pixels:,}")
    return header
