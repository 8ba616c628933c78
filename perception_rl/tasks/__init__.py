"""Perception tasks: prompt, reward target, SFT answer, prediction parser and metrics per task.

from perception_rl.tasks import ImageGeometry, get_task
task = get_task("counting")
geometry = ImageGeometry.for_image(height, width, processor.image_processor)
messages = task.conversation(example, "qwen2_5_vl")
target = task.target(example, geometry, "qwen2_5_vl")
r = rewards.score(task.reward, completions, [target], group_size=G,
                  **task.reward_options("qwen2_5_vl"))
"""

from perception_rl.tasks.base import (
    FAMILIES,
    SYSTEM_PROMPT,
    Example,
    ImageGeometry,
    PromptedTask,
    Task,
)
from perception_rl.tasks.registry import TASKS, get_task, reward_options

__all__ = [
    "FAMILIES",
    "SYSTEM_PROMPT",
    "TASKS",
    "Example",
    "ImageGeometry",
    "PromptedTask",
    "Task",
    "get_task",
    "reward_options",
]
