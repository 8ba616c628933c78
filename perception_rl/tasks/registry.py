"""Task registry: the name in a config → the task object the trainer and eval runner use.

Adding a task: write `perception_rl/tasks/<name>.py` with a frozen dataclass implementing
`base.Task`, then add one entry to `TASKS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from perception_rl.tasks.base import Task
from perception_rl.tasks.counting import CountingTask
from perception_rl.tasks.crowd import CrowdTask
from perception_rl.tasks.detection import DetectionTask
from perception_rl.tasks.grounding import GroundingTask
from perception_rl.tasks.ocr import OcrTask

TASKS: dict[str, type] = {
    "counting": CountingTask,
    "grounding": GroundingTask,
    "detection": DetectionTask,
    "ocr": OcrTask,
    "crowd": CrowdTask,
}


def get_task(name: str, **overrides) -> Task:
    """The task registered as `name`, with dataclass fields overridden (e.g. `label_names`).

    Raises:
      KeyError: for an unknown task name.
      ValueError: for an override that is not a field of the task.
    """
    if name not in TASKS:
        raise KeyError(f"Unknown task {name!r}; registered: {sorted(TASKS)}.")
    cls = TASKS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    if unknown := set(overrides) - fields:
        raise ValueError(
            f"Unknown option(s) {sorted(unknown)} for task {name!r}; valid: {sorted(fields)}."
        )
    return cls(**overrides)


def reward_options(task: Task, family: str, overrides: Mapping[str, Any] | None) -> dict:
    """The reward's keyword options: the task's for this family, then the config's `reward`."""
    options = dict(task.reward_options(family))
    # None is an unset config placeholder (declared so the CLI can set it), not a value.
    options.update({k: v for k, v in dict(overrides or {}).items() if v is not None})
    return options
