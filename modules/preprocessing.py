"""Transform's ``preprocessing_fn``: decode and normalise images inside the TF graph."""
from __future__ import annotations

from typing import Any, Mapping

import tensorflow as tf

from modules.features import IMAGE_XF, LABEL_XF, ImageSpec


def decode_images(encoded: tf.Tensor, spec: ImageSpec) -> tf.Tensor:
    """JPEG/PNG/GIF/BMP bytes ``[batch]`` -> float32 pixels in [0, 1], ``[batch, h, w, c]``."""

    def decode_one(data):
        image = tf.io.decode_image(data, channels=spec.channels, expand_animations=False)
        image = tf.image.resize(tf.image.convert_image_dtype(image, tf.float32),
                                [spec.height, spec.width])
        return tf.ensure_shape(tf.clip_by_value(image, 0.0, 1.0), spec.shape)

    return tf.map_fn(decode_one, encoded,
                     fn_output_signature=tf.TensorSpec(spec.shape, tf.float32))


def _dense_column(tensor) -> tf.Tensor:
    """A one-value-per-example feature as a ``[batch]`` tensor."""
    if isinstance(tensor, tf.SparseTensor):
        tensor = tf.sparse.to_dense(tensor)
    return tf.reshape(tensor, [-1])


def preprocessing_fn(inputs: Mapping[str, Any], custom_config: Mapping[str, Any]) -> dict:
    """Raw ``{image bytes, label}`` -> ``{image_xf: [b,h,w,c] float32, label_xf: [b] int64}``.

    The label is absent at serving time; TFT then drops ``label_xf`` from the output.
    """
    spec = ImageSpec.from_custom_config(custom_config)
    return {
        IMAGE_XF: decode_images(_dense_column(inputs[spec.image_key]), spec),
        LABEL_XF: _dense_column(inputs[spec.label_key]),
    }
