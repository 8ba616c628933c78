"""Fuzzing: any text gives finite rewards inside each reward's documented range, never raises."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perception_rl import rewards

TARGETS = {
    "grounding": {"box": [100, 100, 300, 400]},
    "counting": {"points": [[10, 20], [500, 500], [999, 0]]},
    "ocr": {"text": "Hello  wörld 中文\n"},
    "detection": {
        "boxes": [[10, 10, 50, 80], [0, 0, 640, 480]],
        "labels": ["person", "toothbrush"],
    },
    "dip": {"boxes": [[10, 10, 50, 80], [60, 10, 90, 80]], "ignore": [[0, 0, 5, 5]]},
}
# fmt: off
FRAGMENTS = [
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|im_end|>",
    "<|endoftext|>", "<think>", "</think>", "<look>", "</look>", "<answer>", "</answer>",
    "```json", "```", '{"bbox_2d": ', '"label": "person"', "[", "]", "(", ")", "{", "}", ",",
    " ", "\n", "NaN", "Infinity", "-", ".", "1e999",
]
# fmt: on
numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=1, max_value=600).map(lambda n: "9" * n),
).map(str)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.floats(), st.integers(), st.text(max_size=8)),
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.sampled_from(["bbox_2d", "label", "x"]), children, max_size=3),
    ),
    max_leaves=20,
).map(json.dumps)
texts = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.one_of(st.sampled_from(FRAGMENTS), numbers, json_values, st.text(max_size=5)),
        max_size=40,
    ).map("".join),
    json_values,
)
PATHOLOGICAL = [
    "9" * 100_000,
    "[" * 100_000,
    "[" + "1" * 100_000,
    "<|box_start|>" * 7_000 + "(1,2),(3,4)",
    "(" * 50_000 + "1," * 10_000,
    "<think>" * 10_000 + "</look>" * 5_000,
    " " * 100_000 + "<|im_end|>" * 2_000,
    "```json\n[" + '{"bbox_2d": [1, 2, 3, 4], "label": "person"}, ' * 2_000 + "{}]\n```",
    "\ud800\U0001f600中" * 33_000,
]


def check(name, completions, group_size=2):
    num_prompts = len(completions) // group_size
    parts = rewards.score_components(
        name, completions, [TARGETS[name]] * num_prompts, group_size=group_size
    )
    low, high = rewards.value_range(name)
    for key, value in parts.items():
        assert value.shape == (len(completions),) and value.dtype == np.float32, key
        assert np.isfinite(value).all(), key
    assert (parts["total"] >= low).all() and (parts["total"] <= high + 1e-6).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_any_text_scores_finite_and_in_range(name):
    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(texts, min_size=4, max_size=4))
    def run(completions):
        check(name, completions)

    run()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_pathological_100k_character_completions(name):
    check(name, PATHOLOGICAL + ["ok"], group_size=1)
