"""OCR metrics against NLTK and rapidfuzz on generated texts."""

import functools
import sys
import types
import warnings

import nltk.translate.bleu_score
import nltk.translate.meteor_score
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nltk.metrics import f_measure, precision, recall
from rapidfuzz.distance import Levenshtein

from perception_rl.metrics import ocr

# A small vocabulary, so that generated pages share many n-grams.
_WORDS = st.lists(st.sampled_from(["the", "cat", "sat", "on", "a", "mat", "Mat", "."]), max_size=14)
_TEXT = st.text(alphabet="ab c\n猫é", max_size=30)


def _levenshtein(a, b):
    """Textbook dynamic programme, independent of rapidfuzz."""
    row = np.arange(len(b) + 1)
    for i, char in enumerate(a, 1):
        previous, row = row, np.empty_like(row)
        row[0] = i
        for j in range(1, len(b) + 1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (char != b[j - 1]))
    return int(row[-1])


@settings(max_examples=300, deadline=None)
@given(prediction=_WORDS, reference=_WORDS)
def test_bleu_is_nltk_sentence_bleu_bit_for_bit(prediction, reference):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NLTK warns about zero n-gram counts.
        expected = nltk.translate.bleu_score.sentence_bleu([reference], prediction)
    assert ocr.sentence_bleu(prediction, reference) == expected


def test_bleu_of_a_close_page_is_not_trivial():
    reference = "the cat sat on the mat and the dog sat on the log".split()
    prediction = "the cat sat on a mat and the dog sat on the log".split()
    score = ocr.sentence_bleu(prediction, reference)
    assert 0.5 < score < 1.0
    assert score == nltk.translate.bleu_score.sentence_bleu([reference], prediction)


@settings(max_examples=200, deadline=None)
@given(prediction=_TEXT, reference=_TEXT)
def test_edit_distance_is_normalised_levenshtein(prediction, reference):
    distance = ocr.normalized_edit_distance(prediction, reference)
    assert distance == Levenshtein.normalized_distance(prediction, reference)
    longest = max(len(prediction), len(reference), 1)
    assert distance == _levenshtein(prediction, reference) / longest


@settings(max_examples=200, deadline=None)
@given(prediction=_WORDS.filter(bool), reference=_WORDS.filter(bool))
def test_token_set_scores_are_nltk_metrics(prediction, reference):
    pred, ref = set(prediction), set(reference)
    expected = precision(ref, pred), recall(ref, pred), f_measure(ref, pred)
    assert ocr.token_set_scores(prediction, reference) == expected


def test_token_set_scores_of_empty_pages():
    assert ocr.token_set_scores([], []) == (1.0, 1.0, 1.0)
    assert ocr.token_set_scores([], ["a"]) == (0.0, 0.0, 0.0)
    assert ocr.token_set_scores(["a"], []) == (0.0, 0.0, 0.0)


def test_token_sets_ignore_order_and_duplicates():
    assert ocr.token_set_scores("b a a".split(), "a b".split()) == (1.0, 1.0, 1.0)


def test_tokenize_splits_latin_text_on_whitespace():
    assert ocr.tokenize("a  b\nc", "d") == (["a", "b", "c"], ["d"])


def test_cjk_text_uses_jieba_when_installed(monkeypatch):
    fake = types.SimpleNamespace(lcut=lambda text: list(text))
    monkeypatch.setitem(sys.modules, "jieba", fake)
    ocr._jieba.cache_clear()
    try:
        assert ocr.tokenize("猫 a", "b") == (["猫", " ", "a"], ["b"])  # Either text triggers it.
    finally:
        ocr._jieba.cache_clear()


def test_cjk_text_without_jieba_warns_and_splits_on_whitespace(monkeypatch):
    monkeypatch.setitem(sys.modules, "jieba", None)  # Makes `import jieba` fail.
    ocr._jieba.cache_clear()
    try:
        with pytest.warns(UserWarning, match="jieba is not installed"):
            assert ocr.tokenize("a b", "猫猫 狗") == (["a", "b"], ["猫猫", "狗"])
    finally:
        ocr._jieba.cache_clear()


class _NoSynonyms:
    """A WordNet stand-in without synonyms (exact and stem matches only)."""

    def synsets(self, *args, **kwargs):
        return []


def test_meteor_is_nltk_meteor_when_wordnet_is_present(monkeypatch):
    meteor_score = functools.partial(
        nltk.translate.meteor_score.meteor_score, wordnet=_NoSynonyms()
    )
    monkeypatch.setattr(ocr, "meteor_unavailable_reason", lambda: None)
    monkeypatch.setattr(nltk.translate.meteor_score, "meteor_score", meteor_score)
    predictions, references = ["the cats sat down", "a b"], ["the cat sat", "a b c"]
    expected = np.mean(
        [meteor_score([r.split()], p.split()) for p, r in zip(predictions, references)]
    )
    swapped = np.mean(
        [meteor_score([p.split()], r.split()) for p, r in zip(predictions, references)]
    )
    assert swapped != expected  # The pages tell the argument order apart.
    assert ocr.ocr_metrics(predictions, references)["meteor"] == expected


@pytest.mark.skipif(ocr.meteor_unavailable_reason() is None, reason="WordNet is installed")
def test_meteor_without_wordnet_is_reported_unavailable():
    with pytest.warns(UserWarning, match="METEOR is unavailable: NLTK's WordNet data"):
        metrics = ocr.ocr_metrics(["a b"], ["a b"])
    assert "meteor" not in metrics and "bleu" in metrics
    with pytest.raises(RuntimeError, match="WordNet"):
        ocr.meteor(["a"], ["a"])


def test_ocr_metrics_average_pages_and_unify_line_endings():
    predictions = ["first line\r\nsecond line", "completely different text"]
    references = ["first line\nsecond line", "the reference text"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = ocr.ocr_metrics(predictions, references)
        pages = [ocr.page_metrics(p, r) for p, r in zip(predictions, references)]
    assert pages[0]["edit_distance"] == 0.0 and pages[0]["f1"] == 1.0
    assert pages[0]["bleu"] == pytest.approx(1.0)
    for key, value in metrics.items():
        assert value == pytest.approx((pages[0][key] + pages[1][key]) / 2)
    assert metrics["recall"] == pytest.approx((1 + 1 / 3) / 2)


def test_ocr_metrics_rejects_misaligned_inputs():
    with pytest.raises(ValueError, match="as many predictions as references"):
        ocr.ocr_metrics(["a"], ["a", "b"])
    with pytest.raises(TypeError):
        ocr.ocr_metrics("a", "a")
