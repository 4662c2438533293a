"""Examples shown exactly as the model sees them: every token, the trained span highlighted.

A rendered example is plain data (token texts with flags), so the terminal and the HTML report show the
same thing. Template and masking mistakes (a missing end token, a trained prompt, doubled BOS, stray
newlines) are visible at a glance.
"""

from __future__ import annotations

import html

from kielo.data.encode import IGNORE
from kielo.data.records import Example

SHOWN_AFTER_CUT = 32  # tokens shown past data.max_length, to show what is lost


def token_pieces(tokenizer, ids: list[int]) -> list[str]:
    """The text each token adds, decoding incrementally (as streaming detokenizers do).

    Decoding tokens one by one loses word-initial spaces (SentencePiece) and splits multi-byte
    characters (byte-level BPE); decoding a short window and taking the difference keeps both right.
    A token that ends inside a character adds nothing; the one that completes it carries the character.
    """
    pieces: list[str] = []
    start = done = 0  # window start; tokens before `done` are emitted
    for i in range(len(ids)):
        before = tokenizer.decode(ids[start:done], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        now = tokenizer.decode(ids[start : i + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if len(now) > len(before) and not now.endswith("\ufffd") and now.startswith(before):
            pieces += [""] * (i - done) + [now[len(before) :]]
            start, done = done, i + 1
    if done < len(ids):  # a trailing partial character
        pieces += [""] * (len(ids) - done - 1) + ["\ufffd"]
    return pieces


def render_example(
    tokenizer, input_ids: list[int], labels: list[int], max_length: int, example: Example, split: str, dropped: bool
) -> dict:
    """Tokens of the full encoding (before ``max_length``), each with text, id and flags.

    ``trained``: in the loss (the first token never is: nothing predicts it); ``special``: a special
    token; ``cut``: beyond ``max_length``, never seen by the model.
    """
    shown = input_ids[: max_length + SHOWN_AFTER_CUT]
    special = set(tokenizer.all_special_ids)
    tokens = [
        {"text": text, "id": tok_id, "trained": i > 0 and labels[i] != IGNORE, "special": tok_id in special, "cut": i >= max_length}
        for i, (tok_id, text) in enumerate(zip(shown, token_pieces(tokenizer, shown), strict=True))
    ]
    return {
        "split": split,
        "source": example.source,
        "tokens": tokens,
        "length": len(input_ids),
        "cut": max(0, len(input_ids) - max_length),
        "dropped": dropped,
    }


def _visible(text: str) -> str:
    """Newlines shown as ↵ (then the line break) so template whitespace is visible."""
    return text.replace("\n", "↵\n")


# ANSI: green = trained, dim = masked, magenta = special token, red strike-through = cut by max_length.
_STYLE = {"trained": "\033[1;32m", "masked": "\033[2m", "special": "\033[35m", "cut": "\033[9;31m"}
_RESET = "\033[0m"


def _kind(tok: dict) -> str:
    return "cut" if tok["cut"] else "trained" if tok["trained"] else "masked"


def to_ansi(rendered: dict, color: bool = True) -> str:
    """The example for a terminal; without ``color`` the trained span is marked with ⟦ ⟧."""
    head = f"── {rendered['split']}: {rendered['source']} ({rendered['length']} tokens"
    head += f", {rendered['cut']} cut by data.max_length" if rendered["cut"] else ""
    head += ", dropped: nothing left to train" if rendered["dropped"] else ""
    out = [head + ") ──\n"]
    prev = None
    for tok in rendered["tokens"]:
        kind = _kind(tok)
        text = _visible(tok["text"])
        if color:
            style = _STYLE[kind] + (_STYLE["special"] if tok["special"] and kind != "cut" else "")
            out.append(f"{style}{text}{_RESET}")
        else:
            if prev == "trained" and kind != "trained":
                out.append("⟧")
            if kind != prev and kind in ("trained", "cut"):
                out.append("⟦" if kind == "trained" else "✂")
            out.append(text)
        prev = kind
    if not color and prev == "trained":
        out.append("⟧")
    if rendered["cut"] > SHOWN_AFTER_CUT:
        out.append(f" … ({rendered['cut'] - SHOWN_AFTER_CUT} more cut tokens)")
    return "".join(out) + "\n"


LEGEND = "green = trained (in the loss), dim = masked, magenta = special token, red strike-through = cut by data.max_length"


def to_html(rendered: dict) -> str:
    """The example as HTML: one span per token (hover for its id), classes styled by the report."""
    parts = []
    for tok in rendered["tokens"]:
        cls = [_kind(tok)] + (["special"] if tok["special"] else [])
        title = f"id {tok['id']}: {tok['text']!r}"
        parts.append(f'<span class="tok {" ".join(cls)}" title="{html.escape(title)}">{html.escape(_visible(tok["text"]))}</span>')
    note = f"{rendered['length']} tokens"
    note += f", {rendered['cut']} cut by data.max_length" if rendered["cut"] else ""
    note += " — dropped: nothing left to train" if rendered["dropped"] else ""
    more = (
        f'<span class="more"> … {rendered["cut"] - SHOWN_AFTER_CUT} more cut tokens</span>'
        if rendered["cut"] > SHOWN_AFTER_CUT
        else ""
    )
    return (
        f'<div class="example"><div class="exhead">{html.escape(rendered["split"])}: '
        f"{html.escape(rendered['source'])} ({html.escape(note)})</div><pre>{''.join(parts)}{more}</pre></div>"
    )
