"""The images of a request, parsed and checked before any is decoded (pure functions, run in
worker threads): a raw or multipart ``:classify`` body, a ``:predict`` body's base64
instances, each image's type and header (``domain.image_header``) against the answering
version's pixel limit (``PixelLimits``), and the request's decoded pixels in total."""
from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import os
import threading

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from domain.image_header import MAGIC, ImageRefused, model_pixel_limit, read_header
from serving.limits import Rejected, json_object

PREDICT_BODY = '{"instances": [{"b64": ...}]}'
# HTTP status of each of the header parser's refusals.
IMAGE_STATUS = {"not_an_image": 415, "bad_header": 422, "too_many_pixels": 422}


class PixelLimits:
    """The decoded pixels allowed per image of each version: ``fixed`` when set, else derived
    from the version's training options (``model_pixel_limit``), read once. Thread-safe; at
    most ``versions`` remembered, the least recently asked for forgotten (read again if
    asked)."""

    def __init__(self, push_dir: str, fixed: int = 0, versions: int = 64):
        self.push_dir, self.fixed, self.versions = push_dir, fixed, versions
        self._limits: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._lock = threading.Lock()  # never held while reading a file

    def __len__(self) -> int:
        """How many versions' limits are remembered."""
        with self._lock:
            return len(self._limits)

    def __call__(self, version: int) -> int:
        if self.fixed:
            return self.fixed
        with self._lock:
            if version in self._limits:
                self._limits.move_to_end(version)
                return self._limits[version]
        limit = model_pixel_limit(os.path.join(self.push_dir, str(version)))
        with self._lock:
            self._limits[version] = limit
            self._limits.move_to_end(version)
            while len(self._limits) > self.versions:
                self._limits.popitem(last=False)
        return limit


def check_images(images: list[bytes], content_types: list[str], max_pixels: int,
                 max_total: int) -> int:
    """The decoded pixels of ``images``, each an image of its content type (``""``: any
    allowed one) within ``max_pixels``, together within ``max_total``; ``Rejected`` naming the
    instance otherwise."""
    total = 0
    for index, (image, content_type) in enumerate(zip(images, content_types)):
        where = f"instance {index}: " if len(images) > 1 else ""
        try:
            total += read_header(image, max_pixels, content_type).pixels
        except ImageRefused as refused:
            raise Rejected(IMAGE_STATUS[refused.reason], "magic" if refused.reason ==
                           "not_an_image" else refused.reason, f"{where}{refused}") from None
    if total > max_total:
        raise Rejected(413, "too_many_pixels", f"{total:,} decoded pixels in one request, more "
                       f"than {max_total:,}")
    return total


def predict_instances(body: bytes, max_instances: int, max_depth: int) -> list[bytes]:
    """The images of a ``:predict`` body; 413 for more than ``max_instances`` (counted before
    any is decoded), 400 for anything but ``{"instances": [{"b64": ...}, ...]}``."""
    value = json_object(body, PREDICT_BODY, max_depth, max_containers=max_instances + 2)
    instances = value.get("instances")
    if not isinstance(instances, list) or not instances:
        raise Rejected(400, "bad_request", f"expected {PREDICT_BODY}: no instances")
    if len(instances) > max_instances:
        raise Rejected(413, "too_many_instances", f"{len(instances)} instances, more than "
                       f"{max_instances}")
    try:
        return [base64.b64decode(item["b64"], validate=True) for item in instances]
    except (binascii.Error, ValueError, KeyError, TypeError) as err:
        raise Rejected(400, "bad_request", f"expected {PREDICT_BODY}: {err!r}") from None


def uploaded_image(headers: Headers, body: bytes) -> tuple[bytes, str]:
    """``(image bytes, content type)`` of a raw body, or of the one file in a multipart form
    (parsed by its own event loop: this runs in a worker thread)."""
    content_type = headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        return body, content_type

    async def parse() -> tuple[bytes, str]:
        async def stream():
            yield body

        form = await MultiPartParser(headers, stream(), max_files=1, max_fields=10).parse()
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            raise Rejected(400, "bad_multipart", "the multipart body has no file part")
        return await files[0].read(), files[0].content_type or ""

    try:
        return asyncio.run(parse())
    except (MultiPartException, ValueError) as err:
        raise Rejected(400, "bad_multipart", f"unreadable multipart body: {err}") from None


def allowed_type(content_type: str) -> str:
    """The media type of a ``Content-Type`` header; 415 unless it is an allowed image type."""
    kind = content_type.split(";")[0].strip().lower()
    if kind not in MAGIC:
        raise Rejected(415, "content_type", f"Content-Type {kind[:40] or 'missing'} is not "
                       f"one of {', '.join(MAGIC)}")
    return kind
