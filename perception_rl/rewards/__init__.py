"""Rule-based rewards of Perception-R1 and (reconstructed) DIP-R1, batched over the group.

Host-side parsing turns completions into padded arrays, jitted code computes the geometry and
edit distances over the whole batch, and only Hungarian matching runs per item on the host::

    from perception_rl import rewards
    r = rewards.score("detection", completions, targets, group_size=8)         # float32 [B*G]
    parts = rewards.score_components("grounding", completions, targets, group_size=8,
                                     format_check="pr1_lenient")
"""

from perception_rl.rewards.registry import (
    REWARDS,
    Reward,
    make_config,
    score,
    score_components,
    value_range,
)

__all__ = ["REWARDS", "Reward", "make_config", "score", "score_components", "value_range"]
