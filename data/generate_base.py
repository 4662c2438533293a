"""Generate the base model's own answers to every row of data/fi_instruct, for the preference set's rejections.

The embedded default model (Gemma 3 270M, 4-bit NF4 as kielo trains it, no adapter) answers each prompt
with greedy decoding and at most 96 new tokens, in kielo's built-in template: the same settings as the
README's held-out comparison of the base. The answers are cached in data/base_generations.jsonl (one
row per source row, sorted by id, with a hash of the prompt), so data/build_prefs.py needs no model.
Rows already in the cache with the same prompt are kept, and a run can stop after a time limit (the rows
left for later keep constructed rejections); run from the repository root:
python data/generate_base.py [--minutes N]  (about 20 seconds a row on 2 busy CPU cores)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).parent
SPLITS = HERE / "fi_instruct"
CACHE = HERE / "base_generations.jsonl"
MODEL = "gemma-3-270m"
MAX_NEW_TOKENS = 96
BATCH = 16

log = logging.getLogger("generate_base")


def prompt_messages(row: dict) -> list[dict]:
    """The conversation kielo prompts with for this row (everything before the reference answer)."""
    from kielo.data.records import row_to_example

    return row_to_example(row, row["id"]).prompt_messages


def prompt_hash(messages: list[dict]) -> str:
    """A short hash of the prompt, so a cached answer is never reused for an edited row."""
    return hashlib.sha256(json.dumps(messages, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def source_rows() -> list[dict]:
    """The rows whose rejection may be the base model's answer, in build_prefs' order (splits interleaved)."""
    from build_prefs import generation_ids, source_splits

    rows = {row["id"]: row for split in source_splits().values() for row in split}
    return [rows[row_id] for row_id in generation_ids()]


def read_cache() -> dict[str, dict]:
    if not CACHE.exists():
        return {}
    return {r["id"]: r for r in map(json.loads, CACHE.read_text(encoding="utf-8").splitlines()) if r}


def write_cache(cache: dict[str, dict]) -> None:
    CACHE.write_text("".join(json.dumps(cache[k], ensure_ascii=False) + "\n" for k in sorted(cache)), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=0, help="stop starting new chunks after this many minutes (0: no limit)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cache = read_cache()
    todo = []
    for row in source_rows():
        messages = prompt_messages(row)
        done = cache.get(row["id"])
        if done is None or done["prompt_sha"] != prompt_hash(messages):
            todo.append((row["id"], messages))
    log.info("%d rows to generate, %d cached", len(todo), len(cache) - sum(1 for i, _ in todo if i in cache))
    if todo:
        _generate(todo, cache, time.time() + args.minutes * 60 if args.minutes else float("inf"))
    _detect_languages(cache)


def _detect_languages(cache: dict[str, dict]) -> None:
    """Each answer's language by kielo's detector, stored so the build does not depend on the detector's version."""
    from kielo.lang import detect_language

    missing = [g for g in cache.values() if "lang" not in g]
    for g in missing:
        g["lang"] = detect_language(g["text"])
    if missing:
        write_cache(cache)


def _generate(todo: list[tuple[str, list[dict]]], cache: dict[str, dict], deadline: float) -> None:
    from kielo import generate, load_model

    bundle = load_model(MODEL, **{"data.template": "builtin"})
    settings = replace(
        bundle.config.generation, max_new_tokens=MAX_NEW_TOKENS, temperature=0.0, repetition_penalty=1.0, batch_size=BATCH
    )
    # Chunks of similar prompt length (sorted within groups of four chunks, so build_prefs' order holds)
    # waste little padding; the cache is written after each, so an interrupted run keeps what it finished.
    order = {row_id: i for i, (row_id, _) in enumerate(todo)}
    todo.sort(key=lambda t: (order[t[0]] // (4 * BATCH), len(json.dumps(t[1], ensure_ascii=False))))
    for at in range(0, len(todo), BATCH):
        if time.time() > deadline:
            log.info("time limit reached: %d rows left for a later run", len(todo) - at)
            return
        chunk = todo[at : at + BATCH]
        started = time.time()
        answers, _ = generate(bundle, [m for _, m in chunk], settings)
        for (row_id, messages), a in zip(chunk, answers, strict=True):
            cache[row_id] = {"id": row_id, "prompt_sha": prompt_hash(messages), "model": MODEL, "max_new_tokens": MAX_NEW_TOKENS,
                             "text": a.text, "ended": a.ended, "tokens": a.tokens}  # fmt: skip
        write_cache(cache)
        log.info("%d/%d generated (%.0f s for %d)", min(at + BATCH, len(todo)), len(todo), time.time() - started, len(chunk))


if __name__ == "__main__":
    main()
