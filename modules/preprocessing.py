"""Transform's ``preprocessing_fn`` and the one image path of training and serving.

Encoded images stay encoded in Transform's output (compact: about the size of the input, not
height x width x channels floats); ``model_pixels`` decodes, resizes and scales them in the
Trainer's input pipeline and inside the exported SavedModel alike, so both see the same pixels.
"""
from __future__ import annotations

from typing import Any, Mapping

import tensorflow as tf
import tensorflow_transform as tft

from modules.features import IMAGE_XF, LABEL_VOCABULARY, LABEL_XF, ImageSpec


PARALLEL_DECODES = 16  # images of a batch decoded concurrently


def _uint(data: tf.Tensor, start: int, size: int, little_endian: bool) -> tf.Tensor:
    """An unsigned integer of ``size`` bytes at ``start`` of a byte string."""
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(data, start, size), tf.uint8), tf.int64)
    weights = [256 ** i for i in (range(size) if little_endian else reversed(range(size)))]
    return tf.reduce_sum(raw * tf.constant(weights, tf.int64))


def image_dims(data: tf.Tensor) -> tf.Tensor:
    """``[height, width]`` from the header of PNG/JPEG/GIF/BMP bytes, without decoding pixels.

    Unknown formats give ``[0, 0]`` (the decoder then rejects them).
    """
    magic = tf.strings.substr(data, 0, 4)
    padded = data + b"\0" * 26  # short inputs read as zeros, not out of range

    def le(start, size):
        return _uint(padded, start, size, little_endian=True)

    def be(start, size):
        return _uint(padded, start, size, little_endian=False)

    def bmp():
        height = le(22, 4)
        return tf.stack([tf.where(height >= 2**31, 2**32 - height, height), le(18, 4)])

    return tf.case([
        (tf.equal(magic, b"\x89PNG"), lambda: tf.stack([be(20, 4), be(16, 4)])),
        (tf.equal(tf.strings.substr(magic, 0, 2), b"\xff\xd8"),
         lambda: tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64)),
        (tf.equal(magic, b"GIF8"), lambda: tf.stack([le(8, 2), le(6, 2)])),
        (tf.equal(tf.strings.substr(magic, 0, 2), b"BM"), bmp),
    ], default=lambda: tf.zeros([2], tf.int64))


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


def decode_images(encoded: tf.Tensor, spec: ImageSpec) -> tf.Tensor:
    """JPEG/PNG/GIF/BMP bytes ``[batch]`` -> float32 pixels in [0, 1], ``[batch, h, w, c]``.

    Images of more than ``spec.max_pixels`` pixels are rejected before any pixel is decoded.
    """

    def decode_one(data):
        dims = image_dims(data)
        check = tf.debugging.Assert(
            dims[0] * dims[1] <= spec.max_pixels,
            [f"image too large: more than max_pixels={spec.max_pixels}; (height, width) =", dims])
        with tf.control_dependencies([check]):
            image = tf.io.decode_image(data, channels=spec.channels, expand_animations=False)
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
