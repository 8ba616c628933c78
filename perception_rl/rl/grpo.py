"""GRPO maths: group advantages, KL estimators, the clipped policy loss, completion masks and
dynamic sampling.

Everything except `DynamicSampler` is pure and jittable. Batches are prompt-major: the G
completions of prompt p sit at rows p*G ... p*G + G - 1 of every [B*G, ...] array.

The defaults reproduce Perception-R1's released trainer (seed_spec A2): GRPO advantages with the
unbiased group std, k3 KL with beta = 0.04, the mean over sequences of per-sequence token means,
and one update per rollout batch, where the ratio is exp(lp - sg(lp)) = 1 and the clip is inert.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ADVANTAGE_ESTIMATORS = ("grpo", "drgrpo")
KL_ESTIMATORS = ("k1", "k2", "k3")
LOSS_AGGS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r}; expected one of {', '.join(choices)}.")


def _group_advantages(rewards: jax.Array, group_size: int, estimator: str, eps: float):
    """Advantages of a [N] or [N, C] reward array, normalised within each group of G rows."""
    groups = rewards.reshape(-1, group_size, *rewards.shape[1:])
    centred = groups - groups.mean(axis=1, keepdims=True)
    if estimator == "grpo":
        centred = centred / (groups.std(axis=1, ddof=1, keepdims=True) + eps)
    return centred.reshape(rewards.shape)


def advantages(
    rewards: jax.Array,
    group_size: int,
    *,
    estimator: str = "grpo",
    eps: float = 1e-4,
    normalize_components: bool = False,
) -> jax.Array:
    """Per-completion advantages from rewards grouped by prompt.

    `grpo` (Perception-R1, DeepSeekMath): A = (r - mean_g) / (std_g + eps), with the unbiased
    (ddof = 1) group std as torch computes it. `drgrpo` (Dr. GRPO): A = r - mean_g; dropping the
    std removes the question-difficulty bias of up-weighting near-uniform groups.

    Rewards may carry a trailing component axis (format, accuracy, ...). By default the components
    are summed first, as Perception-R1 does. With `normalize_components` each component is
    normalised within its group on its own and the per-component advantages are summed (GDPO
    style), so a component with a small spread, such as a format reward that nearly always
    passes, is not drowned out by one with a large spread. The summed advantage then scales with
    the number of components; GDPO's extra batch-level rescaling is not applied.

    Args:
      rewards: [B*G] total rewards or [B*G, C] per-component rewards, prompt-major.
      group_size: G, the completions per prompt; static.
      estimator: "grpo" or "drgrpo".
      eps: added to the group std ("grpo" only); keeps zero-variance groups at A = 0.
      normalize_components: normalise each column of [B*G, C] rewards before summing.

    Returns:
      [B*G] advantages, float32 (float64 for float64 rewards).
    """
    _check_choice("estimator", estimator, ADVANTAGE_ESTIMATORS)
    if estimator == "grpo" and group_size < 2:
        raise ValueError("The grpo estimator needs group_size >= 2 for an unbiased std.")
    rewards = jnp.asarray(rewards)
    rewards = rewards.astype(jnp.promote_types(rewards.dtype, jnp.float32))
    if rewards.ndim == 2 and not normalize_components:
        rewards = rewards.sum(axis=-1)
    adv = _group_advantages(rewards, group_size, estimator, eps)
    return adv.sum(axis=-1) if adv.ndim == 2 else adv


def zero_variance_groups(rewards: jax.Array, group_size: int) -> jax.Array:
    """Marks the groups whose G rewards are all equal, so every advantage in them is zero.

    Args:
      rewards: [B*G] rewards or [B*G, C] components, prompt-major. With components a group counts
        only if every component is constant, which is what zeroes `normalize_components`
        advantages too.
      group_size: G.

    Returns:
      [B] bool, True where the group carries no learning signal apart from the KL term.
    """
    rewards = jnp.asarray(rewards)
    groups = rewards.reshape(-1, group_size, *rewards.shape[1:])
    constant = groups == groups[:, :1]
    return constant.reshape(constant.shape[0], -1).all(axis=1)


def kl_penalty(logps: jax.Array, ref_logps: jax.Array, estimator: str = "k3") -> jax.Array:
    """Per-token estimate of KL(pi || pi_ref) from log-probs of tokens sampled from pi.

    With d = ref_logps - logps: k1 = -d (unbiased, can go negative), k2 = d^2 / 2 (Kimi; its
    gradient is the true KL's to first order), k3 = exp(d) - d - 1 (Schulman; unbiased and
    non-negative, Perception-R1's default).
    """
    _check_choice("kl_estimator", estimator, KL_ESTIMATORS)
    delta = ref_logps - logps
    if estimator == "k1":
        return -delta
    if estimator == "k2":
        return 0.5 * jnp.square(delta)
    return jnp.exp(delta) - delta - 1.0


def completion_mask(tokens: jax.Array, eos_ids: int | Sequence[int]) -> jax.Array:
    """1 for completion tokens up to and including the first EOS, 0 after it.

    A row without any EOS is kept whole (a completion cut at the length limit).

    Args:
      tokens: [B, T] completion token ids.
      eos_ids: one id or several (e.g. <|im_end|> and <|endoftext|>).

    Returns:
      [B, T] float32 mask.
    """
    is_eos = jnp.isin(tokens, jnp.asarray(eos_ids, tokens.dtype)).astype(jnp.int32)
    eos_before = jnp.cumsum(is_eos, axis=-1) - is_eos  # EOS strictly before position t.
    return (eos_before == 0).astype(jnp.float32)


class LossTerms(NamedTuple):
    """Sums whose ratios give the loss and metrics; add them over micro-batches, then divide.

    Every field is a sum over a micro-batch, so `jax.tree.map(jnp.add, a, b)` merges two
    micro-batches and `loss` / `metrics()` of the merged terms equal those of the full batch for
    every `loss_agg`. The weight depends only on masks, never on parameters, so gradients of
    `loss_sum` accumulate the same way and are divided once at the end:

        def micro_loss(params, mb):
          terms = policy_loss_terms(logps_fn(params, mb), ..., mb.mask, ...)
          return terms.loss_sum, terms

        for mb in micro_batches:  # or lax.scan
          g, t = jax.grad(micro_loss, has_aux=True)(params, mb)
          grads, total = jax.tree.map(jnp.add, (grads, total), (g, t))  # after the first
        grads = jax.tree.map(lambda x: x / jnp.maximum(total.weight, 1.0), grads)
        loss, metrics = total.loss, total.metrics()

    Dividing each micro-batch by its own weight instead (a mean of micro-batch losses) is biased
    whenever micro-batches hold different numbers of sequences or tokens. If the total weight is
    computed from the masks first, differentiating `loss_sum / total_weight` per micro-batch and
    summing is equivalent.

    Attributes:
      loss_sum: sum of weighted per-token objectives.
      weight: the loss denominator: sequences for seq_mean_*, tokens for token_mean.
      num_tokens: completion tokens, the denominator of the per-token metrics.
      metric_sums: masked per-token sums of kl, ratio, clip_frac_low/high, clip_frac, entropy.
    """

    loss_sum: jax.Array
    weight: jax.Array
    num_tokens: jax.Array
    metric_sums: dict[str, jax.Array]

    @property
    def loss(self) -> jax.Array:
        return self.loss_sum / jnp.maximum(self.weight, 1.0)

    def metrics(self) -> dict[str, jax.Array]:
        """Token means of the per-token metrics."""
        denom = jnp.maximum(self.num_tokens, 1.0)
        return {name: total / denom for name, total in self.metric_sums.items()}


def _token_weights(mask: jax.Array, loss_agg: str, max_tokens_norm: float | None):
    """Per-token weights w and their normaliser D, so that loss = sum(w * l) / D."""
    lengths = mask.sum(axis=-1, keepdims=True)
    # Only rows with a completion count as sequences, so all-masked batch-padding rows are inert.
    num_sequences = (lengths > 0).sum().astype(mask.dtype)
    if loss_agg == "seq_mean_token_mean":
        return mask / jnp.maximum(lengths, 1.0), num_sequences
    if loss_agg == "token_mean":
        return mask, mask.sum()
    norm = mask.shape[-1] if max_tokens_norm is None else max_tokens_norm
    return mask / norm, num_sequences


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """The GRPO objective's settings, validated once (a frozen, hashable jit static).

    Attributes:
      beta: KL coefficient; 0 drops the reference term.
      epsilon_low: lower clip range, r >= 1 - epsilon_low.
      epsilon_high: upper clip range (DAPO's clip-higher); None means epsilon_low.
      kl_estimator: "k1", "k2" or "k3" (see `kl_penalty`).
      loss_agg: one of LOSS_AGGS.
      max_tokens_norm: Dr. GRPO's constant divisor, normally the maximum completion length;
        None means T. Set it when micro-batches are padded to different lengths.
    """

    beta: float = 0.04
    epsilon_low: float = 0.2
    epsilon_high: float | None = None
    kl_estimator: str = "k3"
    loss_agg: str = "seq_mean_token_mean"
    max_tokens_norm: float | None = None

    def __post_init__(self):
        _check_choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        _check_choice("loss_agg", self.loss_agg, LOSS_AGGS)
        if not self.beta >= 0:
            raise ValueError(f"beta={self.beta} must be >= 0.")
        if not 0 <= self.epsilon_low < 1:
            raise ValueError(f"epsilon_low={self.epsilon_low} must be in [0, 1).")
        if self.epsilon_high is not None and not self.epsilon_high >= 0:
            raise ValueError(f"epsilon_high={self.epsilon_high} must be >= 0.")
        if self.max_tokens_norm is not None and not self.max_tokens_norm > 0:
            raise ValueError(f"max_tokens_norm={self.max_tokens_norm} must be > 0.")

    @property
    def clip_range(self) -> tuple[float, float]:
        """(low, high): the ratio is clipped to [1 - low, 1 + high]."""
        high = self.epsilon_low if self.epsilon_high is None else self.epsilon_high
        return self.epsilon_low, high


def policy_loss_terms(
    logps: jax.Array,
    old_logps: jax.Array | None,
    ref_logps: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    settings: LossSettings = LossSettings(),
    *,
    entropy: jax.Array | None = None,
) -> LossTerms:
    """The summable form of `policy_loss`; see there for the arguments and `LossTerms` for use."""
    epsilon_low, epsilon_high = settings.clip_range
    if old_logps is None:
        old_logps = jax.lax.stop_gradient(logps)
    dtype = jnp.promote_types(logps.dtype, jnp.float32)
    mask = mask.astype(dtype)
    adv = jnp.asarray(advantages, dtype)[:, None]

    ratio = jnp.exp(logps - old_logps)
    clipped = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    per_token = -jnp.minimum(ratio * adv, clipped * adv)
    metric_values = {
        "ratio": ratio,
        # The clipped branch is the minimum (so carries no gradient) exactly in these cases.
        "clip_frac_low": ((ratio < 1.0 - epsilon_low) & (adv < 0)).astype(jnp.float32),
        "clip_frac_high": ((ratio > 1.0 + epsilon_high) & (adv > 0)).astype(jnp.float32),
    }
    metric_values["clip_frac"] = metric_values["clip_frac_low"] + metric_values["clip_frac_high"]
    if ref_logps is not None:
        kl = kl_penalty(logps, ref_logps, settings.kl_estimator)
        per_token = per_token + settings.beta * kl
        metric_values["kl"] = kl
    if entropy is not None:
        metric_values["entropy"] = entropy

    weights, weight = _token_weights(mask, settings.loss_agg, settings.max_tokens_norm)
    metric_sums = {
        name: jnp.sum(jax.lax.stop_gradient(value) * mask) for name, value in metric_values.items()
    }
    return LossTerms(jnp.sum(weights * per_token), weight, mask.sum(), metric_sums)


def policy_loss(
    logps: jax.Array,
    old_logps: jax.Array | None,
    ref_logps: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    settings: LossSettings = LossSettings(),
    *,
    entropy: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped GRPO surrogate with a KL penalty, aggregated over completion tokens.

    Per token: l = -min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A) + beta * KL, with
    r = exp(logp - old_logp). For a single update per rollout batch pass old_logps=None, which
    means stop_gradient(logps): r = 1, the clip is inert and l reduces exactly to Perception-R1's
    -A * exp(lp - sg(lp)) + beta * KL, whose gradient is -A * grad(lp) + beta * grad(KL).

    Aggregation, with m the mask and |o_i| = sum_t m_it:
      seq_mean_token_mean (Perception-R1, GRPO): mean_i (1/|o_i|) sum_t m_it l_it.
      token_mean (DAPO): sum_it m_it l_it / sum_it m_it; long completions weigh more.
      seq_mean_token_sum_norm (Dr. GRPO): mean_i sum_t m_it l_it / max_tokens_norm; no length bias.
    The sequence means run over rows with at least one completion token.

    Args:
      logps: [B, T] log-probs of the sampled tokens under the current policy (differentiated).
      old_logps: [B, T] log-probs under the policy that sampled the rollouts (for mu > 1
        updates per batch), or None for a single on-policy update.
      ref_logps: [B, T] log-probs under the frozen reference policy, or None for no KL term.
      advantages: [B] per-completion advantages.
      mask: [B, T] completion mask (see `completion_mask`).
      settings: beta, clip ranges, KL estimator, aggregation (`LossSettings`).
      entropy: optional [B, T] per-token policy entropy, reported as a metric only.

    Returns:
      The scalar loss and token-mean metrics: kl (when ref_logps is given), ratio, clip_frac_low,
      clip_frac_high, clip_frac and entropy (when given).
    """
    terms = policy_loss_terms(
        logps, old_logps, ref_logps, advantages, mask, settings, entropy=entropy
    )
    return terms.loss, terms.metrics()


@dataclasses.dataclass(frozen=True)
class DynamicSample:
    """The outcome of `DynamicSampler.sample`.

    Attributes:
      batches: every batch drawn, in order (whatever the draw function returned).
      picks: [num_groups, 2] int array of (batch index, group index) rows selecting the groups to
        train on: groups with reward variance first, in draw order, then zero-variance fillers.
      num_informative: how many picks have non-zero reward variance.
    """

    batches: list[Any]
    picks: np.ndarray
    num_informative: int

    @property
    def num_draws(self) -> int:
        return len(self.batches)


@dataclasses.dataclass(frozen=True)
class DynamicSampler:
    """DAPO-style dynamic sampling: keep drawing prompts until enough groups carry signal.

    A group whose G rewards are all equal has zero advantage everywhere and only feeds the KL
    term, so it wastes its share of the batch. The sampler calls `draw(n)` (generate rollouts for
    n fresh prompts and score them), keeps the groups with reward variance and asks for the
    shortfall again, at most `max_retries` times after the first draw. If the retries run out,
    the batch is completed with zero-variance groups so its shape stays static; those train on
    the KL term only. Host-side: `draw` runs jitted sampling and reward code itself.

    The caller gathers its training batch from the picks, e.g. for rollouts with a leading
    [n * G] axis:

        sample = sampler.sample(draw, num_groups=B)
        rows = [sample.batches[b].tokens[g * G:(g + 1) * G] for b, g in sample.picks]
        tokens = np.concatenate(rows)

    Attributes:
      group_size: G, completions per prompt.
      max_retries: extra draws allowed after the first; 0 disables refilling (filter only).
    """

    group_size: int
    max_retries: int

    def sample(
        self, draw: Callable[[int], tuple[Any, np.ndarray]], num_groups: int
    ) -> DynamicSample:
        """Draws until `num_groups` groups have reward variance or the retries run out.

        Args:
          draw: called with the number of groups still missing; returns (batch, rewards) with
            rewards [n * G] (or [n * G, C]) for the n >= 1 groups it drew, prompt-major. It may
            return more groups than asked (e.g. a fixed-size batch); extras are left unpicked.
          num_groups: B, the groups the training batch needs.

        Returns:
          The drawn batches and the (batch, group) picks, `num_groups` of them.

        Raises:
          ValueError: if all draws together hold fewer than `num_groups` groups.
        """
        batches, informative, fillers = [], [], []
        for _ in range(1 + self.max_retries):
            batch, rewards = draw(num_groups - len(informative))
            zero = np.asarray(zero_variance_groups(np.asarray(rewards), self.group_size))
            informative += [(len(batches), g) for g in np.flatnonzero(~zero)]
            fillers += [(len(batches), g) for g in np.flatnonzero(zero)]
            batches.append(batch)
            if len(informative) >= num_groups:
                break
        picks = (informative + fillers)[:num_groups]
        if len(picks) < num_groups:
            raise ValueError(
                f"Drew {len(picks)} groups in total, fewer than the {num_groups} needed."
            )
        return DynamicSample(
            batches=batches,
            picks=np.asarray(picks, np.int64).reshape(num_groups, 2),
            num_informative=min(len(informative), num_groups),
        )
