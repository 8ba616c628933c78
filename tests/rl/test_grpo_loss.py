"""policy_loss against written-out numpy formulas, finite differences and micro-batching."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perception_rl.rl import grpo

KLS = grpo.KL_ESTIMATORS
AGGS = grpo.LOSS_AGGS
# (epsilon_low, epsilon_high): symmetric, DAPO clip-higher, asymmetric and wide.
EPSILONS = [(0.2, None), (0.2, 0.28), (0.1, 0.5)]


def np_kl(lp, ref, estimator):
    if estimator == "k1":
        return lp - ref
    if estimator == "k2":
        return 0.5 * (lp - ref) ** 2
    return np.exp(ref - lp) - (ref - lp) - 1.0


def np_policy_loss(lp, old, ref, adv, mask, *, beta, eps_low, eps_high, kl, agg, max_len=None):
    """Per-token clipped objective and aggregation, one sequence at a time."""
    eps_high = eps_low if eps_high is None else eps_high
    per_seq = []
    for i in range(lp.shape[0]):
        m = mask[i].astype(bool)
        if not m.any():
            continue  # batch-padding row
        ratio = np.exp(lp[i, m] - old[i, m])
        surrogate = np.minimum(ratio * adv[i], np.clip(ratio, 1 - eps_low, 1 + eps_high) * adv[i])
        per_tok = -surrogate
        if ref is not None:
            per_tok = per_tok + beta * np_kl(lp[i, m], ref[i, m], kl)
        per_seq.append(per_tok)
    if agg == "seq_mean_token_mean":
        return np.mean([s.mean() for s in per_seq])
    if agg == "token_mean":
        return np.concatenate(per_seq).sum() / sum(len(s) for s in per_seq)
    return np.mean([s.sum() / (max_len or lp.shape[1]) for s in per_seq])


def np_metrics(lp, old, ref, adv, mask, eps_low, eps_high, kl, entropy):
    eps_high = eps_low if eps_high is None else eps_high
    m = mask.astype(bool)
    ratio = np.exp(lp - old)
    a = np.broadcast_to(adv[:, None], lp.shape)
    low = (ratio < 1 - eps_low) & (a < 0)
    high = (ratio > 1 + eps_high) & (a > 0)
    return {
        "ratio": ratio[m].mean(),
        "clip_frac_low": low[m].mean(),
        "clip_frac_high": high[m].mean(),
        "clip_frac": (low | high)[m].mean(),
        "kl": np_kl(lp, ref, kl)[m].mean(),
        "entropy": entropy[m].mean(),
    }


def random_batch(seed, batch=12, length=9, dtype=np.float32):
    """Log-probs with ratios far enough from 1 to clip, ragged masks and one padding row."""
    rng = np.random.default_rng(seed)
    lp = -rng.exponential(1.0, (batch, length))
    old = lp + rng.normal(0.0, 0.5, lp.shape)
    ref = lp + rng.normal(0.0, 0.5, lp.shape)
    adv = rng.normal(0.0, 1.0, batch)
    lengths = rng.integers(1, length + 1, batch)
    lengths[-1] = 0
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.float32)
    entropy = rng.uniform(0.0, 3.0, lp.shape)
    return [x.astype(dtype) for x in (lp, old, ref, adv, mask, entropy)]


@pytest.mark.parametrize("kl,agg,eps", list(itertools.product(KLS, AGGS, EPSILONS)))
def test_policy_loss_matches_formula(kl, agg, eps):
    seed = 100 * KLS.index(kl) + 10 * AGGS.index(agg) + EPSILONS.index(eps)
    lp, old, ref, adv, mask, entropy = random_batch(seed)
    eps_low, eps_high = eps
    loss, metrics = grpo.policy_loss(
        lp,
        old,
        ref,
        adv,
        mask,
        grpo.LossSettings(
            beta=0.04, epsilon_low=eps_low, epsilon_high=eps_high, kl_estimator=kl, loss_agg=agg
        ),
        entropy=entropy,
    )
    expected = np_policy_loss(
        lp.astype(np.float64),
        old,
        ref,
        adv,
        mask,
        beta=0.04,
        eps_low=eps_low,
        eps_high=eps_high,
        kl=kl,
        agg=agg,
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-6, atol=1e-6)
    expected_metrics = np_metrics(
        lp.astype(np.float64), old, ref, adv, mask, eps_low, eps_high, kl, entropy
    )
    assert metrics.keys() == expected_metrics.keys()
    for name, value in expected_metrics.items():
        np.testing.assert_allclose(metrics[name], value, rtol=1e-6, atol=1e-6, err_msg=name)
    # Both clip directions fire on this data, so the clip branches are really exercised.
    assert expected_metrics["clip_frac_low"] > 0 and expected_metrics["clip_frac_high"] > 0


def test_policy_loss_without_reference_and_with_max_tokens_norm():
    lp, old, _, adv, mask, _ = random_batch(seed=1)
    loss, metrics = grpo.policy_loss(
        lp,
        old,
        None,
        adv,
        mask,
        grpo.LossSettings(
            beta=0.04,
            epsilon_low=0.2,
            kl_estimator="k3",
            loss_agg="seq_mean_token_sum_norm",
            max_tokens_norm=32,
        ),
    )
    expected = np_policy_loss(
        lp.astype(np.float64),
        old,
        None,
        adv,
        mask,
        beta=0.04,
        eps_low=0.2,
        eps_high=None,
        kl="k3",
        agg="seq_mean_token_sum_norm",
        max_len=32,
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-6, atol=1e-6)
    assert "kl" not in metrics and "entropy" not in metrics


@pytest.mark.parametrize("kl", KLS)
def test_on_policy_reduces_to_perception_r1(kl):
    """old_logps=None: ratio 1, loss -mean(A) + beta*KL, gradient -A*w + beta*dKL/dlp*w."""
    lp, _, ref, adv, mask, _ = random_batch(seed=2)
    beta = 0.04
    fn = lambda x: grpo.policy_loss(
        x,
        None,
        ref,
        adv,
        mask,
        grpo.LossSettings(
            beta=beta, epsilon_low=0.2, kl_estimator=kl, loss_agg="seq_mean_token_mean"
        ),
    )
    (loss, metrics), grad = jax.value_and_grad(fn, has_aux=True)(jnp.asarray(lp))
    np.testing.assert_allclose(metrics["ratio"], 1.0, rtol=1e-7)
    assert metrics["clip_frac"] == 0.0
    lengths = mask.sum(1, keepdims=True)
    rows = (lengths[:, 0] > 0).sum()
    weights = mask / np.maximum(lengths, 1) / rows
    dkl = {"k1": np.ones_like(lp), "k2": lp - ref, "k3": 1.0 - np.exp(ref - lp)}[kl]
    np.testing.assert_allclose(grad, weights * (-adv[:, None] + beta * dkl), rtol=1e-5, atol=1e-7)
    kl_tokens = np_kl(lp.astype(np.float64), ref, kl)
    expected = np.mean(
        [
            (-adv[i] + beta * kl_tokens[i, mask[i] > 0]).mean()
            for i in range(len(adv))
            if mask[i].any()
        ]
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kl,agg", list(itertools.product(KLS, AGGS)))
def test_gradient_matches_finite_differences(kl, agg):
    """A toy policy: logps = log_softmax(theta)[tokens]; d loss / d theta in float64."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        batch, length, vocab = 3, 4, 5
        theta = rng.normal(0.0, 1.0, (batch, length, vocab))
        tokens = rng.integers(0, vocab, (batch, length))
        gather = lambda t: jnp.take_along_axis(jax.nn.log_softmax(t), tokens[..., None], -1)[..., 0]
        old = np.asarray(gather(theta)) + rng.normal(0.0, 0.3, (batch, length))
        ref = np.asarray(gather(theta)) + rng.normal(0.0, 0.3, (batch, length))
        adv = np.array([1.3, -0.7, 0.4])
        mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], np.float64)

        @jax.jit
        def loss(t):
            return grpo.policy_loss(
                gather(t),
                old,
                ref,
                adv,
                mask,
                grpo.LossSettings(
                    beta=0.3, epsilon_low=0.1, epsilon_high=0.15, kl_estimator=kl, loss_agg=agg
                ),
            )[0]

        grad = np.asarray(jax.grad(loss)(jnp.asarray(theta)))
        assert grad.dtype == np.float64 and np.abs(grad).max() > 1e-3
        step, numeric = 1e-6, np.zeros_like(theta)
        for idx in np.ndindex(theta.shape):
            delta = np.zeros_like(theta)
            delta[idx] = step
            numeric[idx] = (loss(theta + delta) - loss(theta - delta)) / (2 * step)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("agg", AGGS)
def test_micro_batch_accumulation_equals_full_batch(agg):
    """Sums of LossTerms over micro-batches, then divide: loss, metrics and gradients match."""
    lp, old, ref, adv, mask, entropy = random_batch(seed=4, batch=7, length=10)
    mask[4:7, 7:] = 0.0  # short completions in the last micro-batch
    settings = grpo.LossSettings(
        beta=0.04,
        epsilon_low=0.2,
        epsilon_high=0.28,
        kl_estimator="k3",
        loss_agg=agg,
        max_tokens_norm=10,
    )

    @jax.jit
    @functools.partial(jax.grad, has_aux=True)
    def micro_grad(x, old, ref, adv, mask, entropy):
        terms = grpo.policy_loss_terms(x, old, ref, adv, mask, settings, entropy=entropy)
        return terms.loss_sum, terms

    full_fn = jax.jit(lambda x: grpo.policy_loss(x, old, ref, adv, mask, settings, entropy=entropy))
    (full_loss, full_metrics), full_grad = jax.value_and_grad(full_fn, has_aux=True)(lp)

    # The last micro-batch is cut to the width its masks need, as a length bucket would be.
    splits = [(slice(0, 3), 10), (slice(3, 4), 10), (slice(4, 7), 7)]
    total, grad = None, np.zeros_like(lp)
    for rows, width in splits:
        sl = (rows, slice(0, width))
        g, terms = micro_grad(lp[sl], old[sl], ref[sl], adv[rows], mask[sl], entropy[sl])
        grad[sl] += np.asarray(g)
        total = terms if total is None else jax.tree.map(jnp.add, total, terms)

    np.testing.assert_allclose(total.loss, full_loss, rtol=1e-6)
    np.testing.assert_allclose(grad / total.weight, full_grad, rtol=1e-5, atol=1e-8)
    for name, value in full_metrics.items():
        np.testing.assert_allclose(total.metrics()[name], value, rtol=1e-6, err_msg=name)


def test_policy_loss_jits_and_rejects_unknown_options():
    lp, old, ref, adv, mask, _ = random_batch(seed=5)
    jitted = jax.jit(grpo.policy_loss, static_argnames=("settings",))
    loss, _ = jitted(
        lp,
        old,
        ref,
        adv,
        mask,
        grpo.LossSettings(beta=0.04, epsilon_low=0.2, kl_estimator="k2", loss_agg="token_mean"),
    )
    eager, _ = grpo.policy_loss(
        lp,
        old,
        ref,
        adv,
        mask,
        grpo.LossSettings(beta=0.04, epsilon_low=0.2, kl_estimator="k2", loss_agg="token_mean"),
    )
    np.testing.assert_allclose(loss, eager, rtol=1e-6)
    with pytest.raises(ValueError, match="loss_agg"):
        grpo.LossSettings(loss_agg="sum")
    with pytest.raises(ValueError, match="kl_estimator"):
        grpo.LossSettings(kl_estimator="k4")
    for bad in (
        {"beta": -0.1},
        {"epsilon_low": 1.0},
        {"epsilon_high": -0.1},
        {"max_tokens_norm": 0},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            grpo.LossSettings(**bad)


@pytest.mark.parametrize("kl", KLS)
def test_kl_penalty_formulas(kl):
    rng = np.random.default_rng(6)
    lp, ref = -rng.exponential(1.0, (2, 50)), -rng.exponential(1.0, (2, 50))
    np.testing.assert_allclose(
        grpo.kl_penalty(lp.astype(np.float32), ref.astype(np.float32), kl),
        np_kl(lp.astype(np.float32).astype(np.float64), ref.astype(np.float32), kl),
        rtol=1e-5,
        atol=1e-6,
    )
    assert float(grpo.kl_penalty(jnp.full(3, -1.5), jnp.full(3, -1.5), kl).max()) == 0.0


@pytest.mark.parametrize(
    "tokens,eos,expected",
    [
        ([5, 6, 2, 7, 8], 2, [1, 1, 1, 0, 0]),  # EOS in the middle is kept
        ([2, 6, 7], 2, [1, 0, 0]),  # EOS first
        ([5, 6, 7], 2, [1, 1, 1]),  # no EOS: keep all (length-capped)
        ([5, 6, 2], 2, [1, 1, 1]),  # EOS last
        ([5, 2, 2, 2], 2, [1, 1, 0, 0]),  # EOS padding after the first EOS
        ([5, 9, 6, 2, 7], (2, 9), [1, 1, 0, 0, 0]),  # several EOS ids: the earliest wins
    ],
)
def test_completion_mask(tokens, eos, expected):
    mask = grpo.completion_mask(jnp.asarray([tokens, tokens], jnp.int32), eos)
    np.testing.assert_array_equal(mask, [expected, expected])
    assert mask.dtype == jnp.float32
