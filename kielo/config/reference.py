"""The README's config reference, generated from the schema (a test keeps the README equal to it)."""

from __future__ import annotations

from dataclasses import MISSING, fields

from kielo.config.schema import SECTIONS, Config

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"


def _default(f) -> str:
    value = f.default if f.default is not MISSING else f.default_factory()
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def reference_markdown() -> str:
    """A Markdown table per section: key, default, allowed values and help."""
    lines = []
    for top in fields(Config):
        if top.name in SECTIONS:
            lines += [f"**`{top.name}`** — {top.metadata['help']}", "", "| key | default | meaning |", "|---|---|---|"]
            for f in fields(SECTIONS[top.name]):
                choices = f.metadata.get("choices")
                extra = f" One of: {', '.join(f'`{c}`' for c in choices)}." if choices else ""
                lines.append(f"| `{top.name}.{f.name}` | `{_default(f)}` | {f.metadata['help']}{extra} |")
            lines.append("")
        else:
            lines += [f"**`{top.name}`** (default `{_default(top)}`) — {top.metadata['help']}", ""]
    return "\n".join(lines).rstrip() + "\n"


def replace_in(text: str) -> str:
    """``text`` with the block between the reference markers regenerated."""
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{reference_markdown()}{END}{tail}"


if __name__ == "__main__":  # python -m kielo.config.reference  (rewrites README.md in place)
    from pathlib import Path

    readme = Path("README.md")
    readme.write_text(replace_in(readme.read_text(encoding="utf-8")), encoding="utf-8")
