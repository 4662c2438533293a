"""`kielo analyze-data`: how a data set meets a model's tokenizer, before any GPU hour is spent.

Everything is measured with training's own code: the encoder formats, tokenizes, masks and truncates;
training's batch plan builds the micro-batches; kielo's language check names the languages.
"""

from __future__ import annotations

import gc
import logging
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np

from kielo.analyze import advice, languages
from kielo.analyze.budget import token_budget
from kielo.analyze.duplicates import dedup_text, find_duplicates, signatures
from kielo.analyze.load import load_extra_tokenizer, load_model_tokenizer
from kielo.analyze.parallel import available_cores, run_tasks, state
from kielo.analyze.render import render_example
from kielo.analyze.stats import length_features, split_stats
from kielo.analyze.tokenizer_efficiency import tokenizer_efficiency
from kielo.config.schema import Config
from kielo.data.pairs import pair_statistics, pair_summary, preference_file
from kielo.data.preference import load_pairs
from kielo.data.records import load_examples
from kielo.data.sources import ReadOptions
from kielo.errors import KieloError

log = logging.getLogger(__name__)

CHUNK = 2000  # examples per parallel task: big enough to amortize a task, small enough to balance cores
FINNISH = "fi"


def split_paths(files: list[str | Path], config: Config) -> list[tuple[str, Path]]:
    """(name, path) per split: each file is a split named by its stem, plus ``data.validation`` when set."""
    paths = [Path(f) for f in files]
    if config.data.validation and Path(config.data.validation).resolve() not in {p.resolve() for p in paths}:
        log.info("also analysing data.validation = %s", config.data.validation)
        paths.append(Path(config.data.validation))
    if not paths:
        raise KieloError("no data files to analyse", "pass one or more files: kielo analyze-data train.jsonl dev.jsonl")
    named: list[tuple[str, Path]] = []
    for p in paths:
        name, k = p.stem, 2
        while name in {n for n, _ in named}:
            name, k = f"{p.stem}_{k}", k + 1
        named.append((name, p))
    return named


def _encode_task(split: int, start: int, end: int):
    """Encode examples [start, end) of a split as training would, and MinHash them for duplicate search."""
    examples = state()["splits"][split][start:end]
    return state()["encoder"].encode_many(examples, start_index=start), signatures([dedup_text(e) for e in examples])


def _language_task():
    """Languages of the sampled prompts and answers of every split."""
    out = []
    for examples, indices in zip(state()["splits"], state()["samples"], strict=True):
        pairs = [languages.texts_to_check(examples[i]) for i in indices]
        out.append((languages.detect_many([p for p, _ in pairs]), languages.detect_many([a for _, a in pairs])))
    return out


@contextmanager
def _without_cyclic_gc():
    """Pause the cyclic garbage collector: an analysis holds millions of lists and dicts and makes no reference
    cycles, and each full collection would walk all of them again (it took a third of the time at 100,000)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def analyze_data(
    files: list[str | Path],
    config: Config,
    tokenizers: list[str] | tuple[str, ...] = (),
    output_dir: str | Path | None = None,
    examples: int = 3,
    sample: int = 1000,
    workers: int | None = None,
) -> dict:
    """Analyse data files (each a split) for ``config``'s model and write the report when ``output_dir`` is given.

    ``tokenizers``: more tokenizers to compare on Finnish text (folders, model names, .gguf files);
    ``examples``: how many examples of each split to render token by token; ``sample``: examples per split
    whose languages are checked (0 = all); ``workers``: processes (default: the available cores).
    Returns every number as JSON-ready data (what ``analysis.json`` holds).
    """
    with _without_cyclic_gc():
        return _analyze(files, config, tokenizers, output_dir, examples, sample, workers)


def _analyze(files, config, tokenizers, output_dir, examples, sample, workers) -> dict:
    started = time.perf_counter()
    phases: dict[str, float] = {}

    def lap(name: str) -> None:
        phases[name] = round(time.perf_counter() - started - sum(phases.values()), 2)

    model = load_model_tokenizer(config)
    config = model.config
    extras = {}
    for name in dict.fromkeys(tokenizers):
        if name != config.model.name:
            extras[name] = load_extra_tokenizer(name, config.model.trust_remote_code)
    named = split_paths(files, config)
    # Empty answers are reported (empty_fields), not refused: finding them is what the analysis is for.
    data, pairs = [], {}
    for name, path in named:
        if preference_file(path):
            # A preference file: the usual analysis sees each prompt with its chosen answer; the pair table
            # compares the two answers.
            pairs[name] = load_pairs(path, config.data.system_prompt, given_with="DATA_FILE")
            data.append([p.example("chosen") for p in pairs[name]])
        else:
            data.append(load_examples(path, config.data.system_prompt, require_answer=False, options=ReadOptions.of(config.data)))
    names = [n for n, _ in named]
    lap("load tokenizers and data")
    seed = config.training.seed
    samples = [languages.sample_indices(len(d), sample, seed + k) for k, d in enumerate(data)]
    total = sum(len(d) for d in data)
    workers = workers or available_cores()
    log.info(
        "analysing %d examples in %d split(s) with %s (%s template), %d worker(s)",
        total,
        len(data),
        config.model.name,
        model.template.name,
        workers,
    )

    # The per-example work (encoding, MinHash, language checks) in parallel; the language check goes first
    # so its detectors load while other workers encode.
    tasks: list = [(_language_task, ())]
    owners = []
    for k, d in enumerate(data):
        for start in range(0, len(d), CHUNK):
            tasks.append((_encode_task, (k, start, min(start + CHUNK, len(d)))))
            owners.append(k)
    results = run_tasks(tasks, {"encoder": model.encoder, "splits": data, "samples": samples}, workers, total)
    found_languages, chunks = results[0], results[1:]
    lap("encode, MinHash, languages (parallel)")

    L = config.data.max_length
    t = config.training
    result: dict = {
        "model": config.model.name,
        "template": model.template.name,
        "end_token": model.template.end_token,
        "files": {n: str(p) for n, p in named},
        "config": {"data": asdict(config.data), "training": {"micro_batch_size": t.micro_batch_size, "seed": seed}},
        "splits": {},
        "token_budget": {},
        "languages": {},
    }
    lengths: dict[str, dict[str, np.ndarray]] = {}
    sigs = []
    rendered = []
    finnish: list[str] = []
    sampled_texts: list[str] = []
    for k, (name, examples_k) in enumerate(zip(names, data, strict=True)):
        mine = [c for c, owner in zip(chunks, owners, strict=True) if owner == k]
        encoded = [e for enc, _ in mine for e in enc]
        sigs.append(np.concatenate([s for _, s in mine]))
        feats = length_features(encoded, L)
        lengths[name] = feats
        # fit() truncates in place; keep the full encodings of the examples to render.
        full = [(e.input_ids, e.labels) for e in encoded[:examples]]
        kept, st = model.encoder.fit_all(examples_k, encoded)
        kept_at = {e.index for e in kept}
        rendered += [
            render_example(model.tokenizer, ids, labels, L, examples_k[i], name, dropped=i not in kept_at)
            for i, (ids, labels) in enumerate(full)
        ]
        result["splits"][name] = split_stats(examples_k, feats, kept, st, L)
        result["token_budget"][name] = token_budget(
            kept, t.micro_batch_size, model.tokenizer.pad_token_id, seed, L, config.data.packing
        )
        prompt_langs, answer_langs = found_languages[k]
        result["languages"][name] = languages.language_summary(examples_k, samples[k], prompt_langs, answer_langs)
        for i, pl, al in zip(samples[k], prompt_langs, answer_langs, strict=True):
            prompt, answer = languages.prompt_and_answer(examples_k[i])
            finnish += [text for text, code in ((prompt, pl), (answer, al)) if code == FINNISH]
            sampled_texts += [prompt, answer]

    if pairs:
        result["pairs"] = {name: pair_summary(pair_statistics(model.encoder, split)) for name, split in pairs.items()}
    lap("lengths, truncation, batches")
    result["duplicates"] = find_duplicates(names, data, sigs)
    lap("duplicates")
    texts = finnish or sampled_texts  # data with no Finnish at all is still compared, on all its text
    result["tokenizers_language"] = FINNISH if finnish else "all"
    result["tokenizers"] = {config.model.name: tokenizer_efficiency(model.tokenizer, texts)}
    for name, tok in extras.items():
        result["tokenizers"][name] = tokenizer_efficiency(tok, texts)
    lap("tokenizer efficiency")
    result["max_length"] = advice.recommend_max_length(lengths[names[0]]["total"], L, names[0])
    result["warnings"] = advice.warnings(result)
    result["examples"] = rendered
    seconds = time.perf_counter() - started
    # The report's own writing time is not in the report; it is logged.
    result["timing"] = {
        "seconds": round(seconds, 2),
        "examples": total,
        "examples_per_second": round(total / seconds, 1),
        "workers": workers,
        "phases": phases,
    }
    log.info("analysed %d examples in %.1f s (%s)", total, seconds, ", ".join(f"{k} {v} s" for k, v in phases.items()))
    if output_dir is not None:
        from kielo.analyze.report import write_report

        result["outputs"] = write_report(result, lengths, Path(output_dir))
        log.info("report written in %.1f s", time.perf_counter() - started - seconds)
    return result
