"""Transform's ``preprocessing_fn`` and the one image path of training and serving.

Encoded images stay encoded in Transform's output (compact: about the size of the input, not
height x width x channels floats); ``model_pixels`` decodes, resizes and scales them in the
Trainer's input pipeline and inside the exported SavedModel alike, so both see the same pixels.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import tensorflow as tf
import tensorflow_transform as tft

from domain.features import IMAGE_XF, LABEL_VOCABULARY, LABEL_XF, ImageSpec


PARALLEL_DECODES = 16  # images of a batch decoded concurrently
# The starts of decode_images' refusals, which callers turn into one-line messages.
NOT_AN_IMAGE = "not an image"
TOO_LARGE = "image too large"


def _uint(data: tf.Tensor, start: int, size: int, little_endian: bool) -> tf.Tensor:
    """An unsigned integer of ``size`` bytes at ``start`` of a byte string."""
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(data, start, size), tf.uint8), tf.int64)
    weights = [256 ** i for i in (range(size) if little_endian else reversed(range(size)))]
    return tf.reduce_sum(raw * tf.constant(weights, tf.int64))


def image_dims(data: tf.Tensor) -> tf.Tensor:
    """``[height, width]`` from the header of PNG/JPEG/GIF/BMP/WebP bytes, without decoding
    pixels. Anything else, and headers too short to hold a size, give ``[0, 0]``."""
    magic = tf.strings.substr(data, 0, 4)
    padded = data + b"\0" * 30  # short inputs read as zeros, not out of range

    def le(start, size):
        return _uint(padded, start, size, little_endian=True)

    def be(start, size):
        return _uint(padded, start, size, little_endian=False)

    def bmp():
        height = le(22, 4)
        return tf.stack([tf.where(height >= 2**31, 2**32 - height, height), le(18, 4)])

    def webp():
        chunk = tf.strings.substr(padded, 12, 4)
        bits = le(21, 4)  # VP8L: 14 bits width - 1, then 14 bits height - 1
        return tf.case([
            (tf.equal(chunk, b"VP8 "), lambda: tf.stack([le(28, 2) % 2**14, le(26, 2) % 2**14])),
            (tf.equal(chunk, b"VP8L"), lambda: tf.stack([(bits // 2**14) % 2**14 + 1,
                                                         bits % 2**14 + 1])),
            (tf.equal(chunk, b"VP8X"), lambda: tf.stack([le(27, 3) + 1, le(24, 3) + 1])),
        ], default=lambda: tf.zeros([2], tf.int64))

    return tf.case([
        (tf.equal(magic, b"\x89PNG"), lambda: tf.stack([be(20, 4), be(16, 4)])),
        (tf.equal(tf.strings.substr(magic, 0, 2), b"\xff\xd8"),
         lambda: tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64)),
        (tf.equal(magic, b"GIF8"), lambda: tf.stack([le(8, 2), le(6, 2)])),
        (tf.equal(tf.strings.substr(magic, 0, 2), b"BM"), bmp),
        (tf.logical_and(tf.equal(magic, b"RIFF"),
                        tf.equal(tf.strings.substr(padded, 8, 4), b"WEBP")), webp),
    ], default=lambda: tf.zeros([2], tf.int64))


def decode_failure(message: str, data: bytes | None = None) -> str:
    """``decode_images``' TensorFlow error ``message`` for ``data``, in words: no graph text."""
    text = re.sub(r"\{\{[^}]*\}\}|\[\[.*?\]\]|\[Op:[^\]]*\]", "", message)
    if NOT_AN_IMAGE in text:
        if data is not None and not data:
            return "empty (0 bytes), not an image"
        start = f" (it starts with {data[:12]!r})" if data else ""
        return f"not a JPEG, PNG, GIF, BMP or WebP image{start}"
    large = re.search(r"max_pixels=(\d+).*?\[(\d+) (\d+)\]", text, re.S)
    if TOO_LARGE in text and large:
        limit, height, width = large.groups()
        return (f"{int(width)}x{int(height)} pixels declared in its header, more than "
                f"max_pixels={int(limit):,} (not decoded)")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"corrupt or truncated image data ({first.removeprefix('assertion failed:').strip()})"


def resize(image: tf.Tensor, spec: ImageSpec) -> tf.Tensor:
    """To the model's size: keep aspect with padding (``pad``), fill and crop (``crop``), or
    ``stretch``."""
    if spec.resize_mode == "pad":
        return tf.image.resize_with_pad(image, spec.height, spec.width)
    if spec.resize_mode == "crop":
        size = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = tf.reduce_max(tf.constant([spec.height, spec.width], tf.float32) / size)
        image = tf.image.resize(image, tf.cast(tf.math.ceil(size * scale), tf.int32))
        return tf.image.resize_with_crop_or_pad(image, spec.height, spec.width)
    return tf.image.resize(image, [spec.height, spec.width])


def _fit(image: tf.Tensor, spec: ImageSpec) -> tf.Tensor:
    """A float image in [0, 1] of any size -> the model's ``[h, w, c]``."""
    return tf.ensure_shape(tf.clip_by_value(resize(image, spec), 0.0, 1.0), spec.shape)


def _decode(data: tf.Tensor, channels: int) -> tf.Tensor:
    """The first frame of an image as ``channels`` channels of uint8. GIF, BMP and WebP
    decode only to colour: a 1-channel model gets their grey from RGB."""
    if channels != 1:
        return tf.io.decode_image(data, channels=channels, expand_animations=False)
    grey_decodes = tf.reduce_any(tf.equal(tf.strings.substr(data, 0, 2), [b"\x89P", b"\xff\xd8"]))
    return tf.cond(grey_decodes,
                   lambda: tf.io.decode_image(data, channels=1, expand_animations=False),
                   lambda: tf.image.rgb_to_grayscale(
                       tf.io.decode_image(data, channels=3, expand_animations=False)))


def decode_images(encoded: tf.Tensor, spec: ImageSpec) -> tf.Tensor:
    """JPEG/PNG/GIF/BMP/WebP bytes ``[batch]`` -> float32 pixels in [0, 1], ``[batch, h, w, c]``.

    An image is decoded only once its header says which format it is and that it has at most
    ``spec.max_pixels`` pixels; anything else is rejected before any pixel is decoded.
    """

    def decode_one(data):
        dims = image_dims(data)
        # (No bytes of ``data`` in the message: TensorFlow fails to format non-UTF-8 ones.)
        known = tf.debugging.Assert(tf.reduce_all(dims > 0), [
            f"{NOT_AN_IMAGE}: no JPEG, PNG, GIF, BMP or WebP header"])
        with tf.control_dependencies([known]):
            small = tf.debugging.Assert(dims[0] * dims[1] <= spec.max_pixels, [
                f"{TOO_LARGE}: more than max_pixels={spec.max_pixels}; (height, width) =",
                dims])
        with tf.control_dependencies([small]):
            image = _decode(data, spec.channels)
        return _fit(tf.image.convert_image_dtype(image, tf.float32), spec)

    return tf.map_fn(decode_one, encoded, parallel_iterations=PARALLEL_DECODES,
                     fn_output_signature=tf.TensorSpec(spec.shape, tf.float32))


def _to_channels(images: tf.Tensor, have: int, want: int) -> tf.Tensor:
    if have == 4:  # RGBA: drop alpha
        images, have = images[..., :3], 3
    if have == want:
        return images
    return tf.image.grayscale_to_rgb(images) if want == 3 else tf.image.rgb_to_grayscale(images)


def pixels_from_values(values: tf.Tensor, spec: ImageSpec) -> tf.Tensor:
    """Raw numeric pixel lists ``[batch, rh*rw*rc]`` (raw_min_value..raw_max_value, e.g. 0..255
    or a centred -0.5..0.5) -> ``[batch, h, w, c]`` in [0, 1]."""
    scaled = ((tf.cast(values, tf.float32) - spec.raw_min_value)
              / (spec.raw_max_value - spec.raw_min_value))
    images = tf.reshape(tf.clip_by_value(scaled, 0.0, 1.0), (-1,) + spec.raw_shape)
    images = _to_channels(images, spec.raw_shape[2], spec.channels)
    return tf.map_fn(lambda image: _fit(image, spec), images,
                     fn_output_signature=tf.TensorSpec(spec.shape, tf.float32))


def _dense(tensor) -> tf.Tensor:
    return tf.sparse.to_dense(tensor) if isinstance(tensor, tf.SparseTensor) else tensor


def model_pixels(image_xf: tf.Tensor, spec: ImageSpec) -> tf.Tensor:
    """Transform's ``image_xf`` -> the model's ``[batch, h, w, c]`` pixels in [0, 1]: encoded
    bytes are decoded (``decode_images``), pixels from raw values pass through."""
    if image_xf.dtype == tf.string:
        return decode_images(tf.reshape(image_xf, [-1]), spec)
    return image_xf


def preprocessing_fn(inputs: Mapping[str, Any], custom_config: Mapping[str, Any]) -> dict:
    """Raw ``{image, label}`` -> ``{image_xf, label_xf: [b] int64}``.

    ``image``: encoded bytes, kept as ``[b]`` strings (``model_pixels`` decodes them), or raw
    pixel values (``image_format=raw``), scaled to ``[b,h,w,c]`` float32 in [0, 1]. ``label``:
    int64 class ids, or strings mapped through the vocabulary Transform computes
    (``label_format=string``). The label is absent at serving time; TFT then drops
    ``label_xf`` from the output.
    """
    spec = ImageSpec.from_custom_config(custom_config)
    image = _dense(inputs[spec.image_key])
    if spec.image_format == "raw":
        pixels = pixels_from_values(image, spec)
    else:
        pixels = tf.reshape(image, [-1])
    label = tf.reshape(_dense(inputs[spec.label_key]), [-1])
    if spec.label_format == "string":
        label = tft.compute_and_apply_vocabulary(label, vocab_filename=LABEL_VOCABULARY)
    return {IMAGE_XF: pixels, LABEL_XF: label}
