"""A merge's report as a report-kit Report: what was merged, the checks it passed, what else was written."""

from __future__ import annotations

from kielo.report import KeyValues, Report


def _pct(x: float) -> str:
    return f"{100 * x:.2g}%" if x < 0.1 else f"{100 * x:.0f}%"


def _verdict(report: dict) -> str:
    s = report["storage"]
    broken = report.get("gguf", {}).get("broken_types")
    if not s["passed"]:
        return f"FAIL: storing the merged weights in {s['dtype']} {s['failure']}; --dtype auto avoids it"
    if broken:
        return f"FAIL: GGUF {', '.join(broken)} breaks the model (see below); use a wider type"
    return "PASS"


def _storage(s: dict) -> str:
    """The stored dtype, why, and what each dtype does to the update."""
    e = s["update_error"]
    why = s.get("why", "as asked")
    others = ", ".join(f"{k} {_pct(e[k])}" for k in e if k != s["dtype"])
    return (
        f"{s['dtype']} ({why}); it changes the update by {_pct(e[s['dtype']])} of its norm "
        f"(at most {_pct(s['max_update_error'])} allowed; {others})"
    )


def _gguf_items(output: str, q: dict) -> list[tuple[str, str]]:
    """The GGUF files: how the first was checked, each quantized copy against it, the Modelfiles."""
    if "llama_cpp" in q:
        t, g, m = q["llama_cpp"]["tokenizer"], q["llama_cpp"]["greedy"], q["quality"]
        check = (
            f"tokenizer {t['identical_ids']}/{t['texts']} texts identical to HF's, greedy answers identical "
            f"{g['identical_answers']}/{g['sequences']}, {g['near_ties']} near-ties (stops where the merged model stops: "
            f"{g['same_stop']}/{g['sequences']}); "
            f"held-out loss {m['loss']:.4f}, end token on {100 * m['end_token_rate']:.0f}% of {m['prompts']} prompts"
        )
    else:
        check = (
            f"max |logit diff| {q['max_abs_logit_diff']:.4g} vs the merged model, tokenizer "
            f"{q['tokenizer']['identical_ids']}/{q['tokenizer']['texts']} texts identical; {q.get('llama_cpp_note', '')}"
        )
    items = [("GGUF", f"{output}/{q['file']} ({q['type']}, written by {q.get('writer', 'kielo')}, {q['status']}): {check}")]
    for c in q.get("quantized", []):
        verdict = "ok" if c["passed"] else "BREAKS THE MODEL: " + "; ".join(c["problems"])
        items.append(
            (
                f"GGUF {c['type']}",
                f"{output}/{c['file']}: held-out loss {c['loss']:.4f} ({c['loss_change']:+.4f} vs lossless), end token on "
                f"{100 * c['end_token_rate']:.0f}% ({100 * c['end_token_rate_change']:+.0f} points); {verdict}",
            )
        )
    for mf in q.get("modelfiles", []):
        fit = "matches the trained template" if mf["passed"] else f"differs from the trained template on conversations {mf['differ']}"
        items.append((f"Ollama {mf['file']}", f"FROM {mf['gguf']}, stop {mf['stop']!r}, {fit}"))
    a = q.get("adapter", {})
    if "file" in a:
        items.append(("GGUF adapter alone (llama.cpp --lora)", f"{output}/{a['file']} ({a['status']})"))
    elif "skipped" in a:
        items.append(("GGUF adapter alone", f"not written ({a['skipped']})"))
    return items


def merge_summary(report: dict) -> Report:
    """The merge report (as :func:`kielo.merge.run.merge` returns it) as facts, one per check or output."""
    v, effect, w, s = report["verification"], report["adapter_effect"], report["weights"], report["storage"]
    g = v["greedy"]
    items = [
        ("verdict", _verdict(report)),
        ("merged", f"{report['output']} ({report['dtype']}, from {report['base']})"),
        (
            "weights",
            f"{w['adapted_weights']} adapted weights equal W + scaling * B @ A (within "
            f"{w['max_error_in_rounding_steps']:.2g} rounding steps)",
        ),
        ("stored as", _storage(s)),
        (
            "check vs base + adapter",
            f"PASS, max |logit diff| {v['max_abs_logit_diff']:.4g} (tolerance {v['tolerance']:g}); "
            f"greedy answers identical {g['identical_answers']}/{v['sequences']}, {g['near_ties']} near-ties; "
            f"the adapter itself moves logits by up to {effect['max_abs_logit_diff']:.4g}",
        ),
    ]
    t = report.get("vs_trained", {})
    if "max_abs_logit_diff" in t:
        items.append(
            (
                "vs the quantized base + adapter training used",
                f"max |logit diff| {t['max_abs_logit_diff']:.4g} (the base's quantization error; informational)",
            )
        )
    if "requantized" in report:
        r = report["requantized"]
        items.append(
            (
                "NF4 copy",
                f"{report['output']}/{r['folder']}, held-out loss {r['loss_merged']:.4f} -> {r['loss_nf4']:.4f} "
                f"({r['loss_change']:+.4f}) on {r['examples']} examples from {r['held_out']}",
            )
        )
    if "gguf" in report:
        items += _gguf_items(report["output"], report["gguf"])
    if "wall_time_s" in report:
        items.append(("report", f"{report['output']}/merge_report.json and merge_report.html ({report['wall_time_s']:.0f} s)"))
    return Report(f"kielo merge: {report['output']}", [KeyValues(items)], data=report)
