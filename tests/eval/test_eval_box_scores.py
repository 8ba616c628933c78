"""Per-box sequence likelihoods on hand-computed cases (one token per character)."""

import math

import numpy as np
import pytest

from perception_rl.eval.box_scores import box_likelihoods, detection_scores


def _case():
    text = '[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [10,20,30,40], "label": "b"}]'
    pieces = list(text)
    logprobs = np.full(len(text), -0.1)
    first = text.index("[1, 2")
    second = text.index("[10,")
    logprobs[first : first + len("[1, 2, 3, 4]")] = -1.0
    logprobs[second] = -2.0  # only the bracket of the second box is unlikely
    return text, pieces, logprobs


def test_each_box_scores_the_tokens_of_its_coordinates():
    text, pieces, logprobs = _case()
    scores = box_likelihoods(text, pieces, logprobs, np.array([[1, 2, 3, 4], [10, 20, 30, 40]]))
    span = len("[10,20,30,40]")
    assert scores[0] == pytest.approx(math.exp(-1.0))
    assert scores[1] == pytest.approx(math.exp((-2.0 - 0.1 * (span - 1)) / span))


def test_detection_scores_follow_the_kept_boxes():
    text, pieces, logprobs = _case()
    # Label "a" is not in the vocabulary: only the second box is kept, and scored as itself.
    scores = detection_scores(text, pieces, logprobs, {"b": 0})
    span = len("[10,20,30,40]")
    assert scores == [pytest.approx(math.exp((-2.0 - 0.1 * (span - 1)) / span))]


def test_unfound_boxes_and_split_characters_fall_back_to_the_whole_completion():
    text, pieces, logprobs = _case()
    whole = math.exp(np.mean(logprobs))
    assert box_likelihoods(text, pieces, logprobs, np.array([[7, 7, 9, 9]])) == [
        pytest.approx(whole)
    ]
    broken = pieces[:-1] + ["\ufffd"]
    assert box_likelihoods(text, broken, logprobs, np.array([[1, 2, 3, 4]])) == [
        pytest.approx(whole)
    ]


def test_runner_writes_scores_for_likelihood_scored_detection(monkeypatch):
    import types

    from test_eval_runner import OracleGenerate

    from perception_rl.data import synthetic
    from perception_rl.eval import runner
    from perception_rl.models.qwen_vl import tiny
    from perception_rl.policy import make_processor
    from perception_rl.processing import TINY_TOKEN_IDS, tiny_tokenizer_path
    from perception_rl.tasks import get_task

    task = get_task("detection", label_names=synthetic.LABELS, score_detections="likelihood")
    config = types.SimpleNamespace(tokenizer=None, data=None)
    processor = make_processor(config, tiny_tokenizer_path(), tiny("qwen2_5_vl"))
    examples = [synthetic.generate_example("detection", i, split="val") for i in range(2)]
    monkeypatch.setattr(
        "perception_rl.sampling.generate", OracleGenerate(task, "qwen2_5_vl", processor, examples)
    )
    model = types.SimpleNamespace(config=tiny("qwen2_5_vl", **TINY_TOKEN_IDS))
    records, annotations = runner.predict(
        task, model, processor, examples, "qwen2_5_vl", batch_size=2, max_new_tokens=8
    )
    for record in records:
        prediction = record["prediction"]
        # The oracle's log-probs are 0: every box has likelihood 1.
        assert prediction["scores"] == [1.0] * len(prediction["boxes"]) and prediction["boxes"]
    assert task.metrics([r["prediction"] for r in records], annotations)["AP50"] == 1.0
