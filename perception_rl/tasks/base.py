"""What a perception task is: prompt, target, SFT answer, prediction parser, metrics.

The trainer and the eval runner only talk to this interface, so adding a task is one module in
`perception_rl/tasks/` plus one line in `registry.py`; nothing in `rl/` changes.

Coordinates: examples carry annotations in ORIGINAL image pixels (x2 / y2 exclusive edges). The
policy family decides what the model reads and writes (DESIGN.md §3): "qwen2_vl" writes
integers in 0–1000 normalised to the image sides; "qwen2_5_vl" writes integer pixels of the
smart-resized image the model sees. `ImageGeometry` converts between the two; targets are in the
policy's convention, predictions are mapped back to original pixels before metrics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

Example = dict[str, Any]  # one record of perception_rl.data.synthetic / a TFDS builder
Message = dict[str, Any]  # HF-style chat message
FAMILIES = ("qwen2_vl", "qwen2_5_vl")
SYSTEM_PROMPT = "You are a helpful assistant."  # Qwen's default ("qwen" in PR1's scripts).
NORMALIZED_SCALE = 1000  # Qwen2-VL's coordinate frame: 0..1000 on both axes.


def check_family(family: str) -> str:
    """Returns `family`, or raises ValueError naming the supported ones."""
    if family not in FAMILIES:
        raise ValueError(f"Unknown policy family {family!r}; expected one of {FAMILIES}.")
    return family


def image_chat(system_prompt: str, text: str) -> list[Message]:
    """System message, then a user turn holding the image followed by the task text."""
    return [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},
    ]


@dataclasses.dataclass(frozen=True)
class ImageGeometry:
    """Original and smart-resized image size (height, width) in pixels."""

    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]

    @classmethod
    def for_image(cls, height: int, width: int, image_processor) -> ImageGeometry:
        """The geometry of an image the policy's `ImageProcessor` resizes (smart_resize)."""
        return cls((int(height), int(width)), image_processor.resized_size(height, width))

    def _frame(self, family: str) -> np.ndarray:
        """[x, y, x, y] size of the policy's coordinate frame over original pixel units."""
        height, width = self.original_hw
        if check_family(family) == "qwen2_vl":
            scale_x, scale_y = NORMALIZED_SCALE / width, NORMALIZED_SCALE / height
        else:
            scale_x, scale_y = self.resized_hw[1] / width, self.resized_hw[0] / height
        return np.array([scale_x, scale_y, scale_x, scale_y])

    def frame_size(self, family: str) -> tuple[int, int]:
        """(width, height) of the policy's frame: 1000×1000 or the resized image."""
        if check_family(family) == "qwen2_vl":
            return NORMALIZED_SCALE, NORMALIZED_SCALE
        return self.resized_hw[1], self.resized_hw[0]

    def to_policy(self, boxes: Any, family: str) -> np.ndarray:
        """Original-pixel boxes `[..., 4]` (or points `[..., 2]`) as the integers the policy writes.

        Values are rounded to the nearest integer and clipped to the frame, so a box touching
        the right edge (x2 = width, exclusive) becomes 1000 or the resized width.
        """
        values = np.asarray(boxes, np.float64)
        width = values.shape[-1] if values.ndim else 0
        if width not in (2, 4):
            raise ValueError(f"Expected boxes [..., 4] or points [..., 2], got {values.shape}.")
        frame = self._frame(family)[:width]
        high = np.tile(self.frame_size(family), width // 2)
        return np.clip(np.rint(values * frame), 0, high).astype(np.int64)

    def from_policy(self, boxes: Any, family: str) -> np.ndarray:
        """Policy-frame boxes `[..., 4]` (or points `[..., 2]`) in original float pixels."""
        values = np.asarray(boxes, np.float64)
        width = values.shape[-1] if values.ndim else 0
        if width not in (2, 4):
            raise ValueError(f"Expected boxes [..., 4] or points [..., 2], got {values.shape}.")
        return values / self._frame(family)[:width]


@dataclasses.dataclass(frozen=True)
class PromptedTask:
    """What the tasks share: one image and the task text, `prompt` filled in from
    `prompt_fields(example)` after the system prompt; no reward options unless a task adds some.
    Tasks subclass it as frozen dataclasses and redeclare `prompt` with their own default."""

    prompt: str = ""
    system_prompt: str = SYSTEM_PROMPT

    def prompt_fields(self, example: Example) -> dict[str, Any]:
        """The `{names}` of `prompt` for this example."""
        return {}

    def conversation(self, example: Example, family: str) -> list[Message]:
        check_family(family)
        return image_chat(self.system_prompt, self.prompt.format(**self.prompt_fields(example)))

    def reward_options(self, family: str) -> dict[str, Any]:
        check_family(family)
        return {}


class Task(Protocol):
    """One perception task. Implementations are small frozen dataclasses."""

    name: str  # e.g. "counting"
    reward: str  # name in the perception_rl.rewards registry
    metric_names: tuple[str, ...]  # keys `metrics` returns; the first is the headline number
    table_columns: tuple[tuple[str, str], ...]  # (metric key, header) of the papers' table
    prediction_keys: tuple[str, ...]  # keys `metrics` reads from each prediction
    # How completions are decoded for the reward and `predict` (PR1 keeps special tokens for
    # the Qwen2-VL span syntax, whose format gates need them, and skips them otherwise).
    skip_special_tokens: bool

    def conversation(self, example: Example, family: str) -> list[Message]:
        """Chat messages (system + user with one {"type": "image"} part and the task text)."""

    def target(self, example: Example, geometry: ImageGeometry, family: str) -> dict[str, Any]:
        """The reward target dict (schema of the task's reward) in the policy's coordinates."""

    def reward_options(self, family: str) -> dict[str, Any]:
        """Reward config overrides for this family: `rewards.score(self.reward, ..., **opts)`."""

    def answer(self, example: Example, geometry: ImageGeometry, family: str) -> str:
        """The ideal completion text for SFT (without the end-of-turn token)."""

    def predict(self, completion: str, geometry: ImageGeometry, family: str) -> dict[str, Any]:
        """Parses a completion into a JSON-able prediction in ORIGINAL image pixels.

        Never raises. Box tasks return `{"boxes": [[x1, y1, x2, y2], ...], ...}`; OCR returns
        `{"text": str}`.
        """

    def metrics(
        self, predictions: Sequence[dict[str, Any]], examples: Sequence[Example]
    ) -> dict[str, float]:
        """Eval metrics over a split (via perception_rl.metrics), keyed by metric_names."""
