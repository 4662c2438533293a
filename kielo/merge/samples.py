"""The examples a merge is checked on: the run's held-out data when it is at hand, else a few built-in ones.

Held-out means what training held out: ``data.validation``, or the same seeded ``data.validation_split`` of
``data.train`` that the trainer made. Verification only needs prompts that exercise the adapter; the
re-quantization loss is only meaningful on data the adapter was not trained on, so the report names the
source.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kielo.config.schema import Config
from kielo.data.records import Example, load_examples

log = logging.getLogger(__name__)

BUILTIN = [
    ("Mikä on Suomen pääkaupunki?", "Suomen pääkaupunki on Helsinki."),
    ("Käännä englanniksi: Hyvää huomenta!", "Good morning!"),
    ("Luettele kolme suomalaista järveä.", "Saimaa, Päijänne ja Inari."),
    ("Selitä lyhyesti, miksi taivas on sininen.", "Auringonvalo siroaa ilmakehässä, ja sininen valo siroaa eniten."),
    ("Paljonko on 12 + 30?", "42"),
    ("Kirjoita yksi lause syksystä.", "Syksyllä lehdet muuttuvat keltaisiksi ja punaisiksi."),
]


def builtin_examples(system_prompt: str | None = None) -> list[Example]:
    msgs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in BUILTIN]
    if system_prompt:
        msgs = [[{"role": "system", "content": system_prompt}, *m] for m in msgs]
    return [Example(messages=m, source=f"builtin[{i}]") for i, m in enumerate(msgs)]


def held_out_examples(config: Config, limit: int) -> tuple[list[Example], str]:
    """Up to ``limit`` held-out examples of the run and where they came from (a file, or ``builtin``)."""
    from kielo.data.prepare import split_validation
    from kielo.data.sources import ReadOptions

    d = config.data
    options = ReadOptions.of(d)  # the run's data.columns
    if d.validation and Path(d.validation).is_file():
        return load_examples(d.validation, d.system_prompt, options=options)[:limit], d.validation
    if d.train and Path(d.train).is_file() and d.validation_split:
        _, val = split_validation(load_examples(d.train, d.system_prompt, options=options), d.validation_split, config.training.seed)
        return val[:limit], f"{d.train} (validation split {d.validation_split})"
    if d.train and Path(d.train).is_file():
        return load_examples(d.train, d.system_prompt, options=options)[:limit], f"{d.train} (training data: the run held nothing out)"
    if d.validation or d.train:
        log.warning("the run's data (%s) is not at hand from here; checking on built-in examples", d.validation or d.train)
    return builtin_examples(d.system_prompt)[:limit], "builtin"
