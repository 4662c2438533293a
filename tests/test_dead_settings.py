"""Settings that silently do nothing in a run are warned about before training (issue 17, item 8)."""

from __future__ import annotations

import logging

import pytest

from kielo.config.load import from_dict
from kielo.train.dead_settings import warn_dead_settings


def _config(**training):
    return from_dict({"model": {"name": "m"}, "data": {"train": "t.jsonl"}, "training": training})


CASES = [
    ({"max_steps": 10, "warmup_steps": 10}, True, "training.warmup_steps 10 >= the run's 10 steps"),
    ({"max_steps": 10, "eval_every": 20}, True, "training.eval_every 20 >= the run's 10 steps"),
    ({"max_steps": 10, "eval_every": 5}, False, "training.eval_every 5 is set but there is no validation data"),
    ({"max_steps": 10, "save_every": 10}, True, "training.save_every 10 >= the run's 10 steps"),
    ({"max_steps": 10, "keep_last": 5}, True, "training.keep_last 5 has no effect with save_every 0"),
    ({"max_steps": 10, "epochs": 3}, True, "training.epochs 3 is ignored"),
]


@pytest.mark.parametrize(("training", "has_validation", "message"), CASES)
def test_each_dead_setting_warns(training, has_validation, message, caplog):
    with caplog.at_level(logging.WARNING, logger="kielo"):
        found = warn_dead_settings(_config(**training), 10, has_validation)
    assert len(found) == 1 and message in found[0]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == found


def test_a_sensible_config_warns_nothing(caplog):
    config = _config(max_steps=100, warmup_steps=10, eval_every=20, save_every=25, keep_last=3)
    with caplog.at_level(logging.WARNING, logger="kielo"):
        assert warn_dead_settings(config, 100, True) == []
        assert warn_dead_settings(_config(epochs=2), 40, True) == []  # the defaults, trained by epochs
    assert not caplog.records


def test_train_warns_before_the_first_step(tiny_llama, data_file, tmp_path, caplog):
    from conftest import tiny_config

    from kielo.train.trainer import train

    config = tiny_config(tiny_llama, data_file, tmp_path / "o", training={"max_steps": 2, "warmup_steps": 5, "eval_every": 3})
    with caplog.at_level(logging.INFO, logger="kielo"):
        train(config, progress=False)
    messages = [r.getMessage() for r in caplog.records]
    warmup = next(i for i, m in enumerate(messages) if "warmup_steps 5 >= the run's 2 steps" in m)
    assert any("eval_every 3 >= the run's 2 steps" in m for m in messages)
    first_validation = next(i for i, m in enumerate(messages) if "step 0 validation loss" in m)
    assert warmup < first_validation
