"""The TFLite model beside a SavedModel and its measured figures (``modules.tflite`` writes
them; the run summary, report, model card and lineage read them)."""
from __future__ import annotations

import os

TFLITE_PATH = os.path.join("assets.extra", "model.tflite")
# Its figures on the eval split against the SavedModel's; ``reason`` is why it was held back.
TFLITE_SUMMARY = os.path.join("assets.extra", "tflite.json")


def tflite_line(summary: dict) -> str:
    """``TFLite int8: accuracy …, … KB, … ms per image`` against the SavedModel, and why it
    was not pushed if it was not."""
    line = (f"TFLite {summary['mode']}: accuracy {summary['accuracy']:.4f} (SavedModel "
            f"{summary['saved_model_accuracy']:.4f}, agreement {summary['agreement']:.4f}), "
            f"{summary['kb']:g} KB (SavedModel weights {summary['saved_model_kb']:g} KB), "
            f"{summary['ms_per_image']:g} ms per image (SavedModel "
            f"{summary['saved_model_ms_per_image']:g} ms)")
    return line + (f"; not pushed: {summary['reason']}" if summary["reason"] else "")
