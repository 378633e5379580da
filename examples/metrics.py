"""Evaluation metrics of the tagging example: token accuracy and conlleval-style chunk F1."""

from __future__ import annotations

from collections.abc import Sequence


def _split_tag(tag: str) -> tuple[str, str | None]:
    """'B-NP' -> ('B', 'NP'); 'O' -> ('O', None). Anything else is an error (IOB tags only)."""
    if tag == "O":
        return "O", None
    prefix, sep, typ = tag.partition("-")
    if sep != "-" or prefix not in ("B", "I") or not typ:
        raise ValueError(f"not an IOB chunk tag: {tag!r}")
    return prefix, typ


def chunk_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Chunks of one sentence as ``(type, start, end)`` with ``end`` exclusive.

    Follows conlleval's reading of IOB tags: a chunk starts at ``B-X``, and also at ``I-X``
    when no chunk of type X is open (after ``O`` or after a chunk of another type); it ends
    before ``B``, ``O``, or an ``I`` of another type. So both IOB1 and IOB2 and the invalid
    sequences a tagger may predict are scored exactly as conlleval scores them.
    """
    spans = []
    start, ctype = 0, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, typ = _split_tag(tag)
        if ctype is not None and (prefix != "I" or typ != ctype):
            spans.append((ctype, start, i))
            ctype = None
        if prefix == "B" or (prefix == "I" and ctype is None):
            start, ctype = i, typ
    return spans


def chunk_f1(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """conlleval's overall precision, recall and F1 (in percent) over a corpus of sentences.

    A predicted chunk is correct when a gold chunk has the same type, start and end.
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    n_gold = n_pred = n_correct = 0
    for g, p in zip(gold, pred):
        if len(g) != len(p):
            raise ValueError(f"sentence of {len(g)} gold tags but {len(p)} predicted")
        gs, ps = set(chunk_spans(g)), set(chunk_spans(p))
        n_gold += len(gs)
        n_pred += len(ps)
        n_correct += len(gs & ps)
    precision = 100.0 * n_correct / n_pred if n_pred else 0.0
    recall = 100.0 * n_correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def token_accuracy(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> float:
    """Fraction of tokens whose predicted tag equals the gold tag, in percent."""
    total = correct = 0
    for g, p in zip(gold, pred, strict=True):
        total += len(g)
        correct += sum(a == b for a, b in zip(g, p, strict=True))
    return 100.0 * correct / total if total else 0.0


def rouge_f1(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F1 (in percent) of ``hyps`` against ``refs``, scored by
    Google's ``rouge-score`` package (its tokenizer lower-cases and keeps [a-z0-9] runs; Porter
    stemming on, as in most summarisation papers)."""
    from rouge_score import rouge_scorer  # only the headline example needs it

    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    totals = dict.fromkeys(kinds, 0.0)
    for ref, hyp in zip(refs, hyps):
        for k, score in scorer.score(ref, hyp).items():
            totals[k] += score.fmeasure
    n = max(1, len(refs))
    return {k: 100.0 * v / n for k, v in totals.items()}
