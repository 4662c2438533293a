"""Exact and near duplicates within each split, and overlap between splits (train examples in validation).

Near duplicates are pairs whose character 5-gram sets have a Jaccard similarity of at least 0.5. Comparing
every pair is quadratic, so each example gets a MinHash signature (one-permutation hashing with 128 bins
and densification: a single hash pass, vectorized over all examples at once), locality-sensitive hashing
over 32 bands of 4 bins proposes candidate pairs (found with probability ~0.87 at J=0.5, ~0.99 at J=0.6),
and the signatures' agreement estimates each candidate's similarity (standard error ~0.045 at J=0.5).
"""

from __future__ import annotations

import numpy as np

from kielo.data.records import Example

SHINGLE = 5
THRESHOLD = 0.5
BINS = 128
BANDS, ROWS = 32, 4
_BIN_BITS = 7  # log2(BINS)
_EMPTY = np.uint64(2**64 - 1)
_VALUE_MASK = np.uint64(2 ** (64 - _BIN_BITS) - 1)
_ROTATE = np.uint64(0x9E3779B97F4A7C15)  # densification offset per bin borrowed over (an odd constant)


def dedup_text(example: Example) -> str:
    """The text compared for near duplicates: roles and contents, case and whitespace normalized."""
    return "\n".join(m["role"][0] + ":" + " ".join(m["content"].lower().split()) for m in example.messages)


def exact_key(example: Example) -> tuple:
    """Examples are exact duplicates when their messages are identical."""
    return tuple((m["role"], m["content"]) for m in example.messages)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: spreads the rolling hash's bits evenly (uint64 arithmetic wraps)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def signatures(texts: list[str]) -> np.ndarray:
    """(len(texts), BINS) uint64 MinHash signatures; a row of all-``_EMPTY`` for texts under 5 characters."""
    sig = np.full(len(texts) * BINS, _EMPTY, dtype=np.uint64)
    lens = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    code = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    count = len(code) - SHINGLE + 1
    if count > 0:
        h = np.zeros(count, dtype=np.uint64)
        for k in range(SHINGLE):
            h = h * np.uint64(0x100000001B3) + code[k : k + count]
        h = _mix(h)
        doc = np.repeat(np.arange(len(texts)), lens)[:count]
        starts = np.cumsum(lens) - lens
        keep = (np.arange(count) - starts[doc]) <= lens[doc] - SHINGLE  # shingles inside one text only
        h, doc = h[keep], doc[keep]
        np.minimum.at(sig, doc * BINS + (h >> np.uint64(64 - _BIN_BITS)).astype(np.int64), h & _VALUE_MASK)
    return _densify(sig.reshape(len(texts), BINS))


def _densify(sig: np.ndarray) -> np.ndarray:
    """Fill empty bins from the next non-empty bin to the right (circularly), offset by the distance.

    Short texts leave bins empty; two texts then still agree in a bin with probability ~ their Jaccard.
    """
    empty = sig == _EMPTY
    if not empty.any():
        return sig
    k = np.arange(BINS)
    far = 2 * BINS
    idx = np.concatenate([np.where(empty, far, k), np.where(empty, far, k + BINS)], axis=1)
    nxt = np.minimum.accumulate(idx[:, ::-1], axis=1)[:, ::-1][:, :BINS]
    found = nxt < far
    rows = np.arange(len(sig))[:, None]
    filled = sig[rows, nxt % BINS] + (nxt - k).astype(np.uint64) * _ROTATE
    return np.where(empty & found, filled, sig)


def similar_pairs(sig: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, estimated Jaccard) for pairs of rows at or above THRESHOLD, ``a`` > ``b``.

    Within each LSH bucket every member is compared with the bucket's first member only, which keeps the
    work linear even when thousands of examples are copies of one another.
    """
    usable = np.flatnonzero(~(sig == _EMPTY).all(axis=1))
    if len(usable) < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    s = sig[usable]
    found = []
    for band in range(BANDS):
        cols = s[:, band * ROWS : (band + 1) * ROWS]
        key = cols[:, 0]
        for c in range(1, ROWS):
            key = _mix(key ^ cols[:, c])
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        rep = first[inverse.ravel()]
        member = np.flatnonzero(rep != np.arange(len(s)))
        found.append(member * len(s) + rep[member])
    if not found or not sum(len(f) for f in found):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    codes = np.unique(np.concatenate(found))
    a, b = codes // len(s), codes % len(s)
    # The low 32 bits of each bin are enough to compare (a false match has odds 2^-32) and halve the reads.
    low = s.astype(np.uint32)
    step = 100_000
    jaccard = np.concatenate(
        [np.count_nonzero(low[a[i : i + step]] == low[b[i : i + step]], axis=1) / BINS for i in range(0, len(a), step)]
    )
    keep = jaccard >= THRESHOLD
    a, b = usable[a[keep]], usable[b[keep]]
    return np.maximum(a, b), np.minimum(a, b), jaccard[keep]


class _Groups:
    """Union-find over example indices."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _preview(example: Example, width: int = 80) -> str:
    text = " ".join(example.messages[-1]["content"].split()) if example.messages else ""
    prompt = " ".join(example.messages[-2]["content"].split()) if len(example.messages) > 1 else ""
    both = f"{prompt} → {text}" if prompt else text
    return both if len(both) <= width else both[: width - 1] + "…"


def find_duplicates(names: list[str], splits: list[list[Example]], sigs: list[np.ndarray], shown: int = 5) -> dict:
    """Duplicate counts per split and overlap between splits (each later split against each earlier one).

    ``near`` counts examples that could be removed as near copies of another example of the split, beyond the
    exact copies (``exact``); ``overlap`` counts examples of a split with an exact or near copy in another.
    """
    offsets = np.cumsum([0] + [len(s) for s in splits])
    flat = [ex for s in splits for ex in s]
    split_of = np.repeat(np.arange(len(splits)), [len(s) for s in splits])
    a, b, jac = similar_pairs(np.concatenate(sigs) if sigs else np.zeros((0, BINS), dtype=np.uint64))

    ids: dict[tuple, int] = {}
    key = np.array([ids.setdefault(exact_key(ex), len(ids)) for ex in flat], dtype=np.int64)  # same id = identical
    first_of_key = np.full(len(ids), -1, dtype=np.int64)
    first_of_key[key[::-1]] = np.arange(len(flat))[::-1]  # the earliest example of each id
    exact_of = first_of_key[key]

    every = _Groups(len(flat))
    within = _Groups(len(flat))
    for i in np.flatnonzero(exact_of != np.arange(len(flat))).tolist():
        every.union(i, int(exact_of[i]))
    near_shown: dict[int, list] = {k: [] for k in range(len(splits))}
    for x, y, j in zip(a.tolist(), b.tolist(), jac.tolist(), strict=True):
        every.union(x, y)
        if split_of[x] == split_of[y]:
            within.union(x, y)
            if key[x] != key[y] and len(near_shown[split_of[x]]) < shown:
                near_shown[split_of[x]].append(
                    {"a": flat[y].source, "b": flat[x].source, "jaccard": round(j, 3), "text": _preview(flat[x])}
                )

    per_split = {}
    for k, name in enumerate(names):
        lo, hi = offsets[k], offsets[k + 1]
        # The first example of each id within this split stays; every other one is an exact copy.
        uniq, first = np.unique(key[lo:hi], return_index=True)
        is_first = np.zeros(hi - lo, dtype=bool)
        is_first[first] = True
        exact_copies = (lo + np.flatnonzero(~is_first)).tolist()
        first_in_split = lo + first[np.searchsorted(uniq, key[lo:hi])]
        for i in exact_copies:
            within.union(i, int(first_in_split[i - lo]))
        removable = (hi - lo) - len({within.find(i) for i in range(lo, hi)})
        per_split[name] = {
            "exact": len(exact_copies),
            "near": removable - len(exact_copies),
            "near_examples": near_shown[k],
            "exact_examples": [
                {"a": flat[int(first_in_split[i - lo])].source, "b": flat[i].source, "text": _preview(flat[i])}
                for i in exact_copies[:shown]
            ],
        }

    overlap = []
    roots_by_split = [{every.find(i) for i in range(offsets[k], offsets[k + 1])} for k in range(len(splits))]
    for k in range(len(splits)):
        keys_k = set(key[offsets[k] : offsets[k + 1]].tolist())
        for m in range(k + 1, len(splits)):
            lo, hi = offsets[m], offsets[m + 1]
            exact_hits = [i for i, k_id in zip(range(lo, hi), key[lo:hi].tolist(), strict=True) if k_id in keys_k]
            any_hits = [i for i in range(lo, hi) if every.find(i) in roots_by_split[k]]
            overlap.append(
                {
                    "a": names[k],
                    "b": names[m],
                    "exact": len(exact_hits),
                    "exact_or_near": len(any_hits),
                    "share_of_b": round(len(any_hits) / max(hi - lo, 1), 4),
                    "examples": [{"b": flat[i].source, "text": _preview(flat[i])} for i in any_hits[:shown]],
                }
            )
    return {
        "threshold": THRESHOLD,
        "shingle": SHINGLE,
        "method": f"MinHash ({BINS} bins, {BANDS}x{ROWS} LSH bands)",
        "splits": per_split,
        "overlap": overlap,
    }
