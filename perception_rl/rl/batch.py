"""Host-side batches of the trainers: task-formatted prompt records and SFT answers.

A prompt record is what `PromptFormatter` makes of one example in the grain pipeline: its
prompt as unpadded per-prompt arrays (token ids, M-RoPE positions, its own image patches and
their vision layout), the reward target, the image geometry and the SFT answer. The prompts
of a training batch are stacked by `models.qwen_vl.prompts.pad_prompts` into the one
batch-major layout that the sampler and the train step both read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from perception_rl.models.qwen_vl import prompts
from perception_rl.models.qwen_vl.config import VisionConfig
from perception_rl.tasks.base import ImageGeometry

Record = dict[str, Any]
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
        (prompt,) = prompts.split_processor_batch(out, self.vision, self.processor.image_token_id)
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


def collate_records(records: list[Record], bucket_length: int | None) -> list[Record]:
    """`BucketBatchDataset` batch function: keep the records; padding waits for the step.

    Padding happens once per training batch (`pad_prompts`) because dynamic sampling and
    multi-host gathering combine records of several data batches first.
    """
    del bucket_length
    return records


def pad_answers(
    records: Sequence[Record], length: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """SFT targets: answer ids right-padded to `length` (default: bucketed), and their mask."""
    answers = [r["answer_ids"] for r in records]
    if length is None:
        length = prompts.bucket(max(len(a) for a in answers), MIN_ANSWER_LENGTH)
    tokens = np.stack([np.pad(a, (0, length - len(a))) for a in answers]).astype(np.int32)
    lengths = np.asarray([len(a) for a in answers])
    return tokens, length_mask(lengths, length)


def length_mask(lengths: np.ndarray, width: int) -> np.ndarray:
    """float32 [B, width]: 1 for the first `lengths[b]` positions of each row."""
    return (np.arange(width)[None] < np.asarray(lengths)[:, None]).astype(np.float32)
