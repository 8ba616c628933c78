"""Host parsers: padded layout, validity rules, precedence and format checks."""

import numpy as np
import pytest

from perception_rl.rewards import parse

VOCAB = {"person": 0, "dog": 1}


def test_bucket_is_the_next_power_of_two():
    assert [parse.bucket(n) for n in (0, 1, 8, 9, 31, 33)] == [8, 8, 8, 16, 32, 64]
    assert parse.bucket(3, minimum=1) == 4 and parse.bucket(0, minimum=1) == 1


def test_pack_pads_caps_and_keeps_order():
    items = [np.arange(6.0).reshape(3, 2), np.zeros((0, 2)), np.ones((12, 2))]
    values, valid = parse.pack(items, rows=4, width=2, cap=10)
    assert values.shape == (4, 16, 2) and valid.sum(1).tolist() == [3, 0, 10, 0]
    np.testing.assert_array_equal(values[0, :3], items[0])
    assert not values[0, 3:].any() and not values[3].any()


def test_json_boxes_validity_counts_and_cap():
    texts = [
        (
            '```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "dog"},'
            ' {"bbox_2d": [5, 5, 4, 9], "label": "dog"},'
            ' {"bbox_2d": [1, 2, 3, 4], "label": "cat"},'
            ' {"bbox_2d": [1, 2, 3, "4"], "label": "dog"}]\n```'
        ),
        (
            '[{"bbox_2d": [0, 0, 1e400, 1], "label": "person"},'
            ' {"bbox_2d": [0, 0, NaN, 1], "label": "dog"}]'
        ),
        '{"bbox_2d": [1, 2, 3, 4], "label": "dog"}',
        "[" + ", ".join(['{"bbox_2d": [0, 0, 1, 1], "label": "person"}'] * 20) + "]<|im_end|>",
        None,
    ]
    got = parse.json_boxes(texts, rows=6, max_boxes=16, max_abs=1e6, vocabulary=VOCAB)
    assert got.boxes.shape == (6, 16, 4)
    assert got.parsed.tolist() == [True, True, False, True, False, False]
    assert got.num_elements.tolist() == [4, 2, 0, 20, 0, 0]
    assert got.num_valid.tolist() == [1, 0, 0, 20, 0, 0]  # row 3 counts all 20, keeps 16
    assert got.valid.sum(1).tolist() == [1, 0, 0, 16, 0, 0]
    np.testing.assert_array_equal(got.boxes[0, 0], [1, 2, 3, 4])
    assert got.labels[0, 0] == 1 and got.labels[0, 1] == -1


def test_qwen2_boxes_spans():
    text = (
        "<|box_start|>(1,2),(3,4)<|box_end|><|box_start|>( 5.5 , -6 ), (7,8)<|box_end|>"
        "<|box_start|>(1,2)<|box_end|><|box_start|><|box_start|>(9,9),(8,8)<|box_end|>"
    )
    got = parse.qwen2_boxes([text], rows=1, max_boxes=64, max_abs=1e6)
    assert got.num_valid.tolist() == [3]
    np.testing.assert_array_equal(got.boxes[0, :3], [[1, 2, 3, 4], [5.5, -6, 7, 8], [9, 9, 8, 8]])


@pytest.mark.parametrize(
    "text, box",
    [
        ("(1,2),(3,4) then (5, 6, 7, 8) then [9, 10, 11, 12]", [9, 10, 11, 12]),
        ("(1,2),(3,4) then (5, 6, 7, 8)", [5, 6, 7, 8]),
        ("<|box_start|>(1,2),(3,4)<|endoftext|><|box_end|>", [1, 2, 3, 4]),
        ("[1, 2, 3]", None),
        ("[4, 3, 2, 1]", None),  # inverted
    ],
)
def test_first_box_precedence(text, box):
    got = parse.first_box([text], rows=2, max_abs=1e6)
    assert got.valid[:, 0].tolist() == [box is not None, False]
    if box is not None:
        np.testing.assert_array_equal(got.boxes[0, 0], box)


def test_grounding_format_modes():
    good = (
        "<|object_ref_start|>a dog<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|><|im_end|>"
    )
    texts = [good, good.replace("<|im_end|>", ""), "x" + good, "box_start whatever", ">"]
    strict = parse.grounding_format(texts, "strict", rows=6)
    lenient = parse.grounding_format(texts, "pr1_lenient", rows=5)
    np.testing.assert_array_equal(strict, [1, 0, 0, 0, 0, 0])  # the padding row is 0
    np.testing.assert_array_equal(lenient, [1, 1, 0, 1, 1])


def test_counting_gate():
    head = "<|object_ref_start|>birds<|object_ref_end|>"
    texts = [
        head + "<|box_start|>(1,2),(3,4)<|box_end|><|im_end|>",
        head + "<|im_end|>",
        head + "<|box_start|>anything<|box_end|><|im_end|>junk",
        " " + head,
    ]
    np.testing.assert_array_equal(parse.counting_format(texts, rows=4), [1, 0, 1, 0])


@pytest.mark.parametrize(
    "text, strict",
    [
        ("<think>a</think><look>[]</look><answer>[]</answer>", True),
        ("<think>a\nb</think>\n <look>[]</look>\n<answer>[]</answer>\n<|im_end|>", True),
        ("<think>a</think>x<look>[]</look><answer>[]</answer>", False),
        (" <think>a</think><look>[]</look><answer>[]</answer>", False),
        ("<look>[]</look><think>a</think><answer>[]</answer>", False),
        ("<think><think>a</think><look>[]</look><answer>[]</answer>", False),
        ("<think>a</think><answer>[]</answer>", False),
    ],
)
def test_tagged_blocks_strictness(text, strict):
    got = parse.tagged_blocks([text], ("think", "look", "answer"), rows=1)
    assert bool(got.strict[0]) is strict


def test_tagged_blocks_contents():
    got = parse.tagged_blocks(
        ["<look>L</look> <answer>A", "</answer><answer>B</answer>"], ("look", "answer"), rows=2
    )
    assert got.contents == {"look": ["L", None], "answer": [None, "B"]}


def test_strip_end_tokens():
    assert parse.strip_end_tokens("x <|im_end|>\n<|endoftext|> \n") == "x"
    assert parse.strip_end_tokens("<|im_end|>x") == "<|im_end|>x"
