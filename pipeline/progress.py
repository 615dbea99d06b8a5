"""A readable local run: one line per component as it starts and ends (duration, key figure,
or cache hit), the Trainer's validation rounds, a live elapsed time on a terminal; the
libraries' logs (absl, TensorFlow, Beam, warnings) go to a log file in the run's folder.

A component's start and end are the two log records LocalDagRunner emits around each node
(``STARTED``, ``FINISHED``: TFX has no public hook for them); whether it was a cache hit and
its key figure come from its execution in MLMD. tests/test_progress.py runs a real
LocalDagRunner, so a TFX that words those records differently fails it, and a run that ends
without a single component line says so instead of printing nothing.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time

from domain.features import ACCURACY_DELTA, EPOCH_LOG, SPLITS
from pipeline.config import PipelineConfig

# LocalDagRunner's log formats around each node (tfx/orchestration/local/local_dag_runner.py).
STARTED, FINISHED = "Component %s is running.", "Component %s is finished."


def _summary(config: PipelineConfig, component: str) -> str:
    """``cache hit``, or the key figure of the component's newest execution (from MLMD)."""
    from ml_metadata.proto import metadata_store_pb2

    from domain.mlmd_queries import latest_execution
    from domain.mlmd_queries import metadata_store
    store = metadata_store(config.metadata_path)
    execution = latest_execution(store, config.pipeline_name, component)
    if execution is None:
        return ""
    if execution.last_known_state == metadata_store_pb2.Execution.CACHED:
        return "cache hit"
    return _figure(store, component, execution.id)


def _figure(store, component: str, execution_id: int) -> str:
    """The key figure of a finished execution, read from its output artifacts."""
    from ml_metadata.proto import metadata_store_pb2

    from domain.contracts import PushResult
    from components.gate import overall_metric
    from components.live_inputs import SERVED_VERSION
    events = store.get_events_by_execution_ids([execution_id])
    outputs = {a.type_id: a for a in store.get_artifacts_by_id(
        [e.artifact_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT])}
    by_type = {t.name: outputs[t.id] for t in store.get_artifact_types() if t.id in outputs}
    if component == "ImageValidator":
        return _decoded(by_type["Examples"].uri)
    if component == "ServedModel":
        version = by_type["Model"].custom_properties[SERVED_VERSION].int_value
        return f"served version {version}" if version else "nothing served yet"
    if component == "Evaluator":
        blessed = by_type["ModelBlessing"].custom_properties["blessed"].int_value
        return (f"accuracy {overall_metric(by_type['ModelEvaluation'].uri):.4f}, "
                f"{'BLESSED' if blessed else 'NOT blessed'}")
    if component == "VersionedPusher":
        push = PushResult.read(by_type["PushedModel"].custom_properties)
        return f"pushed version {push.version}" if push.pushed else f"not pushed: {push.reason}"
    if component == "AnomalyGate":
        return "no blocking anomalies"
    if component == "Trainer":
        return _trained(by_type["ModelRun"].uri)
    return ""


def _json(uri: str, name: str):
    """A JSON file in an artifact (any filesystem TFX reads)."""
    import json

    from tfx.utils import io_utils
    return json.loads(io_utils.read_string_file(os.path.join(uri, name)))


def _trained(uri: str) -> str:
    """The Trainer's validation accuracy, steps run and time to accuracy (its summary)."""
    from domain.features import TRAINER_SUMMARY
    summary = _json(uri, TRAINER_SUMMARY)
    reached = summary["time_to_accuracy"]
    return (f"validation accuracy {summary['validation_metrics']['accuracy']:.4f} after "
            f"{summary['steps_run']} of {summary['train_steps']} steps ({summary['stopped']})"
            + (f", within {ACCURACY_DELTA * 100:g} points of it after {reached:.0f} s"
               if reached is not None else ""))


def _decoded(uri: str) -> str:
    from components.image_validator import REPORT
    counts = []
    for split in SPLITS:
        report = _json(uri, REPORT.format(split=split))
        counts.append(f"{report['valid']:,} {split}" + (f" ({len(report['bad'])} bad dropped)"
                                                         if report["bad"] else ""))
    return " + ".join(counts) + " images"


class Progress(logging.Handler):
    """Prints the run's progress to ``out`` from the orchestrator's log records."""

    def __init__(self, config: PipelineConfig, out):
        super().__init__(logging.INFO)
        self._config, self._out = config, out
        self._live = out.isatty()
        self._component, self._started = "", 0.0
        self._rounds: tuple = ()  # the Trainer's last EPOCH_LOG arguments
        self.components = 0  # components seen starting
        self._lock = threading.Lock()
        self._ticker = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._handle(record.msg, record.args or ())
        except Exception:  # noqa: BLE001 - progress must never break a run
            self.handleError(record)

    def _handle(self, message: str, args: tuple) -> None:
        if message == STARTED:
            self._component, self._started, self._rounds = args[0], time.monotonic(), ()
            self.components += 1
            self._tick()
        elif message == EPOCH_LOG:  # shown when validation accuracy gains more than noise
            best = self._rounds[-1] if self._rounds else -1.0
            if args[-1] > best + ACCURACY_DELTA:
                self._rounds, text = args, EPOCH_LOG % args
                self._line(f"    {self._component} {text[0].lower()}{text[1:]}")
        elif message == FINISHED and args[0] == self._component:
            self.stop()
            took = time.monotonic() - self._started
            figure = _summary(self._config, self._component)
            self._line(f"  {self._component:<18} {took:6.1f} s" + (f"  {figure}" if figure
                                                                  else ""))

    def stop(self) -> None:
        """Ends the live elapsed time."""
        self._ticker.set()

    def _line(self, text: str) -> None:
        with self._lock:
            self._out.write(("\r\033[K" if self._live else "") + text + "\n")
            self._out.flush()

    def _tick(self) -> None:
        """On a terminal: the running component's elapsed time, every second."""
        if not self._live:
            return
        self._ticker = stop = threading.Event()
        name, started = self._component, self._started

        def tick():
            while True:
                with self._lock:
                    if stop.is_set():
                        return
                    self._out.write(f"\r\033[K  {name:<18} {time.monotonic() - started:6.0f} s"
                                    " ...")
                    self._out.flush()
                if stop.wait(1.0):
                    return
        threading.Thread(target=tick, daemon=True).start()


@contextlib.contextmanager
def readable_run(config: PipelineConfig, out=None):
    """Within: progress lines on ``out`` (stdout) and everything written to stderr (file
    descriptor 2, so TensorFlow's C++ logs and Beam's workers too) in a log file under the
    pipeline root (the work dir for an object-store root). ``--verbose``: every log on
    stderr, at INFO level. A run that ends without one component line says why."""
    import absl.logging
    if config.verbose:
        absl.logging.set_verbosity(absl.logging.INFO)
        yield None
        return
    out = out or sys.stdout
    log_dir = os.path.join(config.local_root, "logs")
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, time.strftime("run-%Y%m%dT%H%M%S.log"))
    out.write(f"Run log (the libraries' messages): {path}\n")
    out.flush()
    progress = Progress(config, out)
    root, level = logging.getLogger(), absl.logging.get_verbosity()
    absl_handler = absl.logging.get_absl_handler()
    attached = absl_handler in root.handlers
    stderr = sys.stderr
    stderr.flush()
    saved = os.dup(2)
    with open(path, "a", buffering=1) as log:
        to_file = logging.StreamHandler(log)
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        os.dup2(log.fileno(), 2)
        sys.stderr = log
        if attached:
            root.removeHandler(absl_handler)
        root.addHandler(to_file)
        absl.logging.set_verbosity(absl.logging.INFO)
        logging.getLogger("absl").addHandler(progress)
        try:
            yield path
        finally:
            progress.stop()
            logging.getLogger("absl").removeHandler(progress)
            absl.logging.set_verbosity(level)
            root.removeHandler(to_file)
            if attached:
                root.addHandler(absl_handler)
            sys.stderr = stderr
            os.dup2(saved, 2)
            os.close(saved)
    if not progress.components:  # the run ended normally, yet no component was seen starting
        out.write(f"No progress lines: TFX no longer logs {STARTED!r} around each component "
                  "(pipeline/progress.py relies on it); the run's log has the details.\n")
        out.flush()
