"""TFX's v2 container entrypoint (``kubeflow_v2_run_executor``) as ``pipeline.kfp_entrypoint``
uses it: that command's one coupling to TFX internals.

TFX has no hook into how its entrypoint reads and writes artifacts. For the run of one
executor, ``run_executor`` swaps the two module functions TFX's ``_run_executor`` calls
(``kubeflow_v2_entrypoint_utils.parse_raw_artifact_dict`` and ``translate_executor_output``)
for wrappers that call them and then the given hooks, and puts them back after; ``parse_flags``
is TFX's private flag parser. tests/test_tfx_fences.py fails, naming the function, when the
installed TFX no longer has these functions, with these signatures, or no longer calls them so.
"""
from __future__ import annotations

import contextlib
from typing import Callable


def _tfx():
    from tfx.orchestration.kubeflow.v2.container import (kubeflow_v2_entrypoint_utils,
                                                         kubeflow_v2_run_executor)
    return kubeflow_v2_entrypoint_utils, kubeflow_v2_run_executor


@contextlib.contextmanager
def _hooked(on_parsed: Callable, on_translated: Callable):
    """TFX's artifact parsing and translation, followed by ``on_parsed(artifacts)`` and
    ``on_translated(result, outputs)``, for the duration of the block."""
    utils, _ = _tfx()
    parse, translate = utils.parse_raw_artifact_dict, utils.translate_executor_output

    def parsed(raw, name_from_id=None):
        artifacts = parse(raw, name_from_id)
        on_parsed(artifacts)
        return artifacts

    def translated(outputs, name_from_id):
        result = translate(outputs, name_from_id)
        on_translated(result, outputs)
        return result

    utils.parse_raw_artifact_dict, utils.translate_executor_output = parsed, translated
    try:
        yield
    finally:
        utils.parse_raw_artifact_dict, utils.translate_executor_output = parse, translate


def run_executor(args, beam_args: list[str], on_parsed: Callable[[dict], None],
                 on_translated: Callable[[dict, dict], None]) -> None:
    """Runs TFX's entrypoint (``kubeflow_v2_run_executor.main``) on parsed ``args``, calling
    ``on_parsed`` on every artifact dict it parses (inputs, outputs) and ``on_translated`` on
    the ExecutorOutput artifacts it writes (with the outputs they come from)."""
    _, entry = _tfx()
    with _hooked(on_parsed, on_translated):
        entry.main((args, beam_args))


def parse_flags(argv: list[str]):
    """TFX's entrypoint flags: ``(args, beam_args)`` (its private ``_parse_flags``)."""
    _, entry = _tfx()
    return entry._parse_flags(argv)  # pylint: disable=protected-access
