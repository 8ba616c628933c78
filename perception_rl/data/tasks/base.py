"""What a perception task is: prompt, target, SFT answer, prediction parser, metrics.

The trainer and the eval runner only talk to this interface, so adding a task is one module in
`perception_rl/data/tasks/` plus one line in `registry.py`; nothing in `rl/` changes.

Coordinates: examples carry annotations in ORIGINAL image pixels. The policy family decides
what the model reads and writes (DESIGN.md §3): "qwen2_vl" writes `(x1,y1),(x2,y2)` in 0–1000
inside `<|box_start|>…<|box_end|>`; "qwen2_5_vl" writes JSON `bbox_2d` in pixels of the
smart-resized image. Targets are converted to that convention; predictions are mapped back to
original pixels before metrics.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence

Example = dict[str, Any]      # one record of perception_rl.data.synthetic / a TFDS builder
Message = dict[str, Any]      # HF-style chat message
FAMILIES = ("qwen2_vl", "qwen2_5_vl")


@dataclasses.dataclass(frozen=True)
class ImageGeometry:
  """Original and smart-resized image size (height, width) in pixels."""
  original_hw: tuple[int, int]
  resized_hw: tuple[int, int]


class Task(Protocol):
  """One perception task. Implementations are small frozen dataclasses."""

  name: str                      # e.g. "counting"
  reward: str                    # name in the perception_rl.rewards registry
  metric_names: tuple[str, ...]  # keys `metrics` returns; the first is the headline number

  def conversation(self, example: Example, family: str) -> list[Message]:
    """Chat messages (system + user with one {"type": "image"} part and the task text)."""

  def target(self, example: Example, geometry: ImageGeometry, family: str) -> dict[str, Any]:
    """The reward target dict (schema of the task's reward) in the policy's coordinates."""

  def answer(self, example: Example, geometry: ImageGeometry, family: str) -> str:
    """The ideal completion text for SFT (without the end-of-turn token)."""

  def predict(self, completion: str, geometry: ImageGeometry, family: str) -> dict[str, Any]:
    """Parses a completion into a prediction in ORIGINAL image pixels (never raises)."""

  def metrics(self, predictions: Sequence[dict[str, Any]],
              examples: Sequence[Example]) -> dict[str, float]:
    """Eval metrics over a split (via perception_rl.eval.metrics)."""
