"""Classifying with an exported SavedModel (a pushed version, or the Trainer's serving model),
through the signatures ``modules.export`` writes: the one place that loads one to predict
(the gateway's in-process backend, ``ops.predict`` and the run report's gallery)."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from domain.features import LABEL_XF, PROBABILITIES, RAW_INPUT, RAW_SIGNATURE
from modules.preprocessing import decode_failure


class Undecodable(ValueError):
    """An image the model refused to decode; the message says why, in words."""


class SavedClassifier:
    """The SavedModel in ``model_dir`` with its class names; ``OSError`` or ``ValueError``
    when it does not load."""

    def __init__(self, model_dir: str):
        self._model = tf.saved_model.load(model_dir)
        self.class_names = [n.decode() for n in self._model.class_names.numpy()]

    def images(self, images: list[bytes]) -> np.ndarray:
        """Probabilities per encoded image (the raw-bytes signature); ``Undecodable`` when
        one does not decode (named when it is the only one)."""
        try:
            outputs = self._model.signatures[RAW_SIGNATURE](**{RAW_INPUT: tf.constant(images)})
        except tf.errors.InvalidArgumentError as err:
            raise Undecodable(decode_failure(err.message, images[0] if len(images) == 1
                                             else None)) from None
        return outputs[PROBABILITIES].numpy()

    def examples(self, serialized: tf.Tensor) -> np.ndarray:
        """Probabilities per serialized ``tf.Example`` (through the Transform graph)."""
        return self._model.serve_examples(serialized)[PROBABILITIES].numpy()

    def label_ids(self, serialized: tf.Tensor) -> np.ndarray:
        """The label id of each labelled ``tf.Example``, mapped as in training."""
        return self._model.transform_labels(serialized)[LABEL_XF].numpy().reshape(-1)
