"""The terminal summary: the tables, the recommendation and the warnings as plain text."""

from __future__ import annotations

from kielo.analyze.tables import Table, all_tables, recommendation


def format_table(table: Table) -> str:
    """A table as aligned plain-text columns."""
    widths = [max(len(str(r[i])) for r in [table.headers, *table.rows]) for i in range(len(table.headers))]
    lines = [
        table.title,
        "  ".join(h.ljust(w) for h, w in zip(table.headers, widths, strict=True)).rstrip(),
        "  ".join("─" * w for w in widths),
    ]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table.rows]
    lines += [f"  ({note})" for note in table.notes]
    return "\n".join(lines)


def summary(result: dict) -> str:
    """Everything a user should see after an analysis, as text."""
    head = (
        f"model {result['model']} ({result['template']} template, end token {result['end_token']}), "
        f"{sum(s['examples'] for s in result['splits'].values())} examples in {len(result['splits'])} split(s), "
        f"{result['timing']['seconds']:.1f} s"
    )
    parts = [head] + [format_table(t) for t in all_tables(result)]
    rec = recommendation(result)
    if rec:
        parts.append("Recommendation\n  " + rec)
    parts.append("Warnings\n" + ("\n".join(f"  ! {w}" for w in result["warnings"]) or "  none"))
    outputs = result.get("outputs")
    if outputs:
        parts.append(f"Report: {outputs['html']}\nJSON:   {outputs['json']}\nPlots:  {', '.join(outputs['plots'])}")
    return "\n\n".join(parts) + "\n"
