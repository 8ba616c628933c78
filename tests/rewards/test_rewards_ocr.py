"""OCR reward vs rapidfuzz's Levenshtein distance (seed_spec A6 / DESIGN §3)."""

import re

import numpy as np
import pytest
from rapidfuzz.distance import Levenshtein

from perception_rl import rewards
from perception_rl.rewards import ocr, parse

ALPHABET = list("abcde ABC\t\n  éß中文😀\u00a0\u2003") + ["\ud800"]  # incl. a lone surrogate


def reference(pred, gt, collapse=True):
    pred = re.sub(r"(\s|<\|im_end\|>|<\|endoftext\|>)*$", "", pred.replace("<|endoftext|>", ""))
    if collapse:
        pred, gt = (re.sub(r"\s+", " ", s).strip() for s in (pred, gt))
    longest = max(len(pred), len(gt))
    return max(0.0, 1 - Levenshtein.distance(pred, gt) / longest) if longest else 0.0


def random_text(rng, n):
    return "".join(rng.choice(ALPHABET, n))


def near_miss(rng, text):
    chars = list(text)
    for _ in range(int(rng.integers(0, 6))):
        op, i = rng.integers(3), int(rng.integers(0, len(chars) + 1))
        if op == 0:
            chars.insert(i, str(rng.choice(ALPHABET)))
        elif chars and i < len(chars):
            if op == 1:
                del chars[i]
            else:
                chars[i] = str(rng.choice(ALPHABET))
    return "".join(chars)


@pytest.mark.parametrize("collapse", [True, False])
def test_matches_rapidfuzz_on_generated_text(collapse):
    rng = np.random.default_rng(2)
    num_prompts, group = 300, 8
    targets = [{"text": random_text(rng, int(rng.integers(0, 60)))} for _ in range(num_prompts)]
    completions = []
    for t in targets:
        for g in range(group):
            kind = g % 4
            if kind == 0:
                completions.append(t["text"] + "<|im_end|>" * g)
            elif kind == 1:
                completions.append(near_miss(rng, t["text"]))
            else:
                n = 0 if rng.random() < 0.1 else int(rng.integers(0, 80))
                completions.append(random_text(rng, n))
    got = rewards.score("ocr", completions, targets, group_size=group, collapse_whitespace=collapse)
    want = [reference(c, targets[i // group]["text"], collapse) for i, c in enumerate(completions)]
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert np.mean(np.equal(want, 1)) > 0.1 and np.mean(np.equal(want, 0)) > 0.02


@pytest.mark.parametrize("shapes", [(5, 37), (64, 3), (16, 16)])
def test_levenshtein_kernel_matches_rapidfuzz(shapes):
    rng = np.random.default_rng(shapes[0])
    la, lb = shapes
    a = rng.integers(0, 4, (200, la)).astype(np.int32)
    b = rng.integers(0, 4, (200, lb)).astype(np.int32)
    len_a, len_b = rng.integers(0, la + 1, 200), rng.integers(0, lb + 1, 200)
    got = np.asarray(ocr.levenshtein(a, len_a.astype(np.int32), b, len_b.astype(np.int32)))
    want = [
        Levenshtein.distance(list(x[:n]), list(y[:m])) for x, n, y, m in zip(a, len_a, b, len_b)
    ]
    np.testing.assert_array_equal(got, want)


def test_long_strings_use_the_prefix_upper_bound():
    rng = np.random.default_rng(3)
    gt = random_text(rng, 300).replace(" ", "x")
    pred = near_miss(rng, gt)[:250] + "y" * 90
    got = rewards.score(
        "ocr", [pred], [{"text": gt}], group_size=1, max_chars=64, collapse_whitespace=False
    )[0]
    bound = Levenshtein.distance(pred[:64], gt[:64]) + max(len(pred), len(gt)) - 64
    assert got == pytest.approx(max(0.0, 1 - bound / max(len(pred), len(gt))), abs=1e-6)
    assert got <= reference(pred, gt, collapse=False) + 1e-6  # never above the exact value
    exact = rewards.score(
        "ocr", [pred], [{"text": gt}], group_size=1, max_chars=512, collapse_whitespace=False
    )[0]
    assert exact == pytest.approx(reference(pred, gt, collapse=False), abs=1e-6)


def test_code_points_handle_surrogates_and_astral_characters():
    codes, lengths = parse.code_points(["a😀\ud800", ""], rows=3, max_chars=2)
    np.testing.assert_array_equal(lengths, [3, 0, 0])
    np.testing.assert_array_equal(codes[0, :3], [ord("a"), 0x1F600, -1])
    assert (codes[1:] == -1).all()
