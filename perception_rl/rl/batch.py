"""Host-side batches of the trainers: task-formatted prompts, padded per prompt to bucketed shapes.

A prompt record is what `PromptFormatter` makes of one example in the grain pipeline (token
ids, M-RoPE positions, its own image patches and their vision layout, the reward target, the
SFT answer). `pad_prompts` stacks records into the batch-major arrays the train step reads:

    input_ids        int32   [B, P]      left-padded, P a bucket (`bucket`)
    attention_mask   int32   [B, P]
    position_ids     int32   [B, 3, P]   M-RoPE positions, batch first (unlike the processor)
    pixel_values     float32 [B, N, D]   each prompt's own patches, N a bucket
    patch_rows, patch_cols, frame_segments, window_segments   int32 [B, N]   vision layout
    image_grid_thw   int32   [B, K, 3]   zero rows pad to K images

Keeping every array batch-major (even the patches) lets one `NamedSharding` split the whole
batch over ('data', 'fsdp'), lets micro-batches and hosts slice it like any other array, and
lets the vision tower run per prompt (`jax.vmap`) instead of attending over every patch of the
batch at once. `sampler_inputs` turns the same arrays back into the processor layout that
`perception_rl.sampling.generate` reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from perception_rl.models.qwen_vl.config import VisionConfig
from perception_rl.models.qwen_vl.vision import PAD_SEGMENT, vision_layout
from perception_rl.tasks.base import ImageGeometry

Record = dict[str, Any]
LAYOUT_KEYS = ("patch_rows", "patch_cols", "frame_segments", "window_segments")
_LAYOUT_FIELDS = ("rows", "cols", "frame_segments", "window_segments")  # `VisionLayout` names
MIN_PROMPT_LENGTH = 16  # The sampler's own minimum bucket, so it adds no padding of its own.
MIN_PATCHES = 64  # One 112×112 image.
MIN_ANSWER_LENGTH = 16


@dataclasses.dataclass(frozen=True)
class PromptFormatter:
    """grain transform: example → prompt record (deterministic, so restores recompute it).

    Attributes:
        task: a `perception_rl.tasks` task (conversation, target, answer).
        processor: the policy's `perception_rl.processing.Processor`.
        family: "qwen2_vl" or "qwen2_5_vl"; decides the target coordinates.
        vision: the policy's vision config, for the per-prompt vision layout.
        with_answer: also tokenize the task's ideal completion (SFT), ended by `eos_id`.
        eos_id: the end-of-turn token closing SFT answers; None means the tokenizer's eos.
    """

    task: Any
    processor: Any
    family: str
    vision: VisionConfig
    with_answer: bool = False
    eos_id: int | None = None

    def __call__(self, example: dict) -> Record:
        image = np.asarray(example["image"])
        height, width = image.shape[:2]
        geometry = ImageGeometry(
            (height, width), self.processor.image_processor.resized_size(height, width)
        )
        conversation = self.task.conversation(example, self.family)
        out = self.processor([conversation], [[Image.fromarray(image)]])
        grid = out.get("image_grid_thw", np.zeros((0, 3), np.int32))
        layout = vision_layout(grid, self.vision).as_dict()
        prompt = {
            "input_ids": out["input_ids"][0].astype(np.int32),
            "position_ids": out["position_ids"][:, 0].astype(np.int32),
            "pixel_values": out.get(
                "pixel_values", np.zeros((0, self.vision.patch_dim), np.float32)
            ),
            "image_grid_thw": grid.astype(np.int32),
            **{key: layout[name] for key, name in zip(LAYOUT_KEYS, _LAYOUT_FIELDS)},
        }
        record = {
            "prompt": prompt,
            "target": self.task.target(example, geometry, self.family),
            "geometry": geometry,
            "image_id": example.get("image_id", -1),
        }
        if self.with_answer:
            text = self.task.answer(example, geometry, self.family)
            ids = self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]
            eos = self.processor.tokenizer.eos_token_id if self.eos_id is None else self.eos_id
            record["answer_ids"] = np.asarray([*ids, eos], np.int32)
        return record


def prompt_record_length(record: Record) -> int:
    """Bucketing length of a record: its merged visual tokens (as `pipeline.image_patches`)."""
    return len(record["prompt"]["pixel_values"]) // 4


def bucket(n: int, minimum: int) -> int:
    """Smallest 2^k or 3 * 2^(k-1) that is >= max(n, minimum): a few compiled shapes per run.

    Two buckets per octave waste at most a third of a padded axis (powers of two alone waste
    up to half), which matters for the prompt pass: a 1,300-token Perception-R1 prompt pads
    to 1,536 rather than 2,048.
    """
    n = max(int(n), minimum, 1)
    power = 1 << (n - 1).bit_length()
    three_quarters = 3 * power // 4
    return three_quarters if three_quarters >= n and three_quarters >= minimum else power


def collate_records(records: list[Record], bucket_length: int | None) -> list[Record]:
    """`BucketBatchDataset` batch function: keep the records; padding waits for the step.

    Padding happens once per training batch (`pad_prompts`) because dynamic sampling and
    multi-host gathering combine records of several data batches first.
    """
    del bucket_length
    return records


def prompt_sizes(prompts: Sequence[dict]) -> np.ndarray:
    """Bucketed (prompt length, patches per prompt, images per prompt) of unpadded prompts."""
    length = max(len(p["input_ids"]) for p in prompts)
    patches = max(len(p["pixel_values"]) for p in prompts)
    images = max(len(p["image_grid_thw"]) for p in prompts)
    return np.asarray(
        [
            bucket(length, MIN_PROMPT_LENGTH),
            bucket(patches, MIN_PATCHES) if patches else 0,
            bucket(images, 1) if images else 0,
        ],
        np.int64,
    )


def _pad_to(x: np.ndarray, size: int, axis: int, *, left: bool, value=0) -> np.ndarray:
    width = [(0, 0)] * x.ndim
    width[axis] = (size - x.shape[axis], 0) if left else (0, size - x.shape[axis])
    return np.pad(x, width, constant_values=value)


def pad_prompts(
    prompts: Sequence[dict], *, pad_id: int, sizes: Sequence[int] | None = None
) -> dict[str, np.ndarray]:
    """Stacks unpadded prompts into the batch-major arrays of the module docstring.

    Args:
        prompts: the "prompt" entries of records.
        pad_id: token id of left padding (masked out).
        sizes: (length, patches, images) to pad to; default `prompt_sizes(prompts)`. Hosts of a
            multi-host run pass the maximum over all hosts so their arrays concatenate.

    Returns:
        The padded arrays; the patch arrays are absent when no prompt has an image.
    """
    length, patches, images = (int(s) for s in (prompt_sizes(prompts) if sizes is None else sizes))
    stack = lambda key, size, axis, **kw: np.stack(
        [_pad_to(p[key], size, axis, **kw) for p in prompts]
    )
    out = {
        "input_ids": stack("input_ids", length, 0, left=True, value=pad_id),
        "attention_mask": np.stack(
            [_pad_to(np.ones(len(p["input_ids"]), np.int32), length, 0, left=True) for p in prompts]
        ),
        # Pads get position 1, as HF's get_rope_index gives them; they are masked anyway.
        "position_ids": stack("position_ids", length, 1, left=True, value=1),
    }
    if patches:
        out["pixel_values"] = stack("pixel_values", patches, 0, left=False).astype(np.float32)
        out["image_grid_thw"] = stack("image_grid_thw", images, 0, left=False)
        out["frame_segments"] = stack("frame_segments", patches, 0, left=False, value=PAD_SEGMENT)
        out["window_segments"] = stack("window_segments", patches, 0, left=False, value=PAD_SEGMENT)
        out["patch_rows"] = stack("patch_rows", patches, 0, left=False)
        out["patch_cols"] = stack("patch_cols", patches, 0, left=False)
    return out


def padded_sizes(prompts: dict[str, np.ndarray]) -> np.ndarray:
    """(length, patches, images) of already padded prompt arrays."""
    if "pixel_values" not in prompts:
        return np.asarray([prompts["input_ids"].shape[1], 0, 0], np.int64)
    return np.asarray(
        [
            prompts["input_ids"].shape[1],
            prompts["pixel_values"].shape[1],
            prompts["image_grid_thw"].shape[1],
        ],
        np.int64,
    )


def repad_prompts(
    prompts: dict[str, np.ndarray], sizes: Sequence[int], *, pad_id: int
) -> dict[str, np.ndarray]:
    """Pads padded prompt arrays further, to (length, patches, images) = `sizes`.

    Token arrays grow on the left, patch arrays on the right, so the padded batch equals one
    padded to `sizes` from the start; batches of different buckets can then be concatenated.
    """
    length, patches, images = (int(s) for s in sizes)
    out = {
        "input_ids": _pad_to(prompts["input_ids"], length, 1, left=True, value=pad_id),
        "attention_mask": _pad_to(prompts["attention_mask"], length, 1, left=True),
        "position_ids": _pad_to(prompts["position_ids"], length, 2, left=True, value=1),
    }
    if patches:
        if "pixel_values" not in prompts:
            raise ValueError("cannot mix prompts with and without images in one batch.")
        for key in ("pixel_values", "patch_rows", "patch_cols"):
            out[key] = _pad_to(prompts[key], patches, 1, left=False)
        for key in ("frame_segments", "window_segments"):
            out[key] = _pad_to(prompts[key], patches, 1, left=False, value=PAD_SEGMENT)
        out["image_grid_thw"] = _pad_to(prompts["image_grid_thw"], images, 1, left=False)
    return out


def pad_answers(
    records: Sequence[Record], length: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """SFT targets: answer ids right-padded to `length` (default: bucketed), and their mask."""
    answers = [r["answer_ids"] for r in records]
    if length is None:
        length = bucket(max(len(a) for a in answers), MIN_ANSWER_LENGTH)
    tokens = np.stack([_pad_to(a, length, 0, left=False) for a in answers]).astype(np.int32)
    lengths = np.asarray([len(a) for a in answers])
    return tokens, length_mask(lengths, length)


def length_mask(lengths: np.ndarray, width: int) -> np.ndarray:
    """float32 [B, width]: 1 for the first `lengths[b]` positions of each row."""
    return (np.arange(width)[None] < np.asarray(lengths)[:, None]).astype(np.float32)


def sampler_inputs(prompts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The processor layout of padded prompts: positions [3, B, P], patches concatenated."""
    out = {
        "input_ids": prompts["input_ids"],
        "attention_mask": prompts["attention_mask"],
        "position_ids": np.ascontiguousarray(prompts["position_ids"].transpose(1, 0, 2)),
    }
    if "pixel_values" in prompts:
        real = prompts["frame_segments"] != PAD_SEGMENT
        grids = prompts["image_grid_thw"].reshape(-1, 3)
        out["pixel_values"] = prompts["pixel_values"][real]  # row-major: prompt, then patch
        out["image_grid_thw"] = grids[grids.prod(axis=-1) > 0]
    return out
