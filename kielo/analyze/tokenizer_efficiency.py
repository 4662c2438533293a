"""How well a tokenizer handles Finnish: characters per token, tokens per word, fragmented words.

Measured on the Finnish texts of the language sample, the same texts for every tokenizer so they compare
side by side. A word is counted as it appears inside running text: tokenized after a space, with a token
that is only the space not counted as a piece of the word.
"""

from __future__ import annotations

import re
from collections import Counter

from kielo.analyze.render import token_pieces

# Letters (any script), with inner hyphens and apostrophes: "pinta-ala", "Alice's".
WORD = re.compile(r"[^\W\d_]+(?:[-'’][^\W\d_]+)*")
FREQUENT = 500  # the most frequent words considered for "most fragmented"


def _word_ids(tokenizer, words: list[str]) -> list[list[int]]:
    ids = tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"] if words else []
    space_only: dict[int, bool] = {}
    out = []
    for seq in ids:
        if len(seq) > 1:
            first = seq[0]
            if first not in space_only:
                space_only[first] = not tokenizer.decode([first]).strip()
            if space_only[first]:
                seq = seq[1:]
        out.append(seq)
    return out


def tokenizer_efficiency(tokenizer, texts: list[str], top: int = 15) -> dict:
    """Numbers for one tokenizer over ``texts`` (Finnish text, template-free)."""
    chars = sum(len(t) for t in texts)
    tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else 0
    counts = Counter(w for t in texts for w in WORD.findall(t))
    words = list(counts)
    pieces = dict(zip(words, _word_ids(tokenizer, words), strict=True))
    occurrences = sum(counts.values())
    in_pieces = sum(counts[w] * len(pieces[w]) for w in words)
    split3 = sum(counts[w] for w in words if len(pieces[w]) >= 3)
    frequent = [w for w, c in counts.most_common(FREQUENT) if c >= 2]
    frequent.sort(key=lambda w: (-len(pieces[w]), -counts[w], w))
    return {
        "texts": len(texts),
        "characters": chars,
        "tokens": tokens,
        "chars_per_token": round(chars / tokens, 3) if tokens else None,
        "words": occurrences,
        "unique_words": len(words),
        "tokens_per_word": round(in_pieces / occurrences, 3) if occurrences else None,
        "words_3plus_pieces_share": round(split3 / occurrences, 4) if occurrences else None,
        "most_fragmented": [
            {
                "word": w,
                "count": counts[w],
                "pieces": len(pieces[w]),
                "split": "|".join(p.strip() or p for p in token_pieces(tokenizer, pieces[w]) if p),
            }
            for w in frequent[:top]
        ],
    }
