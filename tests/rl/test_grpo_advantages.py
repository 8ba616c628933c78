"""Group advantages, zero-variance detection and dynamic sampling."""

import functools

import jax
import numpy as np
import pytest

from perception_rl.rl import grpo

G = 8


def np_advantages(rewards, group_size, estimator, eps=1e-4):
    groups = rewards.reshape(-1, group_size).astype(np.float64)
    centred = groups - groups.mean(axis=1, keepdims=True)
    if estimator == "grpo":
        centred /= groups.std(axis=1, ddof=1, keepdims=True) + eps
    return centred.reshape(-1)


@pytest.mark.parametrize("estimator", grpo.ADVANTAGE_ESTIMATORS)
def test_advantages_match_numpy(estimator):
    rng = np.random.default_rng(0)
    rewards = rng.uniform(0.0, 3.0, 4 * G).astype(np.float32)
    rewards[G : 2 * G] = 1.0  # a zero-variance group
    fn = jax.jit(functools.partial(grpo.advantages, group_size=G, estimator=estimator))
    adv = fn(rewards)
    np.testing.assert_allclose(adv, np_advantages(rewards, G, estimator), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(adv[G : 2 * G], 0.0)


def test_grpo_eps_and_unbiased_std():
    rewards = np.array([0.0, 1.0, 0.0, 1.0], np.float32)  # std ddof=1 is 1/sqrt(3)
    std = np.sqrt(1.0 / 3.0)
    for eps in (1e-4, 0.5):
        adv = grpo.advantages(rewards, 4, estimator="grpo", eps=eps)
        np.testing.assert_allclose(adv, [-0.5 / (std + eps), 0.5 / (std + eps)] * 2, rtol=1e-6)
    with pytest.raises(ValueError, match="group_size"):
        grpo.advantages(rewards, 1, estimator="grpo")
    with pytest.raises(ValueError, match="estimator"):
        grpo.advantages(rewards, 2, estimator="ppo")


@pytest.mark.parametrize("estimator", grpo.ADVANTAGE_ESTIMATORS)
def test_reward_components(estimator):
    rng = np.random.default_rng(1)
    # Format passes almost always (small spread); accuracy has a large spread.
    fmt = (rng.uniform(size=3 * G) < 0.9).astype(np.float32)
    acc = rng.uniform(0.0, 3.0, 3 * G).astype(np.float32)
    components = np.stack([fmt, acc], axis=-1)
    summed = grpo.advantages(components, G, estimator=estimator)
    np.testing.assert_allclose(summed, np_advantages(fmt + acc, G, estimator), rtol=1e-5, atol=1e-5)
    decoupled = grpo.advantages(components, G, estimator=estimator, normalize_components=True)
    expected = np_advantages(fmt, G, estimator) + np_advantages(acc, G, estimator)
    np.testing.assert_allclose(decoupled, expected, rtol=1e-5, atol=1e-5)
    # Centring is linear, so only the std division makes decoupling matter.
    assert np.allclose(decoupled, summed, atol=1e-5) == (estimator == "drgrpo")


def test_zero_variance_groups():
    rewards = np.array([1, 1, 1, 0.5, 0.5, 0.5, 0, 1, 0, 2, 2, 2.0001], np.float32)
    np.testing.assert_array_equal(grpo.zero_variance_groups(rewards, 3), [True, True, False, False])
    # With components, a group is zero-variance only if every component is constant.
    constant = np.full_like(rewards, 0.25)
    np.testing.assert_array_equal(
        grpo.zero_variance_groups(np.stack([rewards, constant], -1), 3), [True, True, False, False]
    )
    assert not np.any(
        grpo.zero_variance_groups(np.stack([rewards, -rewards, np.arange(12)], -1), 3)
    )


class FakeRollouts:
    """draw(n): returns groups whose informativeness follows a fixed script, and logs requests."""

    def __init__(self, script, group_size=2):
        self.script = list(script)  # one list of booleans (informative?) per draw
        self.group_size = group_size
        self.requests = []
        self.next_id = 0

    def __call__(self, n):
        self.requests.append(n)
        informative = self.script.pop(0)
        ids = list(range(self.next_id, self.next_id + len(informative)))
        self.next_id += len(informative)
        rewards = np.concatenate([[0.0, 1.0] if i else [1.0, 1.0] for i in informative])
        return ids, rewards


def picked_ids(sample):
    return [sample.batches[b][g] for b, g in sample.picks]


def test_dynamic_sampler_refills_with_fresh_prompts():
    draw = FakeRollouts([[True, False, True, False], [False, True, True], [True, True]])
    sample = grpo.DynamicSampler(group_size=2, max_retries=5).sample(draw, num_groups=4)
    # 2 informative, then 2 missing -> 2 more from the second draw; the third draw never happens.
    assert draw.requests == [4, 2]
    assert picked_ids(sample) == [0, 2, 5, 6]
    assert sample.num_informative == 4 and sample.num_draws == 2
    assert sample.picks.shape == (4, 2)


def test_dynamic_sampler_fills_with_zero_variance_groups_when_retries_run_out():
    draw = FakeRollouts([[False, True, False], [False, False, True], [True, True, True]])
    sample = grpo.DynamicSampler(group_size=2, max_retries=1).sample(draw, num_groups=3)
    assert draw.requests == [3, 2]
    # Informative groups 1 and 5 first, then the earliest zero-variance filler.
    assert picked_ids(sample) == [1, 5, 0]
    assert sample.num_informative == 2 and sample.num_draws == 2


def test_dynamic_sampler_without_retries_only_reorders():
    draw = FakeRollouts([[False, True, True]])
    sample = grpo.DynamicSampler(group_size=2, max_retries=0).sample(draw, num_groups=3)
    assert picked_ids(sample) == [1, 2, 0] and sample.num_informative == 2


def test_dynamic_sampler_rejects_short_draws():
    draw = FakeRollouts([[True], [True]])
    with pytest.raises(ValueError, match="fewer than"):
        grpo.DynamicSampler(group_size=2, max_retries=1).sample(draw, num_groups=3)
