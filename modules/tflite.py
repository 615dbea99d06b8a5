"""The TFLite export: conversion (float16, dynamic-range int8, or full-integer int8 calibrated
on the train split), its measurement on the eval split with the TFLite interpreter against
the SavedModel beside it (accuracy, per-class recall, agreement, size, latency), and the gate
on the drop: a TFLite model more than ``max_tflite_drop`` behind the SavedModel stays out of
the serving dir (so out of the pushed version), kept in the ModelRun for inspection.

The TFLite model takes decoded pixels ``[1, h, w, c]``: the image decoded, resized
(``resize_mode``) and scaled to [0, 1] exactly as ``modules.preprocessing.decode_images``
does for the SavedModel. ``int8`` takes them as uint8 (its input scale is 1/255 with zero
point 0, so the device feeds the resized image's bytes unchanged) and answers uint8
probabilities (scale 1/256)."""
from __future__ import annotations

import os
import statistics
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from tfx_bsl.tfxio import dataset_options

from domain.features import IMAGE_XF, LABEL_XF, PROBABILITIES, TFLITE_MODES, ImageSpec
from domain.exported import TFLITE_PATH, TFLITE_SUMMARY
from modules.json_files import write_json
from modules.preprocessing import model_pixels

HELD_BACK = "held_back_model.tflite"  # in the ModelRun: a TFLite model the drop gate refused
CALIBRATION_IMAGES = 200  # train-split images that calibrate the int8 ranges
EVAL_IMAGES = 2000  # eval-split images the TFLite model and the SavedModel are measured on
LATENCY_RUNS = 50  # single-image predictions timed (the median is reported)


def _saved_model(model, signature: list[tf.TensorSpec], directory: str) -> None:
    """``model`` in inference mode as a SavedModel, the converter's input."""
    if isinstance(model, keras.Model):  # Keras 3: a traced tf.function converts to NaNs
        # Inference mode stated: ``model.export`` leaves ``training`` open, which keeps
        # the random augmentation ops (rotate, zoom) that TFLite cannot convert.
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", lambda pixels: model(pixels, training=False),
                             input_signature=signature)
        archive.write_out(directory, verbose=False)
    else:  # tf_keras
        tf.saved_model.save(model, directory, signatures=tf.function(
            lambda pixels: model(pixels, training=False), input_signature=signature))


def tflite_bytes(model, spec: ImageSpec, mode: str,
                 calibration: np.ndarray | None = None) -> bytes:
    """The model on decoded pixels ``[1, h, w, c]`` as TFLite: float16, dynamic-range int8,
    or full-integer ``int8`` (uint8 input and output) calibrated on ``calibration`` pixels."""
    if mode not in TFLITE_MODES[1:]:
        raise ValueError(f"tflite mode must be one of {TFLITE_MODES[1:]}, got {mode!r}")
    if mode == "int8" and (calibration is None or not len(calibration)):
        raise ValueError("tflite=int8 needs calibration images (a sample of the train split)")
    with tempfile.TemporaryDirectory() as tmp:
        _saved_model(model, [tf.TensorSpec((1,) + spec.shape, tf.float32, name=IMAGE_XF)], tmp)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if mode == "int8":
            converter.representative_dataset = lambda: _representative(calibration, spec)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = converter.inference_output_type = tf.uint8
        return converter.convert()


def _representative(images: np.ndarray, spec: ImageSpec):
    """Calibration inputs: an image half black, half white first, so the input range is
    exactly [0, 1] (uint8 pixel = byte value; not flat, which would stretch the ranges of the
    model's standardisation), then the sample."""
    two_tone = np.zeros(spec.shape)
    two_tone[:, spec.width // 2:] = 1.0
    for image in [two_tone, *images]:
        yield [image[np.newaxis].astype(np.float32)]


class LiteClassifier:
    """A TFLite model's probabilities per float pixel image, quantizing its input and
    dequantizing its output when they are integers."""

    def __init__(self, content: bytes):
        self._interpreter = tf.lite.Interpreter(model_content=content, num_threads=1)
        self._interpreter.allocate_tensors()
        (self._input,), (self._output,) = (self._interpreter.get_input_details(),
                                           self._interpreter.get_output_details())

    @property
    def types(self) -> tuple[str, str]:
        """The input's and output's element types (``uint8`` for ``int8``)."""
        return np.dtype(self._input["dtype"]).name, np.dtype(self._output["dtype"]).name

    def _invoke(self, image: np.ndarray) -> None:
        scale, zero = self._input["quantization"]
        if scale:
            image = np.clip(np.round(image / scale + zero), 0, 255)
        self._interpreter.set_tensor(self._input["index"],
                                     image[np.newaxis].astype(self._input["dtype"]))
        self._interpreter.invoke()

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        scale, zero = self._output["quantization"]
        rows = []
        for image in images:
            self._invoke(image)
            row = self._interpreter.get_tensor(self._output["index"])[0].astype(np.float32)
            rows.append((row - zero) * scale if scale else row)
        return np.array(rows)

    def seconds_per_image(self, image: np.ndarray) -> float:
        return _median_seconds(lambda: self._invoke(image))


def _median_seconds(run) -> float:
    run()  # warm-up
    times = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def read_pixels(files: list[str], data_accessor, tf_transform_output, spec: ImageSpec,
                limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` transformed examples of ``files``: pixels as the model sees them
    (``model_pixels``) and label ids."""
    dataset = data_accessor.tf_dataset_factory(files, dataset_options.TensorFlowDatasetOptions(
        batch_size=64, label_key=LABEL_XF, num_epochs=1, shuffle=False),
        tf_transform_output.transformed_metadata.schema)
    dataset = dataset.map(lambda f, label: (model_pixels(f[IMAGE_XF], spec),
                                            tf.reshape(label, [-1]))).unbatch().take(limit)
    pixels, labels = [], []
    for image, label in dataset.as_numpy_iterator():
        pixels.append(image)
        labels.append(label)
    return np.array(pixels, np.float32), np.array(labels, np.int64)


def measure(content: bytes, saved_model_dir: str, pixels: np.ndarray, labels: np.ndarray,
            names: list[str]) -> dict:
    """The TFLite model against the SavedModel in ``saved_model_dir`` on the same pixels:
    accuracy of both, the drop, the TFLite model's recall per class, how often both predict
    the same class, sizes, and median single-image latency of both on this CPU (one thread
    for TFLite; pixels in, so decoding is in neither)."""
    lite = LiteClassifier(content)
    saved = tf.saved_model.load(saved_model_dir)
    lite_ids = lite.probabilities(pixels).argmax(axis=1)
    saved_ids = np.concatenate([saved.serve_pixels(pixels[i:i + 256])[PROBABILITIES].numpy()
                                for i in range(0, len(pixels), 256)]).argmax(axis=1)
    accuracy, saved_accuracy = (float(np.mean(ids == labels)) for ids in (lite_ids, saved_ids))
    one = tf.constant(pixels[:1])
    return {
        "images": len(labels), "accuracy": accuracy, "saved_model_accuracy": saved_accuracy,
        "drop": saved_accuracy - accuracy,
        "class_recall": {name: float(np.mean(lite_ids[labels == i] == i))
                         for i, name in enumerate(names) if np.any(labels == i)},
        "agreement": float(np.mean(lite_ids == saved_ids)),
        "input_type": lite.types[0], "output_type": lite.types[1],
        "kb": round(len(content) / 1024, 1),
        "saved_model_kb": round(_variables_bytes(saved_model_dir) / 1024, 1),
        "ms_per_image": round(1000 * lite.seconds_per_image(pixels[0]), 3),
        "saved_model_ms_per_image": round(1000 * _median_seconds(
            lambda: saved.serve_pixels(one)), 3)}


def _variables_bytes(saved_model_dir: str) -> int:
    """The SavedModel's weights on disk (its variables), what a TFLite file replaces."""
    folder = os.path.join(saved_model_dir, "variables")
    return sum(tf.io.gfile.stat(os.path.join(folder, name)).length
               for name in tf.io.gfile.listdir(folder))


def export_tflite(model, out_dir: str, config: dict, fn_args, tf_transform_output) -> dict:
    """Converts ``model`` (``config["tflite"]``), measures it against the SavedModel already
    in ``out_dir`` on (up to ``EVAL_IMAGES`` of) the eval split, and places it
    (``place_tflite``); returns its figures."""
    spec, mode = ImageSpec.from_custom_config(config), config["tflite"]
    calibration = (read_pixels(fn_args.train_files, fn_args.data_accessor, tf_transform_output,
                               spec, CALIBRATION_IMAGES)[0] if mode == "int8" else None)
    content = tflite_bytes(model, spec, mode, calibration)
    pixels, labels = read_pixels(fn_args.eval_files, fn_args.data_accessor, tf_transform_output,
                                 spec, EVAL_IMAGES)
    summary = dict(measure(content, out_dir, pixels, labels, config["class_names"]), mode=mode)
    return place_tflite(content, summary, config["max_tflite_drop"], out_dir,
                        fn_args.model_run_dir)


def place_tflite(content: bytes, summary: dict, max_drop: float, out_dir: str,
                 run_dir: str) -> dict:
    """The TFLite model beside the SavedModel in ``out_dir`` (``TFLITE_PATH``: pushed with
    it), or in ``run_dir`` (``HELD_BACK``: never pushed) when its accuracy is more than
    ``max_drop`` below the SavedModel's; its figures, ``max_drop`` and the ``reason`` it was
    held back ("" when it was not) in ``TFLITE_SUMMARY`` beside the SavedModel."""
    summary = dict(summary, max_drop=max_drop, reason="")
    path = os.path.join(out_dir, TFLITE_PATH)
    if summary["drop"] > max_drop:
        summary["reason"] = (f"its accuracy {summary['accuracy']:.4f} is {summary['drop']:.4f} "
                             f"below the SavedModel's, more than max_tflite_drop={max_drop:g}")
        path = os.path.join(run_dir, HELD_BACK)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(content)
    write_json(os.path.join(out_dir, TFLITE_SUMMARY), summary)
    return summary
