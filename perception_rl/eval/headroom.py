"""Headroom of a policy: pass@k at the sampling temperature on the first held-out examples.

    result = headroom.evaluate(config, policy_dir, num_examples=100, ks=(1, 4, 8))

GRPO can only reinforce answers the policy already samples: pass@k (some of k sampled answers is
right) bounds what it can convert, and pass@1 at the training temperature is what the training
reward sees. Before and after GRPO, these say what it could convert and what it did.

Each example is sampled `max(ks)` times (`sampling.generate(num_samples=n)`: one prefill per
prompt) with the config's rollout settings (`rl.temperature`, `rl.top_k`, `rl.top_p`); every
sample is parsed like evaluation (`Task.predict`) and scored by the task's headline metric on
that example alone (`eval.paired.per_example_scores`). pass@k is the unbiased estimator from
n samples (Chen et al. 2021); for non-binary scores it is the expected best of k.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from perception_rl.data.sources import task_from_config
from perception_rl.errors import config_value
from perception_rl.eval import paired, runner
from perception_rl.tasks import ImageGeometry


def pass_at_k(scores: np.ndarray, k: int) -> float:
    """Mean over examples of the expected best of `k` of the `n` sampled scores (`[N, n]`)
    drawn without replacement: with 0/1 scores, `1 − C(n − c, k) / C(n, k)`.

    Raises:
      ValueError: k outside [1, n].
    """
    scores = np.sort(np.asarray(scores, np.float64), axis=1)
    n = scores.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= {n} samples per example.")
    # The i-th smallest (0-based) is the best of a k-subset when the other k-1 are below it.
    weights = np.array([math.comb(i, k - 1) for i in range(n)], np.float64) / math.comb(n, k)
    return float((scores @ weights).mean())


def sample_scores(
    task,
    model,
    processor,
    source,
    family: str,
    *,
    key: str,
    num_samples: int,
    prompts: int,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int,
) -> np.ndarray:
    """`[len(source), num_samples]` headline scores of sampled completions."""
    import jax

    from perception_rl.models.qwen_vl.prompts import prompt_batch
    from perception_rl.policy import stop_token_ids
    from perception_rl.sampling import generate

    tokenizer = processor.tokenizer
    eos = list(stop_token_ids(tokenizer, getattr(model.config, "eos_token_id", None)))
    rows = []
    for start in range(0, len(source), prompts):
        examples = [source[i] for i in range(start, min(start + prompts, len(source)))]
        # A short last batch is padded with copies: one compiled shape for every batch.
        padded = examples + examples[-1:] * (prompts - len(examples))
        batch = processor(
            [task.conversation(e, family) for e in padded],
            [[Image.fromarray(e["image"])] for e in padded],
        )
        result = generate(
            model,
            prompt_batch(batch, model.config, pad_id=processor.pad_token_id),
            max_new_tokens=max_new_tokens,
            key=jax.random.key(seed + start),
            num_samples=num_samples,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_ids=eos,
            pad_id=processor.pad_token_id,
        )
        for row, example in enumerate(examples):
            samples = range(row * num_samples, (row + 1) * num_samples)
            texts = [
                tokenizer.decode(
                    result.tokens[s, : result.lengths[s]].tolist(),
                    skip_special_tokens=task.skip_special_tokens,
                )
                for s in samples
            ]
            rows.append(_scores(task, example, texts, processor, family, key))
    return np.asarray(rows, np.float64)


def _scores(task, example, texts: Sequence[str], processor, family: str, key: str) -> list:
    """The headline metric of each completion of `example`, parsed as evaluation parses it."""
    geometry = ImageGeometry.for_image(*example["image"].shape[:2], processor.image_processor)
    truth = runner.annotation(example)
    return [task.metrics([task.predict(t, geometry, family)], [truth])[key] for t in texts]


def evaluate(config, policy: str, *, num_examples: int, ks: Sequence[int], prompts: int) -> dict:
    """pass@k of the exported `policy` on the first `num_examples` of `eval.split` (module doc).

    Returns:
      `{"key", "num_examples", "num_samples", "temperature", "top_k", "top_p",
        "pass@k": {k: value}, "scores": [[...], ...]}` (scores per example and sample).
    """
    task = task_from_config(config)
    config = _policy_config(config, policy, num_examples)
    source = runner.make_source(config, task, config_value(config, "eval.split"))
    model, processor = runner.load_checkpoint(config)
    key, rl = paired.headline(task), config.rl
    scores = sample_scores(
        task,
        model,
        processor,
        source,
        model.config.family,
        key=key,
        num_samples=max(ks),
        prompts=prompts,
        max_new_tokens=int(config.eval.max_new_tokens),
        temperature=float(rl.temperature),
        top_k=int(rl.top_k),
        top_p=float(rl.top_p),
        seed=int(config.seed),
    )
    return {
        "key": key,
        "num_examples": len(scores),
        "num_samples": max(ks),
        "temperature": float(rl.temperature),
        "top_k": int(rl.top_k),
        "top_p": float(rl.top_p),
        "pass@k": {str(k): pass_at_k(scores, k) for k in ks},
        "scores": scores.tolist(),
    }


def _policy_config(config, policy: str, num_examples: int) -> Any:
    """`config` evaluating the exported `policy` on the first `num_examples` of the split."""
    config = config.copy_and_resolve_references()
    config.unlock()
    config.model = config.checkpoint = policy
    config.tokenizer = None
    limit = config.eval.get("num_examples")
    config.eval.num_examples = min(num_examples, limit) if limit else num_examples
    return config
