"""Training data from the config to encoded examples: read, split off validation, encode, report losses.

Reading needs no model, so bad data fails before any weights are loaded; encoding needs only the encoder
(tokenizer and template).
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict

from kielo.config.schema import Config
from kielo.data.encode import Encoded, EncodeStats
from kielo.data.pairs import PairStats, encode_pairs
from kielo.data.preference import load_pairs
from kielo.data.records import load_examples
from kielo.data.sources import ReadOptions
from kielo.errors import KieloError

log = logging.getLogger(__name__)


def split_validation(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out ``fraction`` of the examples (at least one) with a seeded shuffle."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(examples) * fraction))
    if n_val >= len(examples):
        raise KieloError("data.validation_split leaves no training examples", "use a smaller fraction or more data")
    val = set(order[:n_val])
    return [e for i, e in enumerate(examples) if i not in val], [e for i, e in enumerate(examples) if i in val]


def is_preference(config: Config) -> bool:
    """Whether the run trains on preference pairs (dpo, orpo, simpo) rather than single answers."""
    return config.training.objective != "sft"


def check_preference_settings(config: Config) -> None:
    """Data settings a preference objective can't honour are errors, not silently ignored."""
    obj = config.training.objective
    if config.data.streaming:
        raise KieloError(f"data.streaming is not supported with training.objective {obj}", "set data.streaming: false")
    if config.data.packing:
        raise KieloError(f"data.packing is not supported with training.objective {obj}", "set data.packing: false")
    if config.data.train_on_prompt:
        raise KieloError(
            f"data.train_on_prompt is not supported with training.objective {obj}: a pair compares answers to one prompt",
            "set data.train_on_prompt: false",
        )


def read_data(config: Config) -> tuple[list, list]:
    """Read and validate the training and validation rows (and split off validation_split): no model needed,
    so bad data fails before a model is loaded."""
    d = config.data
    if not d.train:
        raise KieloError("no training data: data.train is not set", "set data.train in the config or pass --data.train FILE")
    if is_preference(config):
        check_preference_settings(config)
        train_ex = load_pairs(d.train, d.system_prompt)
        val_ex = load_pairs(d.validation, d.system_prompt) if d.validation else []
    else:
        train_ex = _stream_sample(config) if d.streaming else load_examples(d.train, d.system_prompt, options=ReadOptions.of(d))
        val_ex = load_examples(d.validation, d.system_prompt, options=ReadOptions.of(d, "validation")) if d.validation else []
    if d.validation_split:
        train_ex, val_ex = split_validation(train_ex, d.validation_split, config.training.seed)
    return train_ex, val_ex


STREAM_SAMPLE = 64


def _stream_sample(config: Config) -> list:
    """The first rows of a streamed training set, validated: a wrong column or path fails before a model
    loads, and the memory plan sees real lengths. Training reads the stream itself (kielo.data.stream)."""
    from itertools import islice

    from kielo.data.records import row_to_example
    from kielo.data.sources import dataset_rows, rename_columns, resolve_source

    d = config.data
    if not config.training.max_steps:
        raise KieloError("data.streaming: a stream has no length, so training.epochs can't say when to stop", "set training.max_steps")
    options = ReadOptions.of(d)
    source = resolve_source(d.train, options, "data.train")
    rows = islice(dataset_rows(source, options, streaming=True), STREAM_SAMPLE)
    sample = [row_to_example(rename_columns(row, options.columns), where, d.system_prompt) for where, row in rows]
    if not sample:
        raise KieloError(f"{source.location} holds no examples", "add at least one example row")
    return sample


def encode_data(encoder, config: Config, examples: tuple[list, list]) -> tuple[list[Encoded], list[Encoded], dict]:
    """Encode read training and validation rows with ``encoder`` (no model needed); warn about what was cut
    or dropped; no training example left is an error."""
    d = config.data
    train_ex, val_ex = examples
    if is_preference(config):
        return _encode_pairs(encoder, config, train_ex, val_ex)
    train, train_stats = encoder.encode_all(train_ex)
    val, val_stats = encoder.encode_all(val_ex) if val_ex else ([], EncodeStats())
    for name, st in (("train", train_stats), ("validation", val_stats)):
        if st.truncated or st.dropped_overlong or st.dropped_no_target:
            log.warning(
                "%s: %d of %d examples longer than data.max_length=%d: %d truncated, %d dropped (overlong), "
                "%d dropped (answer cut entirely); %d tokens lost",
                name,
                st.truncated + st.dropped_overlong + st.dropped_no_target,
                st.total,
                d.max_length,
                st.truncated,
                st.dropped_overlong,
                st.dropped_no_target,
                st.tokens_lost,
            )
    if not train:
        raise KieloError(f"no training example fits data.max_length={d.max_length}", "raise data.max_length or use shorter examples")
    report = {"train": asdict(train_stats), "validation": asdict(val_stats)}
    for r in report.values():
        r.pop("dropped_sources")
    return train, val, report


def _encode_pairs(encoder, config: Config, train_ex: list, val_ex: list) -> tuple[list, list, dict]:
    """:func:`encode_data` for preference pairs: both sides fitted to data.max_length, what was cut reported."""
    d = config.data
    train, train_stats = encode_pairs(encoder, train_ex)
    val, val_stats = encode_pairs(encoder, val_ex) if val_ex else ([], PairStats())
    for name, st in (("train", train_stats), ("validation", val_stats)):
        if st.truncated or st.dropped_overlong or st.dropped_no_target or st.dropped_identical:
            log.warning(
                "%s: of %d pairs, %d truncated (chosen %d, rejected %d) by data.max_length=%d, %d dropped (overlong), "
                "%d dropped (an answer cut entirely), %d dropped (both sides the same tokens after truncation)",
                name,
                st.total,
                st.truncated,
                st.truncated_chosen,
                st.truncated_rejected,
                d.max_length,
                st.dropped_overlong,
                st.dropped_no_target,
                st.dropped_identical,
            )
    if not train:
        raise KieloError(f"no training pair fits data.max_length={d.max_length}", "raise data.max_length or use shorter examples")
    return train, val, {"train": train_stats.report(), "validation": val_stats.report()}


def prepare_data(bundle, examples: tuple[list, list] | None = None) -> tuple[list[Encoded], list[Encoded], dict]:
    """Encode training and validation data with a :class:`~kielo.model.bundle.Bundle`'s encoder and config
    (read by :func:`read_data` unless given); report what was cut or dropped."""
    return encode_data(bundle.encoder, bundle.config, examples if examples is not None else read_data(bundle.config))
