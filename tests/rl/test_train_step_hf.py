"""The train step's completion log-probs (each prompt run once, its G completions decoded
against the prompt's cached keys/values) equal log-softmax of a full-sequence HF forward."""

import jax
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from perception_rl.data import synthetic
from perception_rl.models import from_pretrained
from perception_rl.models.qwen_vl import prompts as prompts_lib
from perception_rl.parallel import hosts, make_mesh
from perception_rl.processing import Processor, tiny_tokenizer_path
from perception_rl.rl import batch as batch_lib
from perception_rl.rl.train_step import StepConfig, TrainStep
from perception_rl.tasks import get_task
from perception_rl.testing import hf_models

GROUP, LENGTH = 2, 12


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_completion_logprobs_equal_a_full_hf_forward(family, tmp_path):
    hf = hf_models.build_hf_model(family, seed=2, vocab_size=1024)
    hf.save_pretrained(tmp_path)
    model = from_pretrained(str(tmp_path))
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)

    processor = Processor.from_pretrained(tiny_tokenizer_path()).with_family(
        family, model.config.vision.tokens_per_second
    )
    formatter = batch_lib.PromptFormatter(get_task("ocr"), processor, family, model.config.vision)
    # Different images and texts: prompts of different lengths, so rows are left-padded.
    records = [formatter(synthetic.generate_example("ocr", i)) for i in range(2)]
    prompts = prompts_lib.pad_prompts([r["prompt"] for r in records], pad_id=0)

    rng = np.random.default_rng(0)
    rows = 2 * GROUP
    tokens = rng.integers(20, 1000, (rows, LENGTH)).astype(np.int32)
    lengths = np.array([LENGTH, 5, 9, 1])
    completions = {
        "tokens": tokens,
        "mask": batch_lib.length_mask(lengths, LENGTH),
        "advantages": np.zeros(rows, np.float32),
    }
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    schedule = optax.constant_schedule(0.0)
    config = StepConfig(group_size=GROUP, logprob_chunk=8)
    step = TrainStep(graphdef, params, config, optax.sgd(schedule), schedule, mesh)
    batch = hosts.global_arrays(
        {"prompts": prompts, "completions": completions}, step.batch_sharding
    )
    ours = np.asarray(step.logprobs(params, batch))

    for row in range(rows):
        prompt = records[row // GROUP]["prompt"]  # a prompt's G completions are consecutive rows
        n = lengths[row]
        ids = np.concatenate([prompt["input_ids"], tokens[row, :n]])[None]
        t = {
            "input_ids": torch.as_tensor(ids, dtype=torch.long),
            "attention_mask": torch.ones(ids.shape, dtype=torch.long),
            "pixel_values": torch.as_tensor(prompt["pixel_values"]),
            "image_grid_thw": torch.as_tensor(prompt["image_grid_thw"]),
        }
        with torch.no_grad():
            logits = hf(**t, mm_token_type_ids=(t["input_ids"] == hf_models.IMAGE).long()).logits
        logp = torch.log_softmax(logits[0].double(), dim=-1).numpy()
        start = len(prompt["input_ids"])  # the first completion token is predicted at P - 1
        theirs = logp[np.arange(start - 1, start - 1 + n), tokens[row, :n]]
        np.testing.assert_allclose(ours[row, :n], theirs, atol=2e-4, err_msg=f"row {row}")
