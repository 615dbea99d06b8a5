"""What the Trainer exports: the serving SavedModel's signatures, the files beside it
(warm-start weights, training options, code version) and an optional TFLite file."""
from __future__ import annotations

import os

import tensorflow as tf
import tensorflow_transform as tft

from domain.features import (CLASS_IDS, CLASS_NAMES, CLASSES, CODE_FILE, IMAGE_XF,
                             LABEL_VOCABULARY, LABEL_XF, PROBABILITIES, RAW_INPUT, RAW_SIGNATURE,
                             SERVING_INPUT, TRAINING_FILE, TRANSFORM_SIGNATURE, ImageSpec)
from domain.exported import TEACHER_FILE
from modules.json_files import write_json
from modules.preprocessing import decode_images, model_pixels
from modules.provenance import code_version
from modules.tflite import export_tflite
from modules.warm_start import export_warm_start


class ServingModule(tf.Module):
    """Serving signatures: serialized tf.Examples (through the Transform graph) and raw bytes."""

    def __init__(self, model, tf_transform_output: tft.TFTransformOutput,
                 spec: ImageSpec, class_names: list[str]):
        super().__init__()
        self.model = model
        # Keras 3's random layers (flip/rotate/zoom) keep seed states that the SavedModel
        # cannot reach through ``model``: tracked here, they are saved with it.
        self.keras_variables = list(model.variables)
        self.tft_layer = tf_transform_output.transform_features_layer()
        self.class_names = tf.Variable(class_names, trainable=False, name=CLASS_NAMES)
        self._spec = spec
        raw_spec = tf_transform_output.raw_feature_spec()
        # Clients send the image alone; other raw features (e.g. ingest's source_path) are
        # neither needed nor required.
        self._raw_spec = {spec.image_key: raw_spec[spec.image_key]}
        self._raw_spec_with_label = {k: raw_spec[k] for k in (spec.image_key, spec.label_key)}
        # Decoded pixels in: no signature (TF Serving never sees it), for measuring the model
        # on the same pixels as its TFLite export (``modules.tflite``).
        self.serve_pixels = tf.function(self._predict, input_signature=[
            tf.TensorSpec((None,) + spec.shape, tf.float32, name=IMAGE_XF)])

    def _predict(self, pixels):
        probabilities = self.model(pixels, training=False)
        class_ids = tf.argmax(probabilities, axis=-1)
        return {PROBABILITIES: probabilities, CLASS_IDS: class_ids,
                CLASS_NAMES: tf.gather(self.class_names, class_ids)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SERVING_INPUT)])
    def serve_examples(self, serialized):
        features = self.tft_layer(tf.io.parse_example(serialized, self._raw_spec))
        return self._predict(model_pixels(features[IMAGE_XF], self._spec))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=RAW_INPUT)])
    def serve_image_bytes(self, images):
        """Also every image's row of class names (``CLASSES``, as TF Serving's Classify API
        answers), so that a REST client gets names with the probabilities."""
        outputs = self._predict(decode_images(images, self._spec))
        outputs[CLASSES] = tf.tile(self.class_names[tf.newaxis], [tf.shape(images)[0], 1])
        return outputs

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SERVING_INPUT)])
    def transform_labels(self, serialized):
        """Labelled examples -> ``label_xf``: the Evaluator's labels, mapped as in training."""
        features = self.tft_layer(tf.io.parse_example(serialized, self._raw_spec_with_label))
        return {LABEL_XF: features[LABEL_XF]}

    def save(self, directory: str) -> None:
        tf.saved_model.save(self, directory, signatures={
            "serving_default": self.serve_examples, RAW_SIGNATURE: self.serve_image_bytes,
            TRANSFORM_SIGNATURE: self.transform_labels})


def class_names(config: dict, tf_transform_output: tft.TFTransformOutput) -> list[str]:
    """The configured class names, or the label vocabulary Transform computed; checked
    against ``num_classes``."""
    if config["label_format"] != "string":
        return config["class_names"]
    names = [n.decode() for n in tf_transform_output.vocabulary_by_name(LABEL_VOCABULARY)]
    if len(names) != config["num_classes"]:
        raise ValueError(f"the training data has {len(names)} distinct labels "
                         f"({', '.join(names[:20])}...) but num_classes={config['num_classes']}")
    return names


def export_model(model, out_dir: str, config: dict, tf_transform_output: tft.TFTransformOutput,
                 names: list[str], warm: dict | None, fn_args=None,
                 teacher: dict | None = None) -> None:
    """The serving SavedModel, warm-start weights (and how ``warm`` went), effective
    settings, code version, the distillation's ``teacher`` if any and, with ``tflite``, the
    TFLite model measured on ``fn_args``' eval split (``modules.tflite``)."""
    spec = ImageSpec.from_custom_config(config)
    ServingModule(model, tf_transform_output, spec, names).save(out_dir)
    export_warm_start(model, out_dir, config, warm)
    write_json(os.path.join(out_dir, TRAINING_FILE), config)
    write_json(os.path.join(out_dir, CODE_FILE), code_version())
    if teacher:
        write_json(os.path.join(out_dir, TEACHER_FILE), teacher)
    if config["tflite"]:
        export_tflite(model, out_dir, config, fn_args, tf_transform_output)
