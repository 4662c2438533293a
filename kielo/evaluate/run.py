"""`kielo evaluate` and `kielo compare` as library functions.

:func:`evaluate` scores one model (a base, or base + adapter) on a data set; :func:`compare` scores the
base and each adapter on the same examples with the same settings, and adds paired deltas with bootstrap
intervals, per-example loss differences, the biggest wins and losses side by side, adapter analysis,
plots, an optional learning curve over a run's checkpoints and one self-contained HTML report.

Both compute the response-only loss on every example that has a reference, and generate on all examples
or a task-stratified subset of ``generate`` of them (``0``: no generation).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from kielo.config.schema import Config
from kielo.data.batches import eval_batch_size
from kielo.data.records import Example
from kielo.errors import KieloError
from kielo.evaluate import metrics as m
from kielo.evaluate import paired, stats
from kielo.evaluate import preference as pairs
from kielo.evaluate.adapter_analysis import analyze_adapter
from kielo.evaluate.card_numbers import record_held_out
from kielo.evaluate.dataset import expected_language, has_reference, load_eval_examples, stratified_subset, task_of
from kielo.evaluate.harness import HarnessOptions, run_harness
from kielo.evaluate.learning_curve import has_checkpoints, learning_curve, run_points
from kielo.evaluate.loading import load_all, load_one, resolve
from kielo.evaluate.loss import encode_for_loss, example_losses
from kielo.evaluate.scores import GENERATION_METRICS, base_row, corpus_diversity, score_answer, summarize, summarize_by_task
from kielo.evaluate.settings import GenerationChoice
from kielo.model.bundle import Bundle, use_variant

log = logging.getLogger(__name__)

BASE = "base"
# Metrics of the compact summary (what the demo's report shows), in order.
SUMMARY_METRICS = ("loss", "chrf", "task_success", "end_token", "expected_language")


def _bar(progress: bool, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", disable=not progress or total == 0, dynamic_ncols=True, leave=False)


def _data(config: Config, data) -> tuple[list[Example], str]:
    if isinstance(data, (str, Path)):
        return load_eval_examples(data, config.data.system_prompt), str(data)
    if data is None:
        raise KieloError("no evaluation data given", "pass --data FILE (held-out examples, e.g. data/fi_instruct/test.jsonl)")
    return list(data), "(examples given in code)"


def _data_notes(examples: list[Example], generated: list[int], encode_report: dict) -> list[str]:
    notes = []
    missing = sum(not has_reference(e) for e in examples)
    if missing == len(examples):
        notes.append(
            "No example has a reference answer: the loss and the reference metrics (chrF, ROUGE-L, exact match, "
            "contains, length ratio, classification success) are skipped; generations are scored on the end "
            "token, language, repetition and format constraints only."
        )
    elif missing:
        notes.append(f"{missing} of {len(examples)} examples have no reference answer: the loss and reference metrics skip them.")
    if len(generated) < len(examples):
        notes.append(
            f"Generation ran on a task-stratified subset of {len(generated)} of {len(examples)} examples; the "
            "loss covers every example with a reference."
        )
    unknown = sum(expected_language(examples[i]) is None for i in generated)
    if unknown:
        notes.append(
            f"{unknown} of {len(generated)} generated examples are left out of the language share: their expected answer "
            "language is unknown (no answer_lang tag, and not a translation with a known target); tag them with answer_lang."
        )
    if encode_report["truncated"] or encode_report["dropped_no_target"]:
        notes.append(
            f"{encode_report['truncated']} examples were truncated to data.max_length for the loss, "
            f"{encode_report['dropped_no_target']} had no answer token left and have no loss."
        )
    return notes


def _score_variant(
    bundle: Bundle, examples: list[Example], encoded: list, gen_idx: list[int], name: str, progress: bool, use_chrf: bool
) -> dict:
    """Loss on every encoded example and metrics on the generated ones, with the bundle's current model."""
    rows = [base_row(i, ex) for i, ex in enumerate(examples)]
    for r in rows:
        r.update(loss=None, loss_sum=None, loss_tokens=0, generation=None)
    started = time.time()
    with _bar(progress, len(encoded), f"loss {name}") as bar:
        losses = example_losses(bundle, encoded, eval_batch_size(bundle.config), progress=bar.update)
    loss_s = time.time() - started
    for i, (loss_sum, tokens) in losses.items():
        rows[i].update(loss_sum=loss_sum, loss_tokens=tokens, loss=loss_sum / tokens if tokens else None)
    tokens_per_s, gen_s = None, 0.0
    if gen_idx:
        from kielo.infer.generate import generate

        started = time.time()
        with _bar(progress, len(gen_idx), f"generate {name}") as bar:
            gens, tokens_per_s = generate(
                bundle, [examples[i].prompt_messages for i in gen_idx], bundle.config.generation, progress=bar.update
            )
        gen_s = time.time() - started
        for i, g in zip(gen_idx, gens, strict=True):
            rows[i].update(generation=g.text, **score_answer(examples[i], g.text, g.tokens, g.ended, use_chrf))
    log.info("%s: loss on %d examples in %.1fs, %d generations in %.1fs", name, len(losses), loss_s, len(gen_idx), gen_s)
    return {
        "examples": rows,
        "overall": summarize(rows),
        "per_task": summarize_by_task(rows),
        "diversity": corpus_diversity([r["generation"] for r in rows if r["generation"] is not None]),
        "timing": {"loss_s": round(loss_s, 2), "generation_s": round(gen_s, 2), "tokens_per_s": tokens_per_s},
    }


def _loss_pairs(rows: list[dict]) -> tuple[list[float], list[int]]:
    scored = [r for r in rows if r["loss"] is not None]
    return [r["loss"] for r in scored], [r["loss_tokens"] for r in scored]


def _intervals(rows: list[dict], resamples: int) -> dict:
    """Bootstrap intervals of one model's means: the token-weighted loss and every generation metric."""
    out = {}
    losses, tokens = _loss_pairs(rows)
    out["loss"] = stats.bootstrap_mean(losses, tokens, resamples) if losses else None
    for metric in GENERATION_METRICS:
        vals = [r[metric.key] for r in rows if r["generation"] is not None and r.get(metric.key) is not None]
        out[metric.key] = stats.bootstrap_mean(vals, resamples=resamples) if vals else None
    return out


def _compact(results: dict, deltas: dict) -> dict:
    """The machine-readable summary: a few headline numbers per model and the deltas against the base."""
    models = {}
    for name, res in results.items():
        o = res["overall"]
        entry = {"loss": o["loss"]["loss"] if o["loss"] else None, "perplexity": o["loss"]["perplexity"] if o["loss"] else None}
        entry.update({k: o["metrics"][k] for k in SUMMARY_METRICS if k != "loss"})
        entry.update(
            loss_examples=o["loss"]["examples"] if o["loss"] else 0,
            generated_examples=o["generated"],
            tokens_per_s=res["timing"]["tokens_per_s"],
        )
        models[name] = entry
    keep = ("delta", "low", "high", "n", "p_value")
    return {
        "base": BASE,
        "metrics": list(SUMMARY_METRICS),
        "level": stats.LEVEL,
        "models": models,
        "deltas": {
            name: {k: ({f: d[k][f] for f in keep} if d.get(k) else None) for k in SUMMARY_METRICS} for name, d in deltas.items()
        },
    }


def _header(
    config: Config,
    source,
    bundle: Bundle,
    choice: GenerationChoice,
    data_path: str,
    examples: list[Example],
    gen_idx: list[int],
    encode_report: dict,
    resamples: int,
) -> dict:
    tasks: dict[str, int] = {}
    for ex in examples:
        tasks[task_of(ex)] = tasks.get(task_of(ex), 0) + 1
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "name": config.model.name,
            "path": source.path,
            "template": bundle.template.name,
            "end_token": bundle.template.end_token,
            "quantization_bits": config.quantization.bits,
            "device": str(bundle.device),
        },
        "data": {
            "path": data_path,
            "examples": len(examples),
            "with_reference": sum(map(has_reference, examples)),
            "generated": len(gen_idx),
            "tasks": tasks,
            "encoding": encode_report,
        },
        "settings": {
            "generation": asdict(config.generation),
            "generation_source": choice.as_dict(),
            "generation_text": choice.describe(),
            "decoding": "greedy" if config.generation.temperature == 0 else "sampling",
            "max_length": config.data.max_length,
            "loss_batch_size": eval_batch_size(config),
            "bootstrap_resamples": resamples,
            "level": stats.LEVEL,
        },
    }


def _prepare(config: Config, data, adapters: list[str], generate: int | None, chosen_generation):
    config, source, paths, choice = resolve(config, adapters, chosen_generation)
    examples, data_path = _data(config, data)
    gen_idx = stratified_subset(examples, generate) if generate != 0 else []
    return config, source, paths, choice, examples, data_path, gen_idx, m.chrf_available()


def evaluate(
    config: Config,
    data,
    adapter: str | None = None,
    generate: int | None = None,
    bootstrap: int = stats.DEFAULT_RESAMPLES,
    harness: HarnessOptions | None = None,
    output_dir: str | Path | None = None,
    progress: bool = True,
    chosen_generation: Collection[str] | None = None,
) -> dict:
    """Evaluate one model (``config.model`` alone, or with ``adapter``) on ``data`` and write the report.

    ``data`` is a file path (any training format; rows without answers are allowed) or a list of
    examples; ``generate`` is how many examples to generate on (task-stratified; None: all; 0: none);
    ``bootstrap`` the resamples for the 95% intervals; ``harness`` optional lm-evaluation-harness tasks.
    Generation uses the settings the adapter's training run saved, except the ``chosen_generation`` keys of
    ``config.generation`` (None: those that differ from the defaults); ``settings.generation_source`` says which.
    Writes ``report.json``, ``report.md``, ``generations.jsonl`` and the resolved config to ``output_dir``
    (default ``config.output_dir``).

    Returns the report dict: ``model``, ``data``, ``settings``, ``result`` (``overall``, ``per_task``,
    ``intervals``, ``diversity``, ``timing``, ``examples``), ``adapter_analysis`` (with an adapter),
    ``harness``, ``summary`` (as in :func:`compare`, without deltas), ``notes`` and ``files``.
    """
    from kielo.evaluate import report

    adapters = [adapter] if adapter else []
    config, source, paths, choice, examples, data_path, gen_idx, use_chrf = _prepare(
        config, data, adapters, generate, chosen_generation
    )
    adapter_path = paths[-1] if paths else None
    started = time.time()
    bundle = load_one(config, adapter_path)
    encoded, encode_report = encode_for_loss(bundle, examples)
    name = Path(adapter_path).name if adapter_path else BASE
    result = _score_variant(bundle, examples, encoded, gen_idx, name, progress, use_chrf)
    result["intervals"] = _intervals(result["examples"], bootstrap)
    out = {
        "kind": "evaluation",
        "name": name,
        "adapter": adapter_path,
        **_header(config, source, bundle, choice, data_path, examples, gen_idx, encode_report, bootstrap),
    }
    out["result"] = result
    out["adapter_analysis"] = analyze_adapter(bundle.model, "default") if adapter_path else None
    out["harness"] = None
    if harness:
        variant = "default" if adapter_path else BASE  # the name load_bundle gives its adapter
        found = run_harness(bundle, [variant], harness)
        out["harness"] = {**found, "results": {name: found["results"][variant]}}
    out["summary"] = _compact({name: result}, {})
    out["notes"] = _data_notes(examples, gen_idx, encode_report) + (
        [] if use_chrf else ["chrF skipped: sacrebleu is not installed (pip install 'kielo[eval]')."]
    )
    out["wall_time_s"] = round(time.time() - started, 2)
    report.write_evaluation(out, Path(output_dir or config.output_dir), config)
    return out


def compare(
    config: Config,
    data,
    adapters: list[str],
    generate: int | None = None,
    bootstrap: int = stats.DEFAULT_RESAMPLES,
    checkpoints: bool = False,
    harness: HarnessOptions | None = None,
    output_dir: str | Path | None = None,
    progress: bool = True,
    chosen_generation: Collection[str] | None = None,
    preference_data: str | Path | None = None,
    beta: float | None = None,
) -> dict:
    """Compare the base model with each adapter on the same ``data`` and settings; write the reports.

    The base without adapter is always the first variant; each of ``adapters`` (an adapter folder, a
    checkpoint or a run folder; a run folder given as ``config.model.name`` brings its own) is another.
    ``generate``/``bootstrap``/``harness``/``chosen_generation`` as in :func:`evaluate` (every variant generates
    with the same settings); ``checkpoints`` adds a learning curve:
    the loss of every checkpoint of each run folder among the adapters; ``preference_data`` (a file of held-out
    preference pairs) adds ``preference``, each model's preference accuracy and reward margin against the base
    (DPO's implicit reward with ``beta``; None: the DPO runs', see :mod:`kielo.evaluate.preference`). Writes ``report.json``,
    ``report.md``, ``report.html`` (self-contained), ``generations/<variant>.jsonl`` and ``plots/*.png``.

    Returns the report dict with keys ``model``, ``data``, ``settings``, ``variants`` (``[{name, adapter}]``),
    ``results`` (per variant: ``overall``, ``per_task``, ``intervals``, ``diversity``, ``timing``,
    ``examples``), ``deltas`` (per adapter variant: ``overall`` and ``per_task``, each
    ``{metric: {delta, low, high, level, n, p_value}}``, adapter minus base), ``loss_differences``,
    ``wins_and_losses``, ``adapter_analysis``, ``learning_curve``, ``harness``, ``preference``, ``notes``, ``files``, and
    ``summary``, the compact machine-readable part::

        {"base": "base", "metrics": ["loss", "chrf", "task_success", "end_token", "expected_language"],
         "level": 0.95,
         "models": {name: {"loss", "perplexity", "chrf", "task_success", "end_token",
                           "expected_language", "loss_examples", "generated_examples", "tokens_per_s"}},
         "deltas": {adapter_name: {metric: {"delta", "low", "high", "n", "p_value"} | None}},
         "preference": None | {"pairs", "beta", "reference", "baseline", "models": {...}, "deltas": {...}}}

    ``loss`` is the token-weighted mean response loss; ``chrf`` is 0-100 (mean sentence chrF);
    ``task_success``, ``end_token`` (answers that ended with the end token before the length limit) and
    ``expected_language`` (answers in the row's ``answer_lang`` or a translation's target; rows with neither
    are left out, and a note counts them) are shares 0-1;
    a metric is None when nothing was measured (no references, no generation, no checkable task).
    """
    from kielo.evaluate import report

    config, source, paths, choice, examples, data_path, gen_idx, use_chrf = _prepare(
        config, data, adapters, generate, chosen_generation
    )
    if not paths:
        raise KieloError(
            "kielo compare needs at least one adapter to compare with the base",
            "pass --adapter DIR (an adapter, a checkpoint or a run folder); repeat it for more",
        )
    curve_points = {p: run_points(p) for p in paths if checkpoints and has_checkpoints(p)}
    # Checkpoints load beside the adapters (one base in memory); a run's final adapter is already a variant.
    extra = [pt.path for run, pts in curve_points.items() for pt in pts if Path(pt.path).resolve() != Path(run).resolve()]
    started = time.time()
    bundle, names, name_paths = load_all(config, paths + extra)
    variants = names[: 1 + len(paths)]
    encoded, encode_report = encode_for_loss(bundle, examples)
    results = {}
    for name in variants:
        with use_variant(bundle, name):
            results[name] = _score_variant(bundle, examples, encoded, gen_idx, name, progress, use_chrf)
        results[name]["intervals"] = _intervals(results[name]["examples"], bootstrap)
    base_rows = results[BASE]["examples"]
    deltas, loss_diffs, wins = {}, {}, {}
    for name in variants[1:]:
        rows = results[name]["examples"]
        deltas[name] = {
            "overall": paired.deltas(base_rows, rows, bootstrap),
            "per_task": paired.deltas_by_task(base_rows, rows, bootstrap),
        }
        loss_diffs[name] = paired.loss_differences(base_rows, rows)
        wins[name] = paired.wins_and_losses(base_rows, rows)
    curve = learning_curve(bundle, name_paths, curve_points, encoded, results, BASE) if checkpoints else None
    out = {"kind": "comparison", **_header(config, source, bundle, choice, data_path, examples, gen_idx, encode_report, bootstrap)}
    out["variants"] = [{"name": n, "adapter": name_paths.get(n)} for n in variants]
    out["results"] = results
    out["deltas"] = deltas
    out["loss_differences"] = loss_diffs
    out["wins_and_losses"] = wins
    out["adapter_analysis"] = {n: analyze_adapter(bundle.model, n) for n in variants[1:]}
    out["learning_curve"] = curve
    out["harness"] = run_harness(bundle, variants, harness) if harness else None
    prefs = pairs.compare_pairs(bundle, variants, paths, preference_data, beta, bootstrap) if preference_data else None
    out["preference"] = prefs
    out["summary"] = {**_compact(results, {n: d["overall"] for n, d in deltas.items()}), "preference": pairs.compact(prefs)}
    notes = _data_notes(examples, gen_idx, encode_report)
    if not use_chrf:
        notes.append("chrF skipped: sacrebleu is not installed (pip install 'kielo[eval]').")
    if checkpoints and not curve_points:
        notes.append("--checkpoints: no adapter is a run folder with checkpoints (checkpoints/step-N); no learning curve.")
    if config.generation.temperature > 0:
        notes.append(
            f"Answers were sampled (temperature {config.generation.temperature}, seed {config.generation.seed}); "
            "generation metrics vary with the seed."
        )
    out["notes"] = notes
    out["wall_time_s"] = round(time.time() - started, 2)
    report.write_comparison(out, Path(output_dir or config.output_dir), config)
    record_held_out(out)  # each compared kielo run's model card (README.md) now carries these numbers
    return out
