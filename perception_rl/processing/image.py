"""Qwen2-VL / Qwen2.5-VL image preprocessing: smart resize, normalise, patchify (host numpy).

Bit-identical to HF transformers' `Qwen2VLImageProcessorPil` (port notes §3.1-3.2): RGB
conversion (alpha composited on white), PIL bicubic resize to a multiple of
`patch_size * merge_size`, rescale in float64 then cast to float32, CLIP normalisation in float32,
then patchify into rows of `C * temporal_patch_size * patch_size**2` values, channel outermost,
with rows ordered merge-window-major (every `merge_size**2` consecutive rows form one LLM token).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 1280  # HF class default; the published checkpoints use 28*28*16384
MAX_ASPECT_RATIO = 200
PREPROCESSOR_CONFIG = "preprocessor_config.json"


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """Target size of an image: multiples of `factor`, area in [min_pixels, max_pixels].

    Same arithmetic as HF (Python's banker's rounding included), so grids match exactly.

    Args:
        height: Original height in pixels.
        width: Original width in pixels.
        factor: Both sides become multiples of this (patch_size * merge_size).
        min_pixels: Smallest allowed area; smaller images are scaled up.
        max_pixels: Largest allowed area; larger images are scaled down.

    Returns:
        `(resized_height, resized_width)`.

    Raises:
        ValueError: For an empty image or an aspect ratio above 200.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image must be non-empty, got height={height}, width={width}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, "
            f"got {max(height, width) / min(height, width)} for height={height}, width={width}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts to RGB, compositing any transparency onto white (as HF does)."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL.Image.Image, got {type(image).__name__}")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def patchify(
    image: np.ndarray, patch_size: int, merge_size: int, temporal_patch_size: int
) -> np.ndarray:
    """Cuts an (H, W, C) image into flattened patches in merge-window-major order.

    Args:
        image: Float array (H, W, C) with H and W multiples of `patch_size * merge_size`.
        patch_size: Spatial patch side P.
        merge_size: Merge window side m (m*m patches become one LLM token).
        temporal_patch_size: Tp; a still image is repeated Tp times along time.

    Returns:
        `(H/P * W/P, C * Tp * P * P)` array; row `((bi*(W/Pm) + bj)*m + dh)*m + dw` holds patch
        `(bi*m + dh, bj*m + dw)`, flattened as `((c*Tp + t)*P + y)*P + x`.
    """
    height, width, channels = image.shape
    hm, wm = height // (patch_size * merge_size), width // (patch_size * merge_size)
    patches = image.reshape(hm, merge_size, patch_size, wm, merge_size, patch_size, channels)
    # -> (bi, bj, dh, dw, c, y, x)
    patches = patches.transpose(0, 3, 1, 4, 6, 2, 5)
    patches = np.broadcast_to(
        patches[:, :, :, :, :, None], (*patches.shape[:5], temporal_patch_size, *patches.shape[5:])
    )
    return patches.reshape(hm * wm * merge_size**2, channels * temporal_patch_size * patch_size**2)


@dataclasses.dataclass(frozen=True)
class ImageProcessor:
    """Settings of the Qwen-VL image processor (HF `preprocessor_config.json` fields).

    Attributes:
        patch_size: Vision patch side in pixels.
        merge_size: Spatial merge window side (patches per LLM token is merge_size**2).
        temporal_patch_size: Frames per temporal patch; still images are repeated this often.
        min_pixels: Smallest resized area.
        max_pixels: Largest resized area.
        image_mean: Per-channel mean, subtracted after rescaling.
        image_std: Per-channel std, divided by after subtracting the mean.
        rescale_factor: Multiplier taking uint8 values to [0, 1].
        resample: PIL resampling filter for the resize (3 = bicubic).
    """

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255
    resample: int = Image.Resampling.BICUBIC

    def __post_init__(self):
        for name in ("patch_size", "merge_size", "temporal_patch_size", "min_pixels", "max_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} exceeds max_pixels {self.max_pixels}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError(
                f"image_mean/image_std need 3 channels, got {self.image_mean}, {self.image_std}"
            )

    @property
    def factor(self) -> int:
        """Resized sides are multiples of this many pixels."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        """Length of one `pixel_values` row."""
        return 3 * self.temporal_patch_size * self.patch_size**2

    @classmethod
    def from_dict(cls, config: Mapping, source: str = "config") -> ImageProcessor:
        """Builds from `preprocessor_config.json` contents (hub and HF 5.x layouts).

        `min_pixels` / `max_pixels` win over `size = {shortest_edge, longest_edge}`, as in HF.

        Args:
            config: The parsed JSON.
            source: Name used in error messages (usually the file path).
        """
        for flag in ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb"):
            if config.get(flag, True) is False:
                raise ValueError(f"{source}: {flag}=false is not supported (Qwen-VL needs it true)")
        size = config.get("size") or {}
        kwargs = {
            "min_pixels": config.get("min_pixels", size.get("shortest_edge")),
            "max_pixels": config.get("max_pixels", size.get("longest_edge")),
        }
        for name in (
            "patch_size",
            "merge_size",
            "temporal_patch_size",
            "rescale_factor",
            "resample",
        ):
            kwargs[name] = config.get(name)
        for name in ("image_mean", "image_std"):
            kwargs[name] = tuple(config[name]) if config.get(name) is not None else None
        return cls(**{k: v for k, v in kwargs.items() if v is not None})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides) -> ImageProcessor:
        """Reads `preprocessor_config.json` from a checkpoint directory (defaults if absent).

        Args:
            path: Checkpoint directory.
            **overrides: Field values that replace the file's (e.g. a smaller `max_pixels`).
        """
        file = pathlib.Path(path) / PREPROCESSOR_CONFIG
        processor = (
            cls.from_dict(json.loads(file.read_text()), str(file)) if file.exists() else cls()
        )
        return dataclasses.replace(processor, **overrides)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """`(height, width)` an image of this size is resized to."""
        return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)

    def num_image_tokens(self, height: int, width: int) -> int:
        """LLM tokens (`<|image_pad|>` copies) an image of this size becomes."""
        resized_height, resized_width = self.resized_size(height, width)
        return (resized_height // self.factor) * (resized_width // self.factor)

    def preprocess(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int, int]]:
        """One image to `(patches [t*h*w, patch_dim] float32, grid (t, h, w))` in patch units."""
        image = to_rgb(image)
        height, width = self.resized_size(image.height, image.width)
        image = image.resize((width, height), resample=self.resample)
        # HF rescales in float64 and casts; normalising then happens in float32.
        pixels = (np.asarray(image).astype(np.float64) * self.rescale_factor).astype(np.float32)
        mean = np.asarray(self.image_mean, np.float32)
        std = np.asarray(self.image_std, np.float32)
        pixels = (pixels - mean) / std
        patches = patchify(pixels, self.patch_size, self.merge_size, self.temporal_patch_size)
        return patches, (1, height // self.patch_size, width // self.patch_size)

    def __call__(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """Preprocesses images and concatenates their patches in order.

        Args:
            images: PIL images of any sizes and modes.

        Returns:
            `pixel_values` float32 `[sum(t*h*w), patch_dim]` and `image_grid_thw` int32
            `[len(images), 3]`.
        """
        if not images:
            return np.zeros((0, self.patch_dim), np.float32), np.zeros((0, 3), np.int32)
        patches, grids = zip(*(self.preprocess(image) for image in images))
        return np.concatenate(patches, axis=0), np.asarray(grids, np.int32)
