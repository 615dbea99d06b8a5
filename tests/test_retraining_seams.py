"""The seams of the retraining loop that need no training: the span the preflight checks,
the class map against the served version's, and cache keys that follow the components' code.
"""
from __future__ import annotations

import json
import os
import shutil

import pytest
import tensorflow as tf

from domain import class_map, registry
from modules import provenance
from pipeline import preflight
from pipeline.config import PipelineConfig
from domain.records import write_splits


def _example(label: int) -> bytes:
    return tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"\x89PNG"])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}),
    ).SerializeToString()


def _span(root, span: int, good: bool = True) -> None:
    target = os.path.join(root, f"span-{span}")
    if good:
        write_splits(target, [(s, _example(1)) for s in ("train", "eval")])
        return
    for split in ("train", "eval"):
        os.makedirs(os.path.join(target, split))
        with open(os.path.join(target, split, "data.tfrecord"), "wb") as f:
            f.write(b"not a tfrecord at all")


def _config(root, *extra: str) -> PipelineConfig:
    return PipelineConfig.from_args(["--data-root", str(root), "--spans", "true",
                                     "--work-dir", str(root) + "-work", *extra], environ={})


def test_the_preflight_checks_the_span_the_run_reads_in_numeric_order(tmp_path):
    """span-10 is the latest (not span-2, as a lexical glob has it); ``--span`` picks one."""
    root = tmp_path / "data"
    _span(root, 2)
    _span(root, 10, good=False)
    with pytest.raises(preflight.UserError, match=r"span-10/train/data.tfrecord is not a "
                                                  "readable TFRecord"):
        preflight.check_data(_config(root))
    preflight.check_data(_config(root, "--span", "2"))  # the old good span alone: fine
    shutil.rmtree(root / "span-10")
    _span(root, 10)
    shutil.rmtree(root / "span-2")
    _span(root, 2, good=False)  # a broken old span no longer blocks the runs of the new one
    preflight.check_data(_config(root))
    with pytest.raises(preflight.UserError, match="--span 7: data root"):
        preflight.check_data(_config(root, "--span", "7"))


def _serve(tmp_path, classes: list[str]) -> None:
    """Publishes a version trained on ``classes`` where ``_config`` serves."""
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "saved_model.pb").write_text("graph")
    registry.publish(str(model), _config(tmp_path / "data").push_dir,
                        {"action": "push", "class_names": classes}, keep=5)


@pytest.mark.parametrize("served, extra, message", [
    (["cat", "dog", "ant"], [], None),
    (["cat", "dog"], [], "classes served version 1 does not know: ant"),
    (["cat", "dog"], ["--allow-new-classes", "true"], None),
    (["cat", "ant", "dog"], [], "id 1: 'ant' served, 'dog' in the data; id 2: 'dog' served, "
                                "'ant' in the data"),
    (["cat", "dog", "ant", "bee"], [], "lacks classes of served version 1: bee"),
])
def test_a_class_map_that_disagrees_with_the_served_model_stops_the_run(tmp_path, served,
                                                                        extra, message):
    _span(tmp_path / "data", 1)
    class_map.write(str(tmp_path / "data"), ["cat", "dog", "ant"])
    _serve(tmp_path, served)
    config = _config(tmp_path / "data", "--num-classes", "3", *extra)
    if message is None:
        preflight.check_class_map(config)
        return
    with pytest.raises(preflight.UserError, match=message.replace("(", r"\(")):
        preflight.check_class_map(config)


def test_the_class_map_must_match_the_run_options_and_names_the_model_outputs(tmp_path):
    _span(tmp_path / "data", 1)
    class_map.write(str(tmp_path / "data"), ["cat", "dog", "ant"])
    with pytest.raises(preflight.UserError, match=r"has 3 classes \(cat, dog, ant\) but the run "
                                                  "is set for --num-classes 10"):
        preflight.check_class_map(_config(tmp_path / "data", "--num-classes", "10"))
    config = _config(tmp_path / "data", "--num-classes", "3")
    assert config.trainer_config()["class_names"] == ["cat", "dog", "ant"]


def test_editing_a_components_code_changes_its_cache_key_and_the_definition(tmp_path,
                                                                            monkeypatch):
    """A copy of the project's code: editing ``domain/registry.py`` changes the hash of the
    pusher that imports it and the run's ``definition_sha256``, not the ImageValidator's."""
    from pipeline import config as config_module
    root = tmp_path / "code"
    for package in provenance.PACKAGES:
        shutil.copytree(os.path.join(os.path.dirname(provenance.MODULES), package),
                        root / package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(provenance, "MODULES", str(root / "modules"))
    monkeypatch.setattr(config_module, "source_sha256", provenance.source_sha256)
    config = PipelineConfig.from_args([], environ={})
    before = {m: provenance.source_sha256(m) for m in ("components.versioned_pusher",
                                                        "components.image_validator")}
    definition = config.definition_sha256()
    with open(root / "domain" / "registry.py", "a") as f:
        f.write("\n# a changed rule\n")
    assert provenance.source_sha256("components.versioned_pusher") != \
        before["components.versioned_pusher"]
    assert provenance.source_sha256("components.image_validator") == \
        before["components.image_validator"]
    assert config.definition_sha256() != definition


def test_every_custom_component_carries_the_hash_of_its_code():
    from pipeline.pipeline import CODE_SHA256, Observed, create_pipeline
    config = PipelineConfig.from_args([], environ={})
    pipeline = create_pipeline(config, observed=Observed("fp", 0))
    keyed = {node.id: node.exec_properties.get(CODE_SHA256) for node in pipeline.components}
    assert keyed["VersionedPusher"] == provenance.source_sha256("components.versioned_pusher")
    assert keyed["ServedModel"] and keyed["Trainer"] and keyed["AnomalyGate"]
    assert keyed["StatisticsGen"] is None  # TFX's own code: its version keys it already
    assert keyed["DataSpan"] is None and keyed["ServedVersion"] is None  # by what they see
    assert json.loads(json.dumps(keyed))  # plain strings, as KFP parameters need
