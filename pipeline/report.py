"""A self-contained HTML report of one run, built from MLMD and the run's artifacts.

Sections: the gate decision (its bounds and where they come from, which data chose the model
and which judged it) and the push; dataset (examples per split, the class balance of the fit,
validation and eval data with rare classes flagged, image feature statistics), data checks
(bad images, anomalies), schema, the Tuner's trials, the Trainer's budget, class weights,
tuned values and seconds per phase, training curves (the Trainer's TensorBoard logs),
precision, recall, F1 and support per class by name (candidate beside the served model), the
confusion matrix with names, and component durations. Charts are inline SVG: one file to open
or attach.
"""
from __future__ import annotations

import base64
import html
import json
import os
import time

from domain import registry
from domain.contracts import RunOutcome
from domain.features import SPLITS, TRAINER_SUMMARY, TUNER_RESULTS, ImageSpec
from domain.mlmd_queries import (executions_since, latest_artifact, metadata_store, run_outputs,
                                 seconds)
from domain.records import compression
from domain.exported import TFLITE_SUMMARY
from pipeline.config import PipelineConfig
from pipeline.outcome import class_recalls

CSS = """body{font:14px system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}
h1{font-size:22px}h2{font-size:17px;border-bottom:1px solid #ccc;padding-top:8px}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:right}th{background:#f4f4f4}.ok{color:#186a1b;font-weight:bold}
.bad{color:#a31515;font-weight:bold}svg text{font:11px sans-serif}
figure.thumb{display:inline-block;margin:4px;font-size:11px;text-align:center;width:110px}
figure.thumb img{width:96px;height:96px;image-rendering:pixelated;border:1px solid #ccc}"""
# The eval images the report predicts for its gallery, at most; the mistakes and the correct
# examples per class it shows.
GALLERY_EXAMPLES, GALLERY_MISTAKES, GALLERY_CORRECT = 2000, 24, 3


def _table(header: list, rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def line_chart(series: dict[str, list[float]], title: str, width=440, height=220) -> str:
    """An inline SVG line chart of equally spaced points (epochs)."""
    values = [v for points in series.values() for v in points]
    if not values:
        return f"<p>No {html.escape(title)} recorded.</p>"
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    longest = max(len(p) for p in series.values())
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="{title}">',
             f'<text x="40" y="14">{html.escape(title)}</text>',
             f'<text x="2" y="34">{high:.3g}</text><text x="2" y="{height - 24}">{low:.3g}'
             "</text>"]
    for index, (name, points) in enumerate(series.items()):
        xy = [(45 + i * (width - 60) / max(1, longest - 1),
               24 + (1 - (v - low) / span) * (height - 54)) for i, v in enumerate(points)]
        colour = colours[index % len(colours)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                     + " ".join(f"{x:.1f},{y:.1f}" for x, y in xy) + '"/>')
        parts.append(f'<text x="{50 + 110 * index}" y="{height - 6}" fill="{colour}">'
                     f"{html.escape(name)}</text>")
    return "".join(parts) + "</svg>"


def confusion_svg(matrix: dict[tuple[int, int], float], names: list[str], cell=34) -> str:
    """Actual (rows) x predicted (columns), shaded by the row's share."""
    n = len(names)
    size = 60 + cell * n
    parts = [f'<svg width="{size}" height="{size}" role="img" aria-label="confusion matrix">',
             '<text x="60" y="12">predicted</text>',
             f'<text x="2" y="{60 + cell * n / 2}">actual</text>']
    for i in range(n):
        total = sum(matrix.get((i, j), 0) for j in range(n)) or 1
        parts.append(f'<text x="{62 + cell * i}" y="26">{html.escape(names[i][:4])}</text>')
        parts.append(f'<text x="40" y="{50 + cell * i + cell / 2}">'
                     f'{html.escape(names[i][:4])}</text>')
        for j in range(n):
            count = matrix.get((i, j), 0)
            shade = int(255 - 200 * count / total)
            parts.append(f'<rect x="{60 + cell * j}" y="{34 + cell * i}" width="{cell}" '
                         f'height="{cell}" fill="rgb({shade},{shade},255)" stroke="#fff"/>')
            if count:
                parts.append(f'<text class="n" x="{64 + cell * j}" '
                             f'y="{34 + cell * i + cell / 2 + 4}">{count:g}</text>')
    return "".join(parts) + "</svg>"


class RunReport:
    """Collects one run's facts from MLMD; ``html()`` renders them."""

    def __init__(self, config: PipelineConfig, outcome: RunOutcome,
                 since_execution_id: int):
        self.config, self.outcome = config, outcome
        self.store = metadata_store(config.metadata_path)
        self.executions = executions_since(self.store, since_execution_id)
        self.outputs = run_outputs(self.store, since_execution_id)

    def latest(self, type_name: str, producer: str):
        """The run's artifact of that type and producer."""
        return latest_artifact(self.store, type_name, producer, self.outputs)

    def durations(self) -> list[list]:
        return [[name, "cached" if e.last_known_state == e.CACHED else
                 e.State.Name(e.last_known_state).lower(), f"{seconds(e):.1f}"]
                for name, e in self.executions]

    def dataset(self) -> str:
        import tensorflow_data_validation as tfdv
        statistics = self.latest("ExampleStatistics", "StatisticsGen")
        rows, features = [], []
        for split in SPLITS:
            path = os.path.join(statistics.uri, f"Split-{split}", "FeatureStats.pb")
            dataset = tfdv.load_stats_binary(path).datasets[0]
            rows.append([split, dataset.num_examples])
            for feature in dataset.features:
                name = feature.path.step[0]
                if feature.HasField("num_stats"):
                    s = feature.num_stats
                    features.append([split, name, f"{s.min:g}", f"{s.mean:.3g}", f"{s.max:g}"])
                elif feature.HasField("bytes_stats"):
                    s = feature.bytes_stats
                    features.append([split, f"{name} (bytes)", f"{s.min_num_bytes:g}",
                                     f"{s.avg_num_bytes:.3g}", f"{s.max_num_bytes:g}"])
                elif feature.HasField("string_stats"):
                    s = feature.string_stats
                    features.append([split, f"{name} (bytes, mean only)", "",
                                     f"{s.avg_length:.3g}", ""])
        return (_table(["split", "examples"], rows)
                + _table(["split", "feature", "min", "mean", "max"], features))

    def evaluation(self):
        return self.latest("ModelEvaluation", "Evaluator")

    def model_input(self) -> str:
        """The input size, channels and classes, where they came from, and hints
        (``pipeline.data_shape``)."""
        config = self.config
        lines = (self.outcome.input_choice or
                 f"Input {config.image_height}×{config.image_width}×{config.image_channels}, "
                 f"{config.num_classes} classes").splitlines()
        hint = '<p class="bad">'
        return "".join((hint if line.startswith("hint:") else "<p>") + html.escape(line)
                       + "</p>" for line in lines)

    def per_class(self, names: list[str]) -> str:
        """Precision, recall, F1 and support per class on the eval split: the candidate beside
        the served model (when one was compared)."""
        from components.gate import BASELINE, class_figures
        models = {"candidate": self.confusion()}
        baseline = self.confusion(BASELINE)
        if baseline:
            models["served"] = baseline
        header, rows = ["class", "support"], []
        for model in models:
            header += [f"{model} {m}" for m in ("precision", "recall", "F1")]
        for i, name in enumerate(names):
            row = [name, f"{sum(models['candidate'].get((i, j), 0) for j in range(len(names))):g}"]
            for matrix in models.values():
                row += [_ratio(v) for v in class_figures(matrix, i, len(names))]
            rows.append(row)
        return _table(header, rows)

    def confusion(self, model: str = "") -> dict[tuple[int, int], float]:
        """The confusion matrix of the candidate (or ``model``)."""
        from components.gate import CANDIDATE, confusion_matrix
        return confusion_matrix(self.evaluation().uri, model or CANDIDATE)

    def summary(self) -> dict:
        """The Trainer's ``TRAINER_SUMMARY`` (empty when absent)."""
        from tfx.dsl.io import fileio
        from tfx.utils import io_utils
        run = self.latest("ModelRun", "Trainer")
        path = os.path.join(run.uri, TRAINER_SUMMARY) if run else ""
        return json.loads(io_utils.read_string_file(path)) if path and fileio.exists(path) else {}

    def balance(self, names: list[str]) -> str:
        """Examples per class of the fit and validation parts of the train split and of the
        eval split; classes under ``RARE_SHARE`` of an even share of the fit data flagged."""
        counts = self.summary().get("class_counts", {})
        matrix = self.confusion()
        parts = {"fit": counts.get("fit"), "validation": counts.get("validation"),
                 "eval": [sum(matrix.get((i, j), 0) for j in range(len(names)))
                          for i in range(len(names))] if matrix else None}
        parts = {k: v for k, v in parts.items() if v}
        if not parts:
            return ""
        rare = rare_classes(parts.get("fit") or next(iter(parts.values())))
        rows = [[name + (" (rare)" if i in rare else "")]
                + [f"{v[i]:g} ({v[i] / max(sum(v), 1):.1%})" for v in parts.values()]
                for i, name in enumerate(names)]
        flag = (f'<p class="bad">Rare classes (under {RARE_SHARE:.0%} of an even share of the '
                f"training data): {html.escape(', '.join(names[i] for i in rare))}. Read their "
                "recall below, not the overall accuracy.</p>") if rare else ""
        return flag + _table(["class"] + list(parts), rows)

    def budget(self) -> str:
        """The Trainer's step budget and what it used, why it stopped, its time to accuracy,
        class weights, tuned values and seconds per phase."""
        summary = self.summary()
        if not summary:
            return ""
        weights = summary.get("class_weight")
        reached = summary.get("time_to_accuracy")
        rows = [["training examples", summary["train_examples"]],
                ["global batch", summary["batch_size"]],
                ["steps run (budget)", f"{summary.get('steps_run', summary['train_steps'])} "
                                       f"({summary['train_steps']})"],
                ["validation rounds run", summary["rounds_run"]],
                ["stopped at", summary.get("stopped", "budget")],
                ["seconds to within 0.5 points of the final validation accuracy",
                 "-" if reached is None else f"{reached:.1f}"],
                ["class weights in the loss", ", ".join(f"{w:.3g}" for w in weights)
                 if weights else "none"]]
        rows += [[f"tuned {name}", f"{value:.4g}"] for name, value in summary["tuned"].items()]
        rows += [[f"seconds: {phase}", f"{seconds:.1f}"]
                 for phase, seconds in summary["seconds"].items()]
        return _table(["", ""], rows)

    def tflite(self) -> str:
        """The TFLite model's figures against the SavedModel's on the eval split, its recall
        per class, and whether it goes with the push (empty without ``--tflite``)."""
        from pipeline.outcome import trained_file
        lite = trained_file(self.latest("Model", "Trainer"), TFLITE_SUMMARY)
        if not lite:
            return "<p>off (<code>--tflite float16|dynamic_int8|int8</code>)</p>"
        rows = [["mode (input, output)", f"{lite['mode']} ({lite['input_type']}, "
                                         f"{lite['output_type']})", ""],
                ["eval images", lite["images"], lite["images"]],
                ["accuracy", f"{lite['accuracy']:.4f}", f"{lite['saved_model_accuracy']:.4f}"],
                ["drop (gate: <= max_tflite_drop)", f"{lite['drop']:.4f}",
                 f"<= {lite['max_drop']:g}"],
                ["agreement with the SavedModel", f"{lite['agreement']:.4f}", ""],
                ["size KB (SavedModel: its weights)", f"{lite['kb']:g}",
                 f"{lite['saved_model_kb']:g}"],
                ["ms per image (1 image, decoded pixels in)", f"{lite['ms_per_image']:g}",
                 f"{lite['saved_model_ms_per_image']:g}"]]
        rows += [[f"recall: {name}", f"{recall:.4f}", ""]
                 for name, recall in lite["class_recall"].items()]
        verdict = (f'<p class="bad">Not pushed: {html.escape(lite["reason"])}</p>'
                   if lite["reason"] else "<p>Pushed with the SavedModel (if it was).</p>")
        return _table(["", "TFLite", "SavedModel"], rows) + verdict

    def tuning(self) -> str:
        """The Tuner's trials, best first (empty when no Tuner ran in this run)."""
        from tfx.utils import io_utils
        if not any(name == "Tuner" for name, _ in self.executions):
            return "<p>off (<code>--tune true</code> searches learning rate, width, dropout)</p>"
        results = self.latest("TunerResults", "Tuner")
        trials = json.loads(io_utils.read_string_file(os.path.join(results.uri, TUNER_RESULTS)))
        names = [k for k in (trials[0] if trials else {}) if k not in ("trial_id", "score")]
        return _table(["trial", "val_accuracy"] + names, [
            [t["trial_id"], f"{t['score']:.4f}"] + [f"{t[n]:.4g}" for n in names]
            for t in trials])

    def curves(self) -> str:
        from tfx.dsl.io import fileio
        trainer = self.latest("ModelRun", "Trainer")
        charts = []
        for tag in ("epoch_loss", "epoch_accuracy"):
            series = {}
            for phase in ("train", "validation"):
                series[phase] = _scalars(
                    fileio.glob(os.path.join(trainer.uri, phase, "events*")), tag)
            charts.append(line_chart(series, tag.replace("epoch_", "")))
        return "".join(charts)

    def schema(self) -> str:
        import tensorflow_data_validation as tfdv
        from tensorflow_metadata.proto.v0 import schema_pb2
        artifact = self.latest("Schema", "")  # SchemaGen or ImportSchemaGen
        schema = tfdv.load_schema_text(os.path.join(artifact.uri, "schema.pbtxt"))
        rows = []
        for f in schema.feature:
            domain = ""
            if f.HasField("int_domain"):
                domain = f"[{f.int_domain.min}, {f.int_domain.max}]"
            rows.append([f.name, schema_pb2.FeatureType.Name(f.type),
                         f"{f.presence.min_fraction:g}", domain])
        return _table(["feature", "type", "min presence", "domain"], rows)

    def checks(self) -> str:
        from tfx.dsl.io import fileio
        from tfx.utils import io_utils
        validated = self.latest("Examples", "ImageValidator")
        bad = []
        for report in fileio.glob(os.path.join(validated.uri, "bad_images-*.json")):
            bad += json.loads(io_utils.read_string_file(report))["bad"]
        from components.anomaly_gate import read_anomalies
        artifact = self.latest("ExampleAnomalies", "ExampleValidator")
        anomalies = read_anomalies(artifact.uri,
                                   json.loads(artifact.properties["split_names"].string_value))
        return (f"<p>Undecodable images dropped: {len(bad)}</p>"
                + (_table(["split", "file", "index", "record", "error"],
                          [[b["split"], b["file"], b.get("index", ""), b["record"], b["error"]]
                           for b in bad[:50]])
                   if bad else "")
                + f"<p>Schema anomalies: {len(anomalies)}</p>"
                + (_table(["split", "feature", "type", "description"],
                          [list(a.values()) for a in anomalies]) if anomalies else ""))

    def gate(self) -> str:
        from components.standard import ACCURACY_BOUND, BOUND_REASON
        o, c = self.outcome, self.config
        verdict = '<span class="ok">BLESSED</span>' if o.blessed else \
            '<span class="bad">NOT BLESSED</span>'
        evaluation = self.evaluation()
        bound, reason = c.min_accuracy, "min_accuracy"
        if evaluation is not None and ACCURACY_BOUND in evaluation.custom_properties:
            bound = evaluation.custom_properties[ACCURACY_BOUND].double_value
            reason = evaluation.custom_properties[BOUND_REASON].string_value
        rows = [["accuracy (eval split)", f"{o.accuracy:.4f}", f">= {bound:.4g} ({reason})"]]
        if o.baseline_accuracy is None:
            rows.append(["baseline", "none (nothing served yet)", "absolute bound only"])
        else:
            rows.append([f"baseline accuracy (served version {o.baseline_version})",
                         f"{o.baseline_accuracy:.4f}",
                         f"candidate >= baseline - {c.max_regression}" if c.max_regression
                         else "candidate >= baseline (no regression)"])
        recalls = class_recalls(evaluation.uri) if evaluation is not None else {}
        under = [n for n, r in recalls.items() if r < c.min_class_recall]
        rows.append(["lowest class recall (eval split)",
                     f"{o.weakest_recall:.4f} ({o.weakest_class})" if o.weakest_class
                     else "n/a",
                     f">= {c.min_class_recall}" if c.min_class_recall
                     else "off (--min-class-recall)"])
        if under:
            rows.append(["classes under the recall bound", ", ".join(under), ""])
        summary = self.summary() if evaluation is not None else {}
        validation = sum(summary.get("class_counts", {}).get("validation", []))
        chose = (f"the validation part of the train split: {validation} images "
                 f"({summary.get('validation_percent')}% by content hash), for early stopping"
                 " and the Tuner" if validation else "the train split")
        selection = (f"<p>Chose the model: {html.escape(chose)}. Judged it: the eval split "
                     "(read by the Evaluator only).</p>")
        push = (f"Pushed version {o.pushed_version}: {html.escape(o.pushed_path)}"
                if o.pushed else f"Nothing pushed: {html.escape(str(o.reason))}")
        versions = registry.versions(c.push_dir)
        return (f"<p>Gate: {verdict}</p>" + _table(["check", "value", "threshold"], rows)
                + selection
                + f"<p>{push}. Versions now in {html.escape(c.push_dir)}: "
                  f"{versions or 'none'} (highest is served).</p>")

    def gallery(self, names: list[str]) -> str:
        """The candidate's mistakes on the eval split as thumbnails, the most confident first
        (true class, predicted class, probability), and a few correct examples per class."""
        from tfx.utils import path_utils
        model, examples = self.latest("Model", "Trainer"), self.latest("Examples",
                                                                       "ImageValidator")
        spec = ImageSpec.from_custom_config(self.config.trainer_config())
        if model is None or examples is None:
            return "<p>No trained model in this run.</p>"
        if spec.image_format != "encoded":
            return "<p>Thumbnails are shown for encoded images only.</p>"
        serialized, probabilities, labels = eval_predictions(
            path_utils.serving_model_path(model.uri), examples.uri)
        predicted = probabilities.argmax(axis=1)
        confidence = probabilities.max(axis=1)
        wrong = [i for i in sorted(range(len(labels)), key=lambda i: -confidence[i])
                 if predicted[i] != labels[i]]
        right = [i for c in range(len(names))
                 for i in [i for i in range(len(labels)) if labels[i] == predicted[i] == c][
                     :GALLERY_CORRECT]]
        shown = wrong[:GALLERY_MISTAKES]
        pictures = thumbnails([serialized[i] for i in shown + right], spec)

        def figure(i: int, picture: str) -> str:
            caption = (f"true {names[labels[i]]}<br>predicted {names[predicted[i]]} "
                       f"{confidence[i]:.2f}" if labels[i] != predicted[i] else
                       f"{names[labels[i]]} {confidence[i]:.2f}")
            return (f'<figure class="thumb"><img alt="{html.escape(names[labels[i]])}" '
                    f'src="data:image/png;base64,{picture}"><figcaption>'
                    f"{caption}</figcaption></figure>")

        scope = f"the first {len(labels)}" if len(labels) >= GALLERY_EXAMPLES else len(labels)
        return (f"<p>{len(wrong)} mistakes among {scope} eval images; the {len(shown)} most "
                "confident:</p>"
                + "".join(figure(i, p) for i, p in zip(shown, pictures))
                + "<p>Correct examples per class:</p>"
                + "".join(figure(i, p) for i, p in zip(right, pictures[len(shown):])))

    def html(self) -> str:
        names = self.summary().get("class_names") or _class_names(self.config)
        sections = [
            ("Decision", self.gate()),
            ("Model input", self.model_input()),
            ("Dataset", self.dataset() + self.balance(names)),
            ("Data checks", self.checks()),
            ("Schema", self.schema()),
            ("Tuning", self.tuning()),
            ("Training", self.budget() + self.curves()),
            ("TFLite model (eval split)", self.tflite()),
            ("Metrics per class (eval split)", self.per_class(names)),
            ("Confusion matrix (eval split)", confusion_svg(self.confusion(), names)),
            ("Errors you can see (eval split)", self.gallery(names)),
            ("Components", _table(["component", "state", "seconds"], self.durations())),
        ]
        body = "".join(f"<h2>{title}</h2>{content}" for title, content in sections)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>"
                f"{html.escape(self.config.pipeline_name)} run report</title><style>{CSS}"
                f"</style></head><body><h1>{html.escape(self.config.pipeline_name)}: run of "
                f"{stamp}</h1>{body}</body></html>")


# A class is rare under this fraction of an even share (1 / classes) of the training data.
RARE_SHARE = 0.5


def rare_classes(counts: list[float]) -> list[int]:
    """The ids of the classes under ``RARE_SHARE`` of an even share of ``counts``."""
    total = sum(counts)
    return [i for i, n in enumerate(counts) if total and n / total < RARE_SHARE / len(counts)]


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def eval_predictions(model_dir: str, examples_uri: str, limit: int = GALLERY_EXAMPLES):
    """``(serialized examples, probabilities, label ids)`` of the first ``limit`` examples of
    the eval split, from the exported model's own signatures (labels mapped as in training)."""
    import numpy as np
    import tensorflow as tf
    from tfx.dsl.io import fileio

    from modules.classify import SavedClassifier
    model = SavedClassifier(model_dir)
    files = sorted(fileio.glob(os.path.join(examples_uri, "Split-eval", "*")))
    serialized, probabilities, labels = [], [], []
    for batch in tf.data.TFRecordDataset(files, compression_type=compression(files[0]) if files
                                         else "").take(limit).batch(256):
        serialized += batch.numpy().tolist()
        probabilities.append(model.examples(batch))
        labels.append(model.label_ids(batch))
    if not serialized:
        return [], np.zeros((0, 1)), np.zeros(0, int)
    return serialized, np.concatenate(probabilities), np.concatenate(labels)


def thumbnails(serialized: list[bytes], spec: ImageSpec) -> list[str]:
    """Base64 PNGs of the examples' images as the model sees them (decoded, resized)."""
    import tensorflow as tf
    from modules.preprocessing import decode_images
    if not serialized:
        return []
    images = tf.io.parse_example(tf.constant(serialized), {
        spec.image_key: tf.io.FixedLenFeature([], tf.string)})[spec.image_key]
    pixels = tf.image.convert_image_dtype(decode_images(images, spec), tf.uint8, saturate=True)
    return [base64.b64encode(tf.io.encode_png(p).numpy()).decode() for p in pixels]


def _class_names(config: PipelineConfig) -> list[str]:
    return list(config.class_names) or [str(i) for i in range(config.num_classes)]


def _scalars(files: list[str], tag: str) -> list[float]:
    import tensorflow as tf
    values = []
    for path in sorted(files):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    values.append(float(tf.make_ndarray(value.tensor)) if value.HasField(
                        "tensor") else value.simple_value)
    return values


def write_report(config: PipelineConfig, outcome: RunOutcome,
                 since_execution_id: int) -> str:
    """Writes ``<pipeline root>/reports/run-<time>.html`` (under the work dir when the root
    is an object store: a report is opened locally); returns its path."""
    return _write(config, RunReport(config, outcome, since_execution_id).html())


def write_rerun_report(config: PipelineConfig, replayed_report: str, note: str) -> str:
    """Writes the report of an identical rerun (``pipeline.rerun``): ``note`` above the report
    of the run it replays; returns its path."""
    with open(replayed_report, encoding="utf-8") as f:
        text = f.read()
    return _write(config, text.replace("<body>", f'<body><p class="ok">{html.escape(note)}</p>',
                                       1))


def _write(config: PipelineConfig, text: str) -> str:
    """Writes a new ``run-<time>[-N].html`` (never over an earlier report)."""
    folder = os.path.join(config.local_root, "reports")
    os.makedirs(folder, exist_ok=True)
    stem, number = time.strftime("run-%Y%m%dT%H%M%S", time.gmtime()), 1
    path = os.path.join(folder, f"{stem}.html")
    while os.path.exists(path):
        number += 1
        path = os.path.join(folder, f"{stem}-{number}.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path
