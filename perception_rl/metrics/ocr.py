"""Page-level OCR metrics of Fox / GOT-OCR2.0 / Perception-R1 (data_eval.md §2.3).

Every metric is computed per page and averaged over pages. Tokens are whitespace-separated
words, or jieba words when either text contains CJK characters. The reference scripts call
NLTK; here only METEOR does (it needs WordNet), the rest are reimplemented or use rapidfuzz:

- edit distance: character Levenshtein / max(len) (NLTK's `edit_distance` is O(n·m) Python and
  refuses pages over 2,000 characters; rapidfuzz gives the same value);
- precision / recall / F1 over token *sets*, as `nltk.metrics.{precision,recall,f_measure}`;
- BLEU: `nltk.translate.bleu_score.sentence_bleu([ref], hyp)` with its defaults, bit for bit;
- METEOR: `nltk.translate.meteor_score.meteor_score([ref], hyp)` when WordNet is installed.
"""

from __future__ import annotations

import functools
import math
import re
import sys
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from rapidfuzz.distance import Levenshtein

_CJK = re.compile(r"[\u4e00-\u9fa5]")  # The reference scripts' test for Chinese text.
_LINE_BREAK = re.compile(r"\r\n?")
_BLEU_ORDER = 4


def normalized_edit_distance(prediction: str, reference: str) -> float:
    """Character Levenshtein distance / the longer length; 0 for two empty strings."""
    longest = max(len(prediction), len(reference))
    return Levenshtein.distance(prediction, reference) / longest if longest else 0.0


def tokenize(prediction: str, reference: str) -> tuple[list[str], list[str]]:
    """Splits a prediction and its reference into words the way the reference scripts do.

    Both texts go through `jieba.lcut` when either contains CJK characters and jieba is
    installed; otherwise both are split on whitespace (with a warning for CJK text, whose scores
    are then not comparable with published ones).

    Returns:
      (prediction tokens, reference tokens).
    """
    if _CJK.search(prediction) or _CJK.search(reference):
        jieba = _jieba()
        if jieba is not None:
            return jieba.lcut(prediction), jieba.lcut(reference)
        warnings.warn(
            "jieba is not installed: CJK text is split on whitespace, so its BLEU, "
            "METEOR, precision, recall and F1 are not comparable with Fox / "
            "Perception-R1 numbers (pip install jieba).",
            stacklevel=2,
        )
    return prediction.split(), reference.split()


def token_set_scores(
    prediction: Sequence[str], reference: Sequence[str]
) -> tuple[float, float, float]:
    """Precision, recall and F1 over unique tokens (`nltk.metrics` precision/recall/f_measure).

    NLTK returns None when a set is empty, which breaks the reference scripts' averages; here two
    empty pages score 1 and one empty page scores 0.

    Returns:
      (|pred ∩ ref| / |pred|, |pred ∩ ref| / |ref|, their harmonic mean).
    """
    pred, ref = set(prediction), set(reference)
    if not pred or not ref:
        score = float(pred == ref)
        return score, score, score
    common = len(pred & ref)
    precision, recall = common / len(pred), common / len(ref)
    f1 = 1.0 / (0.5 / precision + 0.5 / recall) if common else 0.0  # NLTK's operation order.
    return precision, recall, f1


def sentence_bleu(prediction: Sequence[str], reference: Sequence[str]) -> float:
    """NLTK's `sentence_bleu([reference], prediction)` with default arguments, bit for bit.

    Uniform 4-gram weights, clipped n-gram precisions, brevity penalty, no smoothing. Like NLTK,
    a zero n-gram precision above unigrams is replaced by the smallest positive float, so such a
    page scores ~1e-77 rather than 0; no unigram match at all scores 0.

    Args:
      prediction: hypothesis tokens.
      reference: reference tokens (a single reference).

    Returns:
      BLEU in [0, 1].
    """
    log_precisions = []
    for n in range(1, _BLEU_ORDER + 1):
        predicted = Counter(_ngrams(prediction, n))
        matches = sum((predicted & Counter(_ngrams(reference, n))).values())  # Clipped counts.
        if not matches and n == 1:
            return 0.0
        precision = matches / max(1, sum(predicted.values())) if matches else sys.float_info.min
        log_precisions.append(math.log(precision) / _BLEU_ORDER)
    if len(prediction) > len(reference):
        brevity = 1.0
    else:
        brevity = math.exp(1 - len(reference) / len(prediction))
    return brevity * math.exp(math.fsum(log_precisions))


@functools.cache
def meteor_unavailable_reason() -> str | None:
    """Why METEOR cannot be computed here, or None when it can."""
    try:
        import nltk  # Slow to import, and optional: only for METEOR.
    except ImportError:
        return "METEOR is unavailable: nltk is not installed (pip install nltk)."
    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        return (
            "METEOR is unavailable: NLTK's WordNet data is not installed locally (it is not part "
            "of the nltk package and is never downloaded here); put wordnet.zip under "
            "<NLTK_DATA>/corpora/ to report it."
        )
    return None


def meteor(prediction: Sequence[str], reference: Sequence[str]) -> float:
    """NLTK's `meteor_score([reference], prediction)` (exact, stem and WordNet-synonym matches).

    Raises:
      RuntimeError: with `meteor_unavailable_reason()` when WordNet or nltk is missing.
    """
    reason = meteor_unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    from nltk.translate.meteor_score import meteor_score

    return float(meteor_score([list(reference)], list(prediction)))


def page_metrics(prediction: str, reference: str) -> dict[str, float]:
    """All OCR metrics of one page; `meteor` only when it is available.

    Line endings are unified (`\\r\\n`, `\\r` → `\\n`) in both texts; nothing else is normalised.

    Returns:
      `edit_distance` (lower is better), `precision`, `recall`, `f1`, `bleu` and maybe `meteor`.
    """
    prediction, reference = _LINE_BREAK.sub("\n", prediction), _LINE_BREAK.sub("\n", reference)
    pred_tokens, ref_tokens = tokenize(prediction, reference)
    precision, recall, f1 = token_set_scores(pred_tokens, ref_tokens)
    scores = {
        "edit_distance": normalized_edit_distance(prediction, reference),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "bleu": sentence_bleu(pred_tokens, ref_tokens),
    }
    if meteor_unavailable_reason() is None:
        scores["meteor"] = meteor(pred_tokens, ref_tokens)
    return scores


def ocr_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Page metrics averaged over pages (macro), as Fox / Perception-R1 report them (×100 there).

    Args:
      predictions: predicted page texts.
      references: ground-truth page texts, aligned with `predictions`.

    Returns:
      Mean of each `page_metrics` entry. Without WordNet there is no `meteor` entry and a warning
      says why.
    """
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("predictions and references must be sequences of page texts, not str.")
    if len(predictions) != len(references) or not len(predictions):
        raise ValueError(
            f"need as many predictions as references (> 0), got {len(predictions)} "
            f"and {len(references)}."
        )
    reason = meteor_unavailable_reason()
    if reason is not None:
        warnings.warn(reason, stacklevel=2)
    pages = [page_metrics(p, r) for p, r in zip(predictions, references)]
    return {key: float(np.mean([page[key] for page in pages])) for key in pages[0]}


@functools.cache
def _jieba() -> Any:
    try:
        import jieba  # Optional: only for CJK pages.
    except ImportError:
        return None
    return jieba


def _ngrams(tokens: Sequence[str], n: int):
    return zip(*(tokens[i:] for i in range(n)))
