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
from kielo.data.records import load_examples
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


def read_data(config: Config) -> tuple[list, list]:
    """Read and validate the training and validation rows (and split off validation_split): no model needed,
    so bad data fails before a model is loaded."""
    d = config.data
    if not d.train:
        raise KieloError("no training data: data.train is not set", "set data.train in the config or pass --data.train FILE")
    train_ex = load_examples(d.train, d.system_prompt)
    val_ex = load_examples(d.validation, d.system_prompt) if d.validation else []
    if d.validation_split:
        train_ex, val_ex = split_validation(train_ex, d.validation_split, config.training.seed)
    return train_ex, val_ex


def encode_data(encoder, config: Config, examples: tuple[list, list]) -> tuple[list[Encoded], list[Encoded], dict]:
    """Encode read training and validation rows with ``encoder`` (no model needed); warn about what was cut
    or dropped; no training example left is an error."""
    d = config.data
    train_ex, val_ex = examples
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


def prepare_data(bundle, examples: tuple[list, list] | None = None) -> tuple[list[Encoded], list[Encoded], dict]:
    """Encode training and validation data with a :class:`~kielo.model.bundle.Bundle`'s encoder and config
    (read by :func:`read_data` unless given); report what was cut or dropped."""
    return encode_data(bundle.encoder, bundle.config, examples if examples is not None else read_data(bundle.config))
