"""preprocessing_fn on real encoded images: eagerly and through a real tf.Transform run."""
from __future__ import annotations


import numpy as np
import pytest
import tensorflow as tf

from domain.features import IMAGE_XF, LABEL_XF, ImageSpec
from modules.preprocessing import (NOT_AN_IMAGE, TOO_LARGE, decode_images, image_dims,
                                   model_pixels, pixels_from_values, preprocessing_fn)
from pipeline.config import PipelineConfig
from tests.conftest import encode
from tests.helpers import oversized, webp

CUSTOM = PipelineConfig(image_height=16, image_width=12, image_channels=1).transform_config()


def test_mixed_formats_sizes_and_channels_get_the_configured_shape_and_range(mixed_images):
    inputs = {"image": tf.constant([[b] for b in mixed_images]),
              "label": tf.constant([[i] for i in range(len(mixed_images))], tf.int64)}
    out = preprocessing_fn(inputs, CUSTOM)
    assert out[IMAGE_XF].numpy().tolist() == mixed_images  # kept encoded: compact
    pixels = model_pixels(out[IMAGE_XF], ImageSpec.from_custom_config(CUSTOM)).numpy()
    assert pixels.shape == (4, 16, 12, 1) and pixels.dtype == np.float32
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0 and pixels.std() > 0.1
    assert out[LABEL_XF].numpy().tolist() == [0, 1, 2, 3]


def test_pixel_values_are_scaled_not_distorted():
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    spec = ImageSpec.from_custom_config(PipelineConfig().transform_config())
    decoded = decode_images(tf.constant([encode(pixels, "PNG")]), spec).numpy()
    np.testing.assert_allclose(decoded[0, :, :, 0], pixels / 255.0, atol=1e-6)


def test_rgb_conversion():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255
    spec = ImageSpec.from_custom_config(PipelineConfig(image_height=4, image_width=4,
                                                       image_channels=3).transform_config())
    decoded = decode_images(tf.constant([encode(rgb, "PNG")]), spec).numpy()[0]
    np.testing.assert_allclose(decoded[..., 0], 1.0)
    np.testing.assert_allclose(decoded[..., 1:], 0.0)


def _spec(**overrides):
    return ImageSpec.from_custom_config(PipelineConfig(**overrides).transform_config())


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP"])
@pytest.mark.parametrize("size", [(7, 13), (300, 2)])
def test_image_dims_read_from_headers(fmt, size):
    data = encode(np.full(size, 128, np.uint8), fmt)
    assert image_dims(tf.constant(data)).numpy().tolist() == list(size)


def test_pad_keeps_the_aspect_ratio_and_crop_fills_the_frame():
    wide = np.full((4, 8), 255, np.uint8)  # white, twice as wide as high
    data = tf.constant([encode(wide, "PNG")])
    padded = decode_images(data, _spec(resize_mode="pad"))[0, :, :, 0].numpy()
    np.testing.assert_allclose(padded[2:6], 1.0)  # image in the middle rows
    np.testing.assert_allclose(padded[:2], 0.0)   # padding above and below
    cropped = decode_images(data, _spec(resize_mode="crop"))[0, :, :, 0].numpy()
    np.testing.assert_allclose(cropped, 1.0)


def test_oversized_image_is_rejected_before_decoding():
    data = tf.constant([encode(np.zeros((2000, 1500), np.uint8), "PNG")])
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_pixels=1000000"):
        decode_images(data, _spec(max_pixels=1_000_000))
    assert decode_images(data, _spec(max_pixels=3_000_000)).shape == (1, 8, 8, 1)


def test_undecodable_bytes_fail_loudly():
    spec = ImageSpec.from_custom_config(PipelineConfig().transform_config())
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode_images(tf.constant([b"not an image"]), spec)


def test_through_tf_transform_with_beam(tmp_path, mixed_images):
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    raw_metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec({
        "image": tf.io.FixedLenFeature([1], tf.string),
        "label": tf.io.FixedLenFeature([1], tf.int64)}))
    raw = [{"image": [b], "label": [i]} for i, b in enumerate(mixed_images)]
    with tft_beam.Context(temp_dir=str(tmp_path)):
        (transformed, metadata), _ = (
            (raw, raw_metadata)
            | tft_beam.AnalyzeAndTransformDataset(lambda x: preprocessing_fn(x, CUSTOM)))
    assert [r[LABEL_XF] for r in transformed] == [0, 1, 2, 3]
    assert [r[IMAGE_XF] for r in transformed] == mixed_images  # encoded bytes, not pixels
    spec = metadata.schema
    assert {f.name for f in spec.feature} == {IMAGE_XF, LABEL_XF}
    pixels = model_pixels(tf.constant([r[IMAGE_XF] for r in transformed]),
                          ImageSpec.from_custom_config(CUSTOM))
    np.testing.assert_array_equal(pixels, decode_images(tf.constant(mixed_images),
                                                        ImageSpec.from_custom_config(CUSTOM)))


def test_raw_pixel_lists_and_string_labels_through_tf_transform(tmp_path):
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    config = PipelineConfig(image_format="raw", raw_height=4, raw_width=2, raw_channels=1,
                            raw_max_value=16, label_format="string", image_height=8,
                            image_width=4, image_channels=3, resize_mode="stretch")
    raw_metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec({
        "image": tf.io.FixedLenFeature([8], tf.int64),
        "label": tf.io.FixedLenFeature([1], tf.string)}))
    raw = [{"image": [16] * 8, "label": [b"cat"]}, {"image": [0] * 8, "label": [b"dog"]},
           {"image": [8] * 8, "label": [b"cat"]}]
    output_dir = str(tmp_path / "tft")
    with tft_beam.Context(temp_dir=str(tmp_path / "tmp")):
        (transformed, _), transform_fn = (
            (raw, raw_metadata)
            | tft_beam.AnalyzeAndTransformDataset(
                lambda x: preprocessing_fn(x, config.transform_config())))
        _ = transform_fn | tft_beam.WriteTransformFn(output_dir)
    vocabulary = [v.decode() for v in tft.TFTransformOutput(output_dir).vocabulary_by_name(
        "labels")]
    assert vocabulary == ["cat", "dog"]  # by frequency
    assert [r[LABEL_XF] for r in transformed] == [0, 1, 0]
    pixels = [np.asarray(r[IMAGE_XF]).reshape(8, 4, 3) for r in transformed]
    np.testing.assert_allclose(pixels[0], 1.0)
    np.testing.assert_allclose(pixels[1], 0.0)
    np.testing.assert_allclose(pixels[2], 0.5)


@pytest.mark.parametrize("low, high, values, expected", [
    (-0.5, 0.5, [-0.5, 0.0, 0.5, 0.7], [0.0, 0.5, 1.0, 1.0]),  # centred floats; out of range
    (0.0, 255.0, [0, 51, 255, -3], [0.0, 0.2, 1.0, 0.0]),       # clipped to [0, 1]
])
def test_raw_pixel_ranges_map_to_unit_pixels(low, high, values, expected):
    spec = ImageSpec.from_custom_config(PipelineConfig(
        image_format="raw", raw_height=2, raw_width=2, raw_channels=1, raw_min_value=low,
        raw_max_value=high, image_height=2, image_width=2).transform_config())
    pixels = pixels_from_values(tf.constant([values], tf.float32), spec).numpy()
    np.testing.assert_allclose(pixels.reshape(-1), expected, atol=1e-6)


@pytest.mark.parametrize("options, chunk", [({}, b"VP8 "), ({"lossless": True}, b"VP8L"),
                                            ({"alpha": True, "exif": b"Exif\0\0"}, b"VP8X")])
def test_image_dims_read_webp_headers(options, chunk):
    data = webp((37, 301), **options)
    assert data[12:16] == chunk
    assert image_dims(tf.constant(data)).numpy().tolist() == [37, 301]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP VP8X", "WEBP VP8L",
                                 "WEBP VP8"])
def test_every_accepted_format_is_size_checked_before_decoding(fmt):
    data = oversized(fmt)
    height, width = image_dims(tf.constant(data)).numpy().tolist()
    assert height * width > 50_000_000
    with pytest.raises(tf.errors.InvalidArgumentError, match=TOO_LARGE):
        decode_images(tf.constant([data]), _spec())


@pytest.mark.parametrize("data", [b"", b"hello, this is text and not an image at all",
                                  b"\x89PNG\r\n", b"RIFF\0\0\0\0WEBPXXXX" + b"\0" * 20])
def test_unknown_empty_or_headerless_bytes_are_not_decoded(data):
    with pytest.raises(tf.errors.InvalidArgumentError, match=NOT_AN_IMAGE):
        decode_images(tf.constant([data]), _spec())
