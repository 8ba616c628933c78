"""GRPO rollouts: prompts → G sampled completions each → rewards → advantages.

`RolloutCollector.collect` produces the training batch of one step. Each draw takes this host's
next batch of prompt records, pads them to shapes agreed by all hosts and gathers them (in
data-stream order, so H hosts see the batch one process would), so every host holds the same
global prompt batch; the sampler then draws G completions per prompt
(the same on every host, since its inputs and key are the same), each host scores the
completions of its own prompts against its own targets on the host, and the reward arrays are
gathered back. With dynamic sampling (DAPO), groups whose G rewards are all equal are dropped
and fresh prompts are drawn, up to `max_resample` times (`grpo.DynamicSampler`); the decision
is taken from the gathered rewards, so every host takes the same one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from perception_rl import rewards as rewards_lib
from perception_rl.models.qwen_vl import prompts as prompts_lib
from perception_rl.parallel import hosts
from perception_rl.rl import batch as batch_lib
from perception_rl.rl import grpo
from perception_rl.sampling import SampleResult, generate


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """How rollouts are drawn, scored and turned into advantages.

    Attributes:
        group_size: G, completions per prompt.
        max_new_tokens: completion budget T (static shape).
        temperature, top_k, top_p: sampling filters (seed_spec A2: 1.0, 50, 0.9).
        eos_ids: tokens that end a completion (kept in it, as PR1's mask does).
        pad_id: filler after the end of a completion.
        reward: name in the `perception_rl.rewards` registry.
        reward_options: overrides of that reward's config fields.
        skip_special_tokens: decode completions without special tokens (PR1 does for
            detection); by default `<|box_start|>`, `<|im_end|>` etc. stay for the parsers.
        advantage_estimator: "grpo" or "drgrpo".
        advantage_eps: added to the group std.
        advantage_components: reward components normalised one by one and summed
            (GDPO-style); empty means the reward's "total".
        dynamic_sampling: drop zero-variance groups and draw fresh prompts.
        max_resample: extra draws allowed per step with dynamic sampling.
        sampler_chunk: prompts per sampler call (a memory lever: the sampler's cache and
            vision tower hold one chunk at a time); None samples the whole batch at once.
            Chunk c draws with `fold_in(key, c)`, so only greedy decoding is unchanged by it.
    """

    group_size: int
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 0.9
    eos_ids: tuple[int, ...] = ()
    pad_id: int = 0
    reward: str = "counting"
    reward_options: dict = dataclasses.field(default_factory=dict)
    skip_special_tokens: bool = False
    advantage_estimator: str = "grpo"
    advantage_eps: float = 1e-4
    advantage_components: tuple[str, ...] = ()
    dynamic_sampling: bool = False
    max_resample: int = 0
    sampler_chunk: int | None = None


@dataclasses.dataclass(frozen=True)
class Draw:
    """One sampler call over a global prompt batch (B prompts, B*G completions)."""

    prompts: dict[str, np.ndarray]
    tokens: np.ndarray
    lengths: np.ndarray
    rewards: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Rollouts:
    """The training batch of one step and what it cost.

    Attributes:
        batch: {"prompts": padded prompt arrays [B, ...], "completions": tokens [B*G, T],
            mask [B*G, T], advantages [B*G]} as numpy, global.
        metrics: reward, length and sampling statistics of the batch.
        tokens_sampled: completion tokens generated over all draws (all hosts).
        completions_sampled: completions generated over all draws.
    """

    batch: dict
    metrics: dict[str, float]
    tokens_sampled: int
    completions_sampled: int


class RolloutCollector:
    """Draws rollouts for GRPO steps from a prompt-record iterator.

    Attributes:
        config: rollout settings.
    """

    def __init__(self, policy, records: Iterator[list[dict]], config: RolloutConfig):
        """Args:
        policy: a `perception_rl.policy.Policy` (graph, processor, pad id).
        records: this host's iterator of prompt-record batches.
        config: rollout settings.
        """
        self.policy, self.records, self.config = policy, records, config

    # ------------------------------------------------------------------------------ a draw
    def decode(self, tokens: np.ndarray, lengths: np.ndarray) -> list[str]:
        """Completion texts up to and including their EOS."""
        rows = [row[:n].tolist() for row, n in zip(tokens, lengths)]
        return self.policy.processor.tokenizer.batch_decode(
            rows, skip_special_tokens=self.config.skip_special_tokens
        )

    def sample(self, params: Any, prompts: dict, key: jax.Array) -> SampleResult:
        """G completions per prompt of the padded global batch, `sampler_chunk` prompts at a
        time (every chunk keeps the batch's padded prompt length, so shapes repeat)."""
        cfg = self.config
        total = len(prompts["input_ids"])
        chunk = cfg.sampler_chunk or total
        if total % chunk:
            raise ValueError(f"sampler_chunk={chunk} does not divide {total} prompts.")
        pieces = []
        for index, start in enumerate(range(0, total, chunk)):
            part = jax.tree.map(lambda x, start=start: x[start : start + chunk], prompts)
            out = generate(
                self.policy.model(params),
                part,
                max_new_tokens=cfg.max_new_tokens,
                key=key if chunk == total else jax.random.fold_in(key, index),
                num_samples=cfg.group_size,
                temperature=cfg.temperature,
                top_k=cfg.top_k,
                top_p=cfg.top_p,
                eos_ids=cfg.eos_ids,
                pad_id=cfg.pad_id,
            )
            pieces.append(dataclasses.replace(out, prompt_index=out.prompt_index + start))
        if len(pieces) == 1:
            return pieces[0]
        return SampleResult(
            *(
                np.concatenate([getattr(p, f.name) for p in pieces])
                for f in dataclasses.fields(SampleResult)
            )
        )

    def draw(self, params: Any, key: jax.Array) -> Draw:
        """Samples and scores G completions for each prompt of the next global batch."""
        cfg, group = self.config, self.config.group_size
        records = next(self.records)
        local = [record["prompt"] for record in records]
        sizes = hosts.host_max(prompts_lib.prompt_sizes(local))
        prompts = hosts.gather_hosts(
            prompts_lib.pad_prompts(local, pad_id=self.policy.pad_id, sizes=sizes)
        )
        out = self.sample(params, prompts, key)
        mine = hosts.host_rows(len(records), group)  # this host's prompts' completions
        texts = self.decode(out.tokens[mine], out.lengths[mine])
        scores = rewards_lib.score_components(
            cfg.reward,
            texts,
            [record["target"] for record in records],
            group_size=group,
            **cfg.reward_options,
        )
        return Draw(prompts, out.tokens, out.lengths, hosts.gather_hosts(scores, group))

    def advantage_rewards(self, rewards: dict[str, np.ndarray]) -> np.ndarray:
        """[B*G] totals, or [B*G, C] components for per-component normalisation."""
        names = self.config.advantage_components
        if not names:
            return rewards["total"]
        missing = [name for name in names if name not in rewards]
        if missing:
            raise ValueError(
                f"reward {self.config.reward!r} has no component(s) {missing}; "
                f"it returns {sorted(rewards)}."
            )
        parts = np.stack([rewards[name] for name in names], axis=-1)
        if not np.allclose(parts.sum(axis=-1), rewards["total"], atol=1e-5):
            raise ValueError(
                f"components {list(names)} do not add up to the total reward of "
                f"{self.config.reward!r}; they cannot be normalised separately."
            )
        return parts

    # ------------------------------------------------------------------------------- a step
    def collect(self, params: Any, key: jax.Array, num_groups: int) -> Rollouts:
        """The training batch of one step: `num_groups` global groups of G completions.

        Args:
            params: the current policy parameters (the rollout policy).
            key: this step's key; draw i uses `fold_in(key, i)`.
            num_groups: B, the global prompts per step.
        """
        cfg = self.config
        draws: list[Draw] = []

        def draw(_):
            result = self.draw(params, jax.random.fold_in(key, len(draws)))
            draws.append(result)
            return result, result.rewards["total"]

        if cfg.dynamic_sampling:
            sample = grpo.DynamicSampler(cfg.group_size, cfg.max_resample).sample(draw, num_groups)
            picks, informative = sample.picks, sample.num_informative
        else:
            draw(num_groups)
            picks = np.stack([np.zeros(num_groups, np.int64), np.arange(num_groups)], axis=1)
            zero = grpo.zero_variance_groups(draws[0].rewards["total"], cfg.group_size)
            informative = int(num_groups - np.asarray(zero).sum())
        batch, rewards = self._assemble(draws, picks)
        metrics = self._metrics(batch, rewards, informative, len(draws))
        return Rollouts(
            batch,
            metrics,
            int(sum(d.lengths.sum() for d in draws)),
            sum(len(d.lengths) for d in draws),
        )

    def _assemble(self, draws: list[Draw], picks: np.ndarray) -> tuple[dict, dict]:
        """Gathers the picked groups of all draws into one batch with advantages."""
        group = self.config.group_size
        sizes = np.max([prompts_lib.padded_sizes(d.prompts) for d in draws], axis=0)
        prompts = [
            prompts_lib.repad_prompts(d.prompts, sizes, pad_id=self.policy.pad_id) for d in draws
        ]
        offsets = np.cumsum([0] + [len(d.prompts["input_ids"]) for d in draws])
        prompt_rows = offsets[picks[:, 0]] + picks[:, 1]
        rows = (prompt_rows[:, None] * group + np.arange(group)).reshape(-1)
        cat = lambda arrays: np.concatenate(arrays, axis=0)
        prompts = {key: cat([p[key] for p in prompts])[prompt_rows] for key in prompts[0]}
        tokens = cat([d.tokens for d in draws])[rows]
        lengths = cat([d.lengths for d in draws])[rows]
        rewards = {name: cat([d.rewards[name] for d in draws])[rows] for name in draws[0].rewards}
        advantages = grpo.advantages(
            jnp.asarray(self.advantage_rewards(rewards)),
            group,
            estimator=self.config.advantage_estimator,
            eps=self.config.advantage_eps,
            normalize_components=bool(self.config.advantage_components),
        )
        completions = {
            "tokens": tokens.astype(np.int32),
            "mask": batch_lib.length_mask(lengths, tokens.shape[1]),
            "advantages": np.asarray(advantages, np.float32),
        }
        return {"prompts": prompts, "completions": completions}, rewards

    def _metrics(self, batch: dict, rewards: dict, informative: int, draws: int) -> dict:
        """Reward statistics per component, completion lengths and sampling counts."""
        lengths = batch["completions"]["mask"].sum(axis=1)
        tokens = batch["completions"]["tokens"]
        last = tokens[np.arange(len(tokens)), np.maximum(lengths.astype(int) - 1, 0)]
        ended = np.isin(last, self.config.eos_ids)
        num_groups = len(lengths) // self.config.group_size
        metrics = {
            "completion/length_mean": lengths.mean(),
            "completion/length_max": lengths.max(),
            "completion/length_min": lengths.min(),
            "completion/truncated_frac": 1.0 - ended.mean(),
            "rollout/draws": draws,
            "rollout/informative_groups_frac": informative / num_groups,
            "advantage/abs_mean": np.abs(batch["completions"]["advantages"]).mean(),
        }
        for name, values in rewards.items():
            metrics[f"reward/{name}/mean"] = values.mean()
            metrics[f"reward/{name}/std"] = values.std()
        return {name: float(value) for name, value in metrics.items()}
