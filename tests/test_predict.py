"""ops.predict answers with the version served by default: the stable label, else the highest."""
from __future__ import annotations

import os

import pytest

from domain.labels import Labels, set_labels
from ops import predict


@pytest.fixture
def base(tmp_path):
    base = tmp_path / "serving" / "image_classifier"
    for version in (1, 2, 3):
        os.makedirs(base / str(version))
        (base / str(version) / "saved_model.pb").write_bytes(b"")
    return str(base)


def test_without_labels_the_highest_version_answers(base):
    assert predict.resolve_model_dir(base) == os.path.join(base, "3")
    assert predict.resolve_model_dir(base, version=1) == os.path.join(base, "1")
    saved_model = os.path.join(base, "2")
    assert predict.resolve_model_dir(saved_model) == saved_model


def test_with_labels_stable_answers_unless_another_is_asked_for(base):
    set_labels(base, Labels(stable=2, canary=3, canary_weight=0.1),
                           "canary")
    assert predict.resolve_model_dir(base) == os.path.join(base, "2")  # not the highest, 3
    assert predict.resolve_model_dir(base, label="canary") == os.path.join(base, "3")
    assert predict.resolve_model_dir(base, version=1) == os.path.join(base, "1")


@pytest.mark.parametrize("args, message", [
    (["--label", "canary"], "no version is labelled 'canary' (labels: none in use)"),
    (["--version", "7"], "has no version 7 (present: [1, 2, 3])"),
])
def test_a_missing_label_or_version_is_a_one_line_error(base, capsys, tmp_path, args, message):
    image = tmp_path / "x.png"
    image.write_bytes(b"not read")
    assert predict.main(["--model", base, *args, str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("predict: --model ") and message in err and "\n" not in err
