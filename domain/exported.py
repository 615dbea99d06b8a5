"""Files the Trainer writes beside the SavedModel for the run summary, report, model card and
lineage to read: the TFLite model and its measured figures (``modules.tflite``), and the
teacher a distilled model learnt from (``modules.distill``)."""
from __future__ import annotations

import os

TFLITE_PATH = os.path.join("assets.extra", "model.tflite")
# Its figures on the eval split against the SavedModel's; ``reason`` is why it was held back.
TFLITE_SUMMARY = os.path.join("assets.extra", "tflite.json")
# The distillation's teacher (what it was, where from), temperature and mixing weight.
TEACHER_FILE = os.path.join("assets.extra", "teacher.json")


def tflite_line(summary: dict) -> str:
    """``TFLite int8: accuracy …, … KB, … ms per image`` against the SavedModel, and why it
    was not pushed if it was not."""
    line = (f"TFLite {summary['mode']}: accuracy {summary['accuracy']:.4f} (SavedModel "
            f"{summary['saved_model_accuracy']:.4f}, agreement {summary['agreement']:.4f}), "
            f"{summary['kb']:g} KB (SavedModel weights {summary['saved_model_kb']:g} KB), "
            f"{summary['ms_per_image']:g} ms per image (SavedModel "
            f"{summary['saved_model_ms_per_image']:g} ms)")
    return line + (f"; not pushed: {summary['reason']}" if summary["reason"] else "")


def teacher_line(teacher: dict) -> str:
    """The distillation's teacher in words: which model, temperature and mixing weight."""
    if teacher["source"] == "served version":
        which = (f"served version {teacher['path']} ({teacher['backbone']}, width "
                 f"{teacher['width']})")
    else:
        which = (f"{teacher['backbone']} width {teacher['width']} trained in the run "
                 f"(validation accuracy {teacher['validation_accuracy']:.4f})")
    return f"{which}; temperature {teacher['temperature']:g}, labels' weight {teacher['alpha']:g}"
