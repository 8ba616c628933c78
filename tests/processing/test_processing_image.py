"""Image preprocessing parity with HF transformers' `Qwen2VLImageProcessorPil`."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from perception_rl.processing.image import ImageProcessor, patchify, smart_resize

pil_qwen2_vl = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
HUB_MAX_PIXELS = 28 * 28 * 16384  # published checkpoints' preprocessor_config.json


def random_image(rng, height, width, mode="RGB"):
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)


def hf_outputs(images, **settings):
    hf = pil_qwen2_vl.Qwen2VLImageProcessorPil(**settings)
    out = hf(images, return_tensors="np")
    return out["pixel_values"], out["image_grid_thw"]


@pytest.mark.parametrize(
    ("height", "width"),
    [
        (28, 28),
        (1, 1),
        (10, 10),
        (42, 70),
        (100, 150),
        (2000, 3000),
        (1, 150),
        (57, 11000),
        (333, 777),
    ],
)
@pytest.mark.parametrize("max_pixels", [3136 * 4, 28 * 28 * 1280, HUB_MAX_PIXELS])
def test_smart_resize_matches_hf(height, width, max_pixels):
    expected = pil_qwen2_vl.smart_resize(height, width, 28, 3136, max_pixels)
    assert smart_resize(height, width, 28, 3136, max_pixels) == expected


def test_smart_resize_examples_from_port_notes():
    assert smart_resize(100, 150, max_pixels=HUB_MAX_PIXELS) == (112, 140)
    assert smart_resize(2000, 3000, max_pixels=HUB_MAX_PIXELS) == (1988, 2996)
    assert smart_resize(2000, 3000) == (812, 1204)
    assert smart_resize(10, 10) == (56, 56)
    # Banker's rounding: 42/28 = 1.5 -> 2 and 70/28 = 2.5 -> 2.
    assert smart_resize(42, 70, min_pixels=1) == (56, 56)


def test_smart_resize_rejects_extreme_aspect_ratio_and_empty_images():
    with pytest.raises(ValueError, match="aspect ratio must be smaller than 200"):
        smart_resize(10, 2010)
    with pytest.raises(ValueError, match="non-empty"):
        smart_resize(0, 10)


def test_pixels_match_hf_on_many_sizes_and_modes():
    rng = np.random.default_rng(0)
    sizes = [(28, 28), (1, 1), (5, 9), (13, 200), (56, 84), (84, 56), (700, 400), (111, 1999)]
    images = [random_image(rng, h, w) for h, w in sizes]
    images += [random_image(rng, 60, 90, "RGBA"), random_image(rng, 45, 30, "L")]
    palette = random_image(rng, 40, 70).convert("P")
    palette.info["transparency"] = 0
    images.append(palette)
    settings = dict(min_pixels=28 * 28, max_pixels=28 * 28 * 64)  # 700x400 and 111x1999 exceed it
    pixel_values, grid = ImageProcessor(**settings)(images)
    hf_pixel_values, hf_grid = hf_outputs(images, **settings)
    assert pixel_values.dtype == np.float32 and grid.dtype == np.int32
    np.testing.assert_array_equal(grid, hf_grid)
    np.testing.assert_array_equal(pixel_values, hf_pixel_values)


def test_pixels_match_hf_beyond_default_max_pixels():
    image = random_image(np.random.default_rng(1), 1100, 1500)
    pixel_values, grid = ImageProcessor()([image])
    hf_pixel_values, hf_grid = hf_outputs([image])
    assert math.prod(grid[0]) * 14**2 <= 28 * 28 * 1280 < 1100 * 1500
    np.testing.assert_array_equal(grid, hf_grid)
    np.testing.assert_array_equal(pixel_values, hf_pixel_values)


def test_configurable_patch_merge_and_temporal_sizes_match_hf():
    images = [random_image(np.random.default_rng(2), h, w) for h, w in [(30, 50), (17, 9)]]
    settings = dict(
        patch_size=4, merge_size=2, temporal_patch_size=3, min_pixels=64, max_pixels=4096
    )
    pixel_values, grid = ImageProcessor(**settings)(images)
    hf_pixel_values, hf_grid = hf_outputs(images, **settings)
    assert pixel_values.shape[1] == 3 * 3 * 4 * 4
    np.testing.assert_array_equal(grid, hf_grid)
    np.testing.assert_array_equal(pixel_values, hf_pixel_values)


def test_patchify_is_merge_window_major_and_channel_outermost():
    """Row ((bi*Wm + bj)*m + dh)*m + dw holds patch (bi*m+dh, bj*m+dw); values (c, t, y, x)."""
    p, m, tp, height, width = 2, 2, 2, 8, 12
    y, x, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(3), indexing="ij")
    image = (c * 10000 + y * 100 + x).astype(np.float32)
    patches = patchify(image, p, m, tp).reshape(-1, 3, tp, p, p)
    wm = width // (p * m)
    for bi, bj, dh, dw in [(0, 0, 0, 0), (0, 1, 1, 0), (1, 2, 1, 1)]:
        row = patches[((bi * wm + bj) * m + dh) * m + dw]
        top, left = (bi * m + dh) * p, (bj * m + dw) * p
        for t in range(tp):
            np.testing.assert_array_equal(
                row[:, t], image[top : top + p, left : left + p].transpose(2, 0, 1)
            )


def test_reads_preprocessor_config_written_by_hf(tmp_path):
    settings = dict(
        min_pixels=1234, max_pixels=56789, patch_size=7, merge_size=2, temporal_patch_size=2
    )
    pil_qwen2_vl.Qwen2VLImageProcessorPil(**settings).save_pretrained(tmp_path)
    processor = ImageProcessor.from_pretrained(tmp_path)
    for name, value in settings.items():
        assert getattr(processor, name) == value
    assert ImageProcessor.from_pretrained(tmp_path, max_pixels=9999).max_pixels == 9999


def test_reads_hub_style_preprocessor_config(tmp_path):
    hub = {"min_pixels": 3136, "max_pixels": HUB_MAX_PIXELS, "patch_size": 14, "temporal_patch_size": 2,
           "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25],
           "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor"}  # fmt: skip
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(hub))
    processor = ImageProcessor.from_pretrained(tmp_path)
    assert (processor.max_pixels, processor.image_mean) == (HUB_MAX_PIXELS, (0.5, 0.5, 0.5))
    assert ImageProcessor.from_pretrained(tmp_path / "missing") == ImageProcessor()


def test_bad_settings_and_inputs_are_named(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False}))
    with pytest.raises(ValueError, match="preprocessor_config.json: do_normalize=false"):
        ImageProcessor.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="min_pixels 5000 exceeds max_pixels 4000"):
        ImageProcessor(min_pixels=5000, max_pixels=4000)
    with pytest.raises(TypeError, match="expected a PIL.Image.Image, got ndarray"):
        ImageProcessor()([np.zeros((28, 28, 3), np.uint8)])
