"""Align a generated ``token : label`` answer to the words it should label.

A model asked for one ``token : label`` line per input token rarely answers
exactly: it skips or repeats lines, splits a word into two lines or merges two
words into one, changes case or spacing, drops the ``B-``/``I-`` prefix, invents
labels, starts an entity with ``I-``, or stops early. :func:`align_answer` maps
the answer back onto the input words by *alignment*, never by string search in
the text and never by line position alone:

1. every answer line is parsed into ``(token, label)`` (the separator is the last
   ``:``, or a tab / ``->`` / ``=>`` / ``|``); lines without a readable label are
   left out of the alignment when the answer has labelled lines (a model that
   echoes its input before answering does not confuse the aligner);
2. the normalised answer tokens (NFKC, case-folded, whitespace removed) are
   aligned to the normalised words with :class:`difflib.SequenceMatcher`
   (monotone, so repeated or invented lines fall out as extra lines);
3. inside each mismatched stretch the characters of the words and the answer
   tokens are aligned, so a word the model split over two lines, or two words
   it merged into one line, still get their labels (a word counts as aligned
   when at least half of its characters are matched);
4. labels are normalised (case, spacing, brackets, ``B_``/``S-``/``E-`` forms,
   ``O`` spellings), a missing prefix is restored from the previous word, an
   ``I-`` that continues nothing becomes ``B-``, unknown labels become ``O``.

Words no line reaches get ``O``. The function never raises on model output; what
it had to repair is counted in :class:`AlignStats`.
"""
from __future__ import annotations

import difflib
import re
import unicodedata
from dataclasses import asdict, dataclass, fields
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = ["AlignStats", "align_answer", "parse_answer_lines", "normalise_label", "sum_stats"]

_O_SPELLINGS = frozenset({"O", "0", "OUTSIDE", "NONE", "NULL", "NA", "N/A", "NO", "OTHER", "-", "--", "—", "NOENTITY"})
_SEPARATORS = re.compile(r"\s*(?:->|=>|\t|\|)\s*")
_LABEL_CHARS = re.compile(r"^[A-Za-z][A-Za-z0-9 _\-/]*$")
_PREFIX = re.compile(r"^([BIESLU])\s*[-_:]\s*(.+)$", re.I)


@dataclass
class AlignStats:
    """What aligning one answer took. Counts are per answer; add them with :func:`sum_stats`.

    words: input words; lines: non-empty answer lines; aligned: words that got a
    label from a line; unaligned: words no line reached (tagged ``O``); exact:
    words matched one-to-one with an identical (normalised) token; fuzzy: words
    matched through character alignment (split, merged or misspelt tokens);
    case_changes: words matched only after case-folding; extra_lines: labelled
    lines no word used (repeats, inventions); unlabelled_lines: lines without a
    readable label; unknown_labels: lines whose label is not a valid label (read
    as ``O``); fixed_prefixes: labels without ``B-``/``I-`` that got one;
    orphan_inside: ``I-`` tags continuing nothing, turned into ``B-``; split_words:
    words spread over several lines; merged_lines: lines covering several words;
    empty: the answer had no lines; truncated: the last word was not reached;
    fully_aligned: every word aligned, and no unknown or missing label;
    parse_errors: answers whose alignment raised (a bug, logged; the unit is all ``O``).
    """

    words: int = 0
    lines: int = 0
    aligned: int = 0
    unaligned: int = 0
    exact: int = 0
    fuzzy: int = 0
    case_changes: int = 0
    extra_lines: int = 0
    unlabelled_lines: int = 0
    unknown_labels: int = 0
    fixed_prefixes: int = 0
    orphan_inside: int = 0
    split_words: int = 0
    merged_lines: int = 0
    empty: bool = False
    truncated: bool = False
    fully_aligned: bool = True
    parse_errors: int = 0

    def to_dict(self) -> Dict[str, int]:
        return {k: int(v) for k, v in asdict(self).items()}


def sum_stats(stats: Iterable[AlignStats]) -> Dict[str, int]:
    """Add up per-answer stats; booleans become counts (``answers`` is the number of answers)."""
    total: Dict[str, int] = {f.name: 0 for f in fields(AlignStats)}
    total["answers"] = 0
    for s in stats:
        d = s.to_dict() if isinstance(s, AlignStats) else s
        for k, v in d.items():
            total[k] = total.get(k, 0) + int(v)
        if isinstance(s, AlignStats):
            total["answers"] += 1
    return total


# --- parsing ----------------------------------------------------------------------

def normalise_token(s: str) -> str:
    """A token as answers are matched: NFKC, whitespace removed (callers case-fold as needed)."""
    return "".join(unicodedata.normalize("NFKC", s).split())


_norm_text = normalise_token


def _unwrap(token: str) -> str:
    """Strip markdown/quote wrappers around a token (``**word**``, ```word```, ``"word"``)."""
    changed = True
    while changed and len(token) > 2:
        changed = False
        for w in ("**", "__", "`", '"', "'"):
            if len(token) > 2 * len(w) and token.startswith(w) and token.endswith(w):
                token = token[len(w): -len(w)]
                changed = True
    return token


def _clean_label(raw: str) -> str:
    s = raw.strip()
    for _ in range(3):
        s = s.strip(" \t*`\"'.,;")
        for a, b in (("[", "]"), ("(", ")"), ("<", ">"), ("{", "}")):
            if s.startswith(a) and s.endswith(b):
                s = s[1:-1]
    return s.strip()


def _looks_like_label(s: str) -> bool:
    c = _clean_label(s)
    if not c or len(c) > 40 or len(c.split()) > 3:  # prose after a colon is not a label
        return False
    return c.upper() in _O_SPELLINGS or bool(_LABEL_CHARS.match(c))


def parse_answer_lines(answer: str) -> List[Tuple[str, Optional[str]]]:
    """``(token, raw_label or None)`` per non-empty line of an answer.

    The label follows the last ``:`` (``": : O"`` is the token ``:``), or a tab,
    ``->``, ``=>`` or ``|``. Code fences and ``######`` separators are skipped.
    """
    out: List[Tuple[str, Optional[str]]] = []
    if not answer:
        return out
    for line in str(answer).splitlines():
        s = line.strip()
        if not s or s.startswith("```") or set(s) == {"#"}:
            continue
        token, label = s, None
        if ":" in s:
            head, _, tail = s.rpartition(":")
            if head.strip() and _looks_like_label(tail):
                token, label = head.strip(), tail
            elif not head.strip() and s.count(":") == 1 and not tail.strip():
                token, label = ":", None
        if label is None:
            parts = _SEPARATORS.split(s)
            if len(parts) >= 2 and parts[0] and _looks_like_label(parts[-1]):
                token, label = " ".join(parts[:-1]).strip(), parts[-1]
        out.append((token, label))
    return out


def normalise_label(raw: Optional[str], labels: Optional[Dict[str, str]]) -> Tuple[Optional[str], Optional[str], bool]:
    """``(prefix, label, known)`` for a raw answer label.

    prefix is "B", "I" or None (missing); label None means ``O``. ``labels`` maps
    a squashed key (letters and digits, upper case) to the canonical label; None
    accepts any label-like string.
    """
    if raw is None:
        return None, None, False
    s = _clean_label(raw)
    if not s or s.upper() in _O_SPELLINGS:
        return None, None, True
    prefix: Optional[str] = None
    m = _PREFIX.match(s)
    if m:
        p, rest = m.group(1).upper(), m.group(2)
        prefix = "B" if p in ("B", "S", "U") else "I"
        s = rest
    key = re.sub(r"[^A-Z0-9]", "", s.upper())
    if not key or key in _O_SPELLINGS:
        return None, None, True
    if labels is None:
        return prefix, key, True
    if key in labels:
        return prefix, labels[key], True
    return prefix, None, False


def _label_table(labels: Optional[Iterable[str]]) -> Optional[Dict[str, str]]:
    if labels is None:
        return None
    return {re.sub(r"[^A-Z0-9]", "", l.upper()): l for l in labels}


# --- alignment --------------------------------------------------------------------

def _char_align(words: Sequence[str], toks: Sequence[str]) -> List[List[Tuple[int, int]]]:
    """For each word, ``(token index, matched chars)`` pairs from a character alignment."""
    wmap: List[int] = []
    for i, w in enumerate(words):
        wmap.extend([i] * len(w))
    tmap: List[int] = []
    for j, t in enumerate(toks):
        tmap.extend([j] * len(t))
    a, b = "".join(words), "".join(toks)
    starts, ends = set(), set()
    pos = 0
    for w in words:
        starts.add(pos)
        pos += len(w)
        ends.add(pos)
    counts: List[Dict[int, int]] = [dict() for _ in words]
    if a and b:
        sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
        for blk in sm.get_matching_blocks():
            # short matches are chance unless they are whole words ("." or "of")
            if blk.size < 3 and not (blk.a in starts and blk.a + blk.size in ends):
                continue
            for k in range(blk.size):
                wi, tj = wmap[blk.a + k], tmap[blk.b + k]
                counts[wi][tj] = counts[wi].get(tj, 0) + 1
    return [sorted(c.items()) for c in counts]


def align_answer(
    words: Sequence[str],
    answer: Optional[str],
    labels: Optional[Iterable[str]] = None,
) -> Tuple[List[str], AlignStats]:
    """One BIO tag per word from a generated answer, and what the alignment took.

    words: the input tokens, in order (whitespace tokens excluded).
    answer: the model's raw answer (``token : label`` lines); None or "" is empty.
    labels: valid entity labels; others are read as ``O``. None accepts any.
    RETURNS: (tags, stats), ``len(tags) == len(words)``, tags in ``O``/``B-X``/``I-X``.
    """
    words = [str(w) for w in words]
    n = len(words)
    stats = AlignStats(words=n)
    table = _label_table(labels)
    try:
        lines = parse_answer_lines(answer or "")
    except Exception:  # pragma: no cover - defensive: parsing is total on str
        lines = []
    stats.lines = len(lines)
    tags = ["O"] * n
    if not lines:
        stats.empty = True
        stats.unaligned = n
        stats.truncated = n > 0
        stats.fully_aligned = n == 0
        return tags, stats

    labelled = [(t, l) for t, l in lines if l is not None]
    stats.unlabelled_lines = len(lines) - len(labelled)
    use = labelled if labelled else lines
    toks_raw = [_unwrap(t) for t, _ in use]
    w_norm = [_norm_text(w) for w in words]
    t_norm = [_norm_text(t) for t in toks_raw]
    w_key = [w.casefold() for w in w_norm]
    t_key = [t.casefold() for t in t_norm]

    # word index -> list of answer-line indices it takes labels from (in order)
    assign: List[List[int]] = [[] for _ in range(n)]
    used = [False] * len(use)
    sm = difflib.SequenceMatcher(None, w_key, t_key, autojunk=False)
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            for k in range(i2 - i1):
                assign[i1 + k].append(j1 + k)
                used[j1 + k] = True
                stats.exact += 1
                if w_norm[i1 + k] != t_norm[j1 + k]:
                    stats.case_changes += 1
        elif op == "replace":
            pairs = _char_align(w_key[i1:i2], t_key[j1:j2])
            for k, cand in enumerate(pairs):
                wlen = max(1, len(w_key[i1 + k]))
                matched = sum(c for _, c in cand)
                if matched * 2 >= wlen and cand:
                    js = [j1 + j for j, c in cand if c >= 2 or c * 2 >= wlen]
                    js = js or [j1 + max(cand, key=lambda x: x[1])[0]]
                    assign[i1 + k] = js
                    for j in js:
                        used[j] = True
                    stats.fuzzy += 1
    # lines covering several words / words over several lines
    owners: Dict[int, List[int]] = {}
    for i, js in enumerate(assign):
        if len(js) > 1:
            stats.split_words += 1
        for j in js:
            owners.setdefault(j, []).append(i)
    stats.merged_lines = sum(1 for ws in owners.values() if len(ws) > 1)
    stats.extra_lines = sum(1 for u in used if not u)

    parsed = [normalise_label(l, table) for _, l in use]
    unknown_lines = {j for j, (_, _, known) in enumerate(parsed) if not known and use[j][1] is not None}
    stats.unknown_labels = len(unknown_lines)
    prev_label: Optional[str] = None
    prev_word_line: Optional[int] = None
    last_aligned = -1
    for i in range(n):
        js = assign[i]
        if not js:
            stats.unaligned += 1
            prev_label, prev_word_line = None, None
            continue
        stats.aligned += 1
        last_aligned = i
        j = js[0]
        prefix, label, known = parsed[j]
        if label is None:
            tags[i] = "O"
            prev_label, prev_word_line = None, j
            continue
        if j == prev_word_line and prev_label == label:
            # second word of a merged line: the entity continues
            prefix = "I"
        elif prefix is None:
            stats.fixed_prefixes += 1
            prefix = "I" if prev_label == label else "B"
        elif prefix == "I" and prev_label != label:
            stats.orphan_inside += 1
            prefix = "B"
        tags[i] = f"{prefix}-{label}"
        prev_label, prev_word_line = label, j
    stats.truncated = n > 0 and last_aligned < n - 1
    stats.fully_aligned = (
        stats.unaligned == 0
        and stats.unknown_labels == 0
        and all(use[assign[i][0]][1] is not None for i in range(n))
    )
    return tags, stats
