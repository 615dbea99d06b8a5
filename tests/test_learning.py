"""The default model learns shapes on photo-like colour images, not only 8x8 digits."""
from __future__ import annotations

import os
import sys

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))

from make_shapes import write_shapes  # noqa: E402
from domain.features import ImageSpec  # noqa: E402
from modules.model import build_model, learning_rate  # noqa: E402
from modules.preprocessing import decode_images  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402

STEPS = 500


def test_default_model_learns_coloured_shapes_well_above_chance(tmp_path):
    """3 shapes in random colours on random backgrounds, mixed sizes, formats and colour
    modes, decoded at 48x48 as the pipeline does, trained with the default options."""
    paths = write_shapes(str(tmp_path), per_class=120, classes=3, seed=7)
    spec = ImageSpec("image", "label", 48, 48, 3, 3)
    pixels = decode_images(tf.constant([open(p, "rb").read() for p in paths]), spec).numpy()
    labels = np.array([sorted({os.path.basename(os.path.dirname(p)) for p in paths}).index(
        os.path.basename(os.path.dirname(p))) for p in paths])
    order = np.random.default_rng(0).permutation(len(paths))
    train, held_out = order[:300], order[300:]
    defaults = PipelineConfig()
    keras.utils.set_random_seed(defaults.seed)
    model = build_model(spec, learning_rate(defaults.lr_schedule, defaults.learning_rate, STEPS),
                        defaults.augmentation, width=defaults.width, dropout=defaults.dropout)
    batches = (tf.data.Dataset.from_tensor_slices((pixels[train], labels[train]))
               .shuffle(300, seed=0).repeat().batch(defaults.batch_size))
    model.fit(batches, steps_per_epoch=STEPS, epochs=1, verbose=0)
    accuracy = model.evaluate(pixels[held_out], labels[held_out], verbose=0, return_dict=True)
    assert accuracy["accuracy"] > 0.6, f"held-out accuracy {accuracy['accuracy']:.2f}, chance 0.33"
