"""The model card the gateway serves at ``/model-card``: for each served label (stable,
canary), the version's classes, its per-class figures on the eval split (the candidate's,
beside the model it was compared with), the data spans and fingerprint it was trained and
judged on, when it was pushed, and where its run report is.

Read from the serving dir's push records (``domain.registry``), the version's own
``assets.extra/training.json`` (and ``tflite.json``: its TFLite model's measured figures)
and the figures the Evaluator wrote beside its evaluation
(``components.gate.CLASS_METRICS``); the run report is served at
``/model-card/report/<label>`` (found from the push record, never from the request's path).
Pure files and HTML: no TensorFlow in the gateway.
"""
from __future__ import annotations

import glob
import html
import json
import os
import time

from domain import registry
from domain.contracts import BASELINE, CANDIDATE, CLASS_METRICS
from domain.features import TRAINING_FILE
from domain.exported import TEACHER_FILE, TFLITE_SUMMARY, teacher_line, tflite_line

CSS = """body{font:14px system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:right}th{background:#f4f4f4}"""


def _json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_report(record: dict) -> str | None:
    """The run report of the run that pushed ``record``: the first one written under its
    pipeline root (``<root>/Evaluator/evaluation/<id>``) at or after the push (local roots)."""
    root = record.get("evaluation_uri", "").rsplit(f"{os.sep}Evaluator{os.sep}", 1)[0]
    pushed = record.get("time", "").replace("-", "").replace(":", "").rstrip("Z")
    reports = sorted(glob.glob(os.path.join(root, "reports", "run-*.html"))) if root else []
    return next((r for r in reports if os.path.basename(r)[4:19] >= pushed), None)


def _figures(metrics: dict) -> str:
    models = [m for m in (CANDIDATE, BASELINE) if metrics.get(m)]
    if not models:
        return "<p>Per-class figures: not recorded for this version.</p>"
    header = ["class", "support"] + [f"{'this version' if m == CANDIDATE else 'compared with'} "
                                     f"{f}" for m in models for f in ("precision", "recall",
                                                                        "F1")]
    rows = []
    for i, row in enumerate(metrics[CANDIDATE]):
        cells = [row["class"], f"{row['support']:g}"]
        for m in models:
            cells += ["n/a" if metrics[m][i][f] is None else f"{metrics[m][i][f]:.3f}"
                      for f in ("precision", "recall", "f1")]
        rows.append(cells)
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                      for r in rows) + "</table>")


def version_card(push_dir: str, label: str, version: int, record: dict | None) -> str:
    """One served version's section."""
    title = f"<h2>{html.escape(label)}: version {version}</h2>"
    if record is None:
        return title + "<p>No push record for this version.</p>"
    training = _json(os.path.join(push_dir, str(version), TRAINING_FILE)) or {}
    metrics = _json(os.path.join(record.get("evaluation_uri", ""), CLASS_METRICS)) or {}
    report = run_report(record)
    tflite = _json(os.path.join(push_dir, str(version), TFLITE_SUMMARY))
    teacher = _json(os.path.join(push_dir, str(version), TEACHER_FILE))
    facts = [
        ("classes", ", ".join(training.get("class_names", [])) or "not recorded"),
        ("input", "×".join(str(training[k]) for k in ("image_height", "image_width",
                                                       "image_channels"))
         + " pixels" if "image_height" in training else "not recorded"),
        ("accuracy on the eval split", f"{record['accuracy']:.4f}"
         if record.get("accuracy") is not None else "n/a"),
        ("compared with", f"version {record['baseline_version']}"
         if record.get("baseline_version") else "nothing (first version)"),
        ("data spans", ", ".join(map(str, record.get("spans") or [])) or "one dataset"),
        ("data fingerprint", record.get("data_fingerprint") or "n/a"),
        ("pushed", record.get("time", "n/a")),
        ("TFLite (assets.extra/model.tflite)", tflite_line(tflite) if tflite else "none"),
        ("distilled from", teacher_line(teacher) if teacher else "no teacher"),
    ]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in facts)
    rows += ("<tr><th>run report</th><td>" + (
        f"<a href='/model-card/report/{html.escape(label)}'>{html.escape(report)}</a>"
        if report else "not found") + "</td></tr>")
    return title + f"<table>{rows}</table>" + _figures(metrics)


def report_of(push_dir: str, version: int) -> str | None:
    """The run report (HTML) of the run that pushed ``version``, None when not found."""
    record = registry.manifest_entry(push_dir, version)
    record = record if record and record.get("action", "push") == "push" else None
    path = run_report(record) if record else None
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        return f.read()


def model_card(push_dir: str, versions: dict[str, int]) -> str:
    """The model card of ``versions`` (``{label: version}``, as the router serves them)."""
    records = {e["version"]: e for e in registry.read_manifest(push_dir)
               if e.get("action", "push") == "push"}
    name = os.path.basename(os.path.normpath(push_dir))
    sections = "".join(version_card(push_dir, label, version, records.get(version))
                       for label, version in versions.items()) or "<p>Nothing is served.</p>"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(name)} "
            f"model card</title><style>{CSS}</style></head><body><h1>{html.escape(name)}: "
            f"model card</h1><p>As served at {stamp}. <a href='/'>Try it</a>.</p>{sections}"
            "</body></html>")
