"""The command line's one spelling rule: options are written with underscores, and dashes are accepted too.

``--gpu-memory`` is ``--gpu_memory``, ``--training.max-steps`` is ``--training.max_steps``: every parser is
declared with underscores (so ``--help`` shows that spelling) and every argv goes through
:func:`underscore_options` before it is parsed.
"""

from __future__ import annotations


def underscore_options(argv: list[str]) -> list[str]:
    """``argv`` with dashes inside option names (not their values) turned into underscores.

    A token is an option name when it starts with ``--``; in ``--key=value`` only ``key`` changes. Everything
    after a bare ``--`` is left alone, as argparse treats it as positional.
    """
    out = []
    for i, tok in enumerate(argv):
        if tok == "--":
            return out + argv[i:]
        if tok.startswith("--") and len(tok) > 2:
            key, eq, value = tok[2:].partition("=")
            tok = "--" + key.replace("-", "_") + eq + value
        out.append(tok)
    return out
