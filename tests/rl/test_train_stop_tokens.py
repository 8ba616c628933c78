"""Training rollouts end on the same tokens as evaluation: `<|im_end|>` and `<|endoftext|>`."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from configs import smoke
from perception_rl.parallel import make_mesh
from perception_rl.policy import load_policy
from perception_rl.rl import trainer
from perception_rl.tasks import get_task


def test_rollouts_stop_on_im_end_and_endoftext():
    config = smoke.get_config()
    policy = load_policy(config, make_mesh((-1, 1, 1)))
    tokenizer = policy.processor.tokenizer
    # What the eval runner stops on (perception_rl.eval.runner.predict).
    expected = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    assert None not in expected and len(expected) == 2
    settings = trainer.rollout_config(config, policy, get_task(config.task))
    assert set(settings.eos_ids) == expected
