"""A plain Keras script on a folder of images, the way Keras' image classification tutorial
writes one: ``image_dataset_from_directory``, cache and prefetch, the small CNN, fixed epochs.

``python bench/stock_tfx/keras_recipe.py <folder with train/<class>/ and eval/<class>/> <out>``
trains on train/, scores on eval/ and saves ``<out>/model.keras`` and ``<out>/result.json``.
"""
import json
import os
import sys

import tensorflow as tf
from tensorflow import keras

from cnn import IMAGE_SIZE, build_cnn

EPOCHS = 10
BATCH_SIZE = 32


def main(folder: str, out: str) -> None:
  train_ds, eval_ds = (keras.utils.image_dataset_from_directory(
      os.path.join(folder, split), image_size=(IMAGE_SIZE, IMAGE_SIZE),
      batch_size=BATCH_SIZE, shuffle=split == 'train', seed=123)
                       for split in ('train', 'eval'))
  train_ds = train_ds.cache().shuffle(1000).prefetch(tf.data.AUTOTUNE)
  eval_ds = eval_ds.cache().prefetch(tf.data.AUTOTUNE)
  model = build_cnn(keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)), scale=1 / 255)
  model.fit(train_ds, validation_data=eval_ds, epochs=EPOCHS)
  _, accuracy = model.evaluate(eval_ds)
  os.makedirs(out, exist_ok=True)
  model.save(os.path.join(out, 'model.keras'))
  with open(os.path.join(out, 'result.json'), 'w') as f:
    json.dump({'accuracy': accuracy}, f)


if __name__ == '__main__':
  main(*sys.argv[1:3])
