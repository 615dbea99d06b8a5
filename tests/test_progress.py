"""Progress lines from a real LocalDagRunner: a TFX that stops logging the records progress.py
reads fails here, not silently in a user's run. A cache hit is read from MLMD. (No
``from __future__ import annotations``: TFX reads the components' type hints.)"""

import io
import os
import re

from tfx import v1 as tfx

from pipeline.config import PipelineConfig
from pipeline.progress import readable_run

Model = tfx.types.standard_artifacts.Model  # a folder artifact


@tfx.dsl.components.component
def Produce(value: tfx.dsl.components.OutputArtifact[Model]):
    with open(os.path.join(value.uri, "value"), "w") as f:
        f.write("42")


@tfx.dsl.components.component
def Consume(value: tfx.dsl.components.InputArtifact[Model]):
    with open(os.path.join(value.uri, "value")) as f:
        assert f.read() == "42"


def _run(config: PipelineConfig) -> list[str]:
    produce = Produce()
    pipeline = tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name, pipeline_root=config.pipeline_root,
        components=[produce, Consume(value=produce.outputs["value"])], enable_cache=True,
        metadata_connection_config=tfx.orchestration.metadata
        .sqlite_metadata_connection_config(config.metadata_path))
    out = io.StringIO()
    with readable_run(config, out):
        tfx.orchestration.LocalDagRunner().run(pipeline)
    return out.getvalue().splitlines()


def _lines(lines: list[str]) -> list[tuple]:
    """(component, what follows its duration) of each progress line."""
    return [re.fullmatch(r"  (\w+) +\d+\.\d s(.*)", line).groups() for line in lines]


def test_a_line_per_component_then_cache_hits(tmp_path):
    config = PipelineConfig(work_dir=str(tmp_path))
    os.makedirs(os.path.dirname(config.metadata_path))
    first = _run(config)
    assert first[0].startswith("Run log (the libraries' messages): ")
    assert _lines(first[1:]) == [("Produce", ""), ("Consume", "")]
    assert _lines(_run(config)[1:]) == [("Produce", "  cache hit"), ("Consume", "  cache hit")]


def test_a_run_without_component_lines_says_so(tmp_path):
    out = io.StringIO()
    with readable_run(PipelineConfig(work_dir=str(tmp_path)), out):
        pass
    assert "No progress lines: TFX no longer logs 'Component %s is running.'" in out.getvalue()
