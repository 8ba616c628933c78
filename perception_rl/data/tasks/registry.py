"""Task registry: the name in a config → the task object the trainer and eval runner use.

Adding a task: write `perception_rl/data/tasks/<name>.py` with a frozen dataclass implementing
`base.Task`, then add one entry to `TASKS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from perception_rl.data.tasks.base import Task
from perception_rl.data.tasks.counting import CountingTask
from perception_rl.data.tasks.crowd import CrowdTask
from perception_rl.data.tasks.detection import DetectionTask
from perception_rl.data.tasks.grounding import GroundingTask
from perception_rl.data.tasks.ocr import OcrTask
from perception_rl.errors import ConfigError, DataError

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


def task_from_config(config) -> Task:
    """The task `config.task` with `config.task_options` overriding its fields, and label names
    from the dataset's metadata when `config.data` reads a built real dataset (training and
    evaluation build their task here, so both read the same options)."""
    from perception_rl.data import datasets

    options = config.get("task_options") if hasattr(config, "get") else None
    data = config.get("data") if hasattr(config, "get") else None
    try:
        return get_task(config.task, **datasets.task_options(config.task, options, data))
    except (KeyError, ValueError) as e:
        raise ConfigError(f"task: {e.args[0] if e.args else e}") from None


def reward_options(task: Task, family: str, overrides: Mapping[str, Any] | None) -> dict:
    """The reward's keyword options: the task's for this family, then the config's `reward`."""
    options = dict(task.reward_options(family))
    # None is an unset config placeholder (declared so the CLI can set it), not a value.
    options.update({k: v for k, v in dict(overrides or {}).items() if v is not None})
    return options


def check_source(source, task: Task, where: str = "data") -> None:
    """Fails before any work when the examples belong to another task (e.g. `task=ocr` on a
    counting dataset: training would run to the end on reward 0)."""
    if not len(source):
        raise DataError(f"{where}: the split has no examples.")
    first = source[0]
    found = first.get("task") if isinstance(first, Mapping) else None
    if found not in (None, "", task.name):
        raise DataError(
            f"{where}: the split holds {found!r} examples but config.task is {task.name!r}; "
            "point data at a matching dataset or change config.task."
        )
