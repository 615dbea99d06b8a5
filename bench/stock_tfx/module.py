"""Transform and Trainer module of the stock TFX pipeline, in the style of TFX's own examples
(tfx/examples/mnist/mnist_utils_native_keras*.py, tfx/examples/penguin/penguin_utils_keras.py):
a preprocessing_fn that decodes the images, a plain Keras ``run_fn`` with fixed steps."""
from typing import List

import absl
import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from cnn import IMAGE_SIZE, build_cnn

IMAGE_KEY = 'image'
LABEL_KEY = 'label'
BATCH_SIZE = 32


def transformed_name(key):
  return key + '_xf'


def _decode(image_bytes):
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image = tf.image.resize(image, [IMAGE_SIZE, IMAGE_SIZE])
  return tf.reshape(image, [IMAGE_SIZE * IMAGE_SIZE * 3]) / 255.0


def preprocessing_fn(inputs):
  """tf.transform's callback: decoded, resized and scaled pixels, the label as it is."""
  images = tf.reshape(inputs[IMAGE_KEY], [-1])
  return {
      transformed_name(IMAGE_KEY): tf.map_fn(
          _decode, images, fn_output_signature=tf.float32),
      transformed_name(LABEL_KEY): inputs[LABEL_KEY],
  }


def _input_fn(file_pattern: List[str], data_accessor: tfx.components.DataAccessor,
              tf_transform_output: tft.TFTransformOutput) -> tf.data.Dataset:
  return data_accessor.tf_dataset_factory(
      file_pattern,
      tfxio.TensorFlowDatasetOptions(
          batch_size=BATCH_SIZE, label_key=transformed_name(LABEL_KEY)),
      tf_transform_output.transformed_metadata.schema).repeat()


def _serving_signature(model, tf_transform_output):
  """Serialized tf.Examples -> logits, through the Transform graph."""
  model.tft_layer = tf_transform_output.transform_features_layer()

  @tf.function(input_signature=[
      tf.TensorSpec(shape=[None], dtype=tf.string, name='examples')
  ])
  def serve_tf_examples_fn(serialized_tf_examples):
    feature_spec = tf_transform_output.raw_feature_spec()
    feature_spec.pop(LABEL_KEY)
    parsed_features = tf.io.parse_example(serialized_tf_examples, feature_spec)
    transformed_features = model.tft_layer(parsed_features)
    return {'outputs': model(transformed_features)}

  return serve_tf_examples_fn


def run_fn(fn_args: tfx.components.FnArgs):
  """Trains the CNN for the pipeline's fixed steps and saves it with its signature."""
  tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
  train_dataset = _input_fn(fn_args.train_files, fn_args.data_accessor,
                            tf_transform_output)
  eval_dataset = _input_fn(fn_args.eval_files, fn_args.data_accessor,
                           tf_transform_output)
  pixels = IMAGE_SIZE * IMAGE_SIZE * 3
  model = build_cnn({transformed_name(IMAGE_KEY): tf.keras.Input(
      shape=(pixels,), name=transformed_name(IMAGE_KEY))})
  model.summary(print_fn=absl.logging.info)
  model.fit(
      train_dataset,
      steps_per_epoch=fn_args.train_steps,
      validation_data=eval_dataset,
      validation_steps=fn_args.eval_steps)
  signatures = {
      'serving_default':
          _serving_signature(model, tf_transform_output).get_concrete_function()
  }
  tf.saved_model.save(model, fn_args.serving_model_dir, signatures=signatures)
