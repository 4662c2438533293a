"""A hub id that can't be fetched fails at once with one message that says how to work offline."""

from __future__ import annotations

import time

import pytest

from kielo.cli import main


def _one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    assert len(errors) == 1 and len(lines) == 2, err  # the message and its fix, nothing else
    return err


def test_unreachable_hub_id_fails_fast_with_one_message(capsys):
    # This machine has no network (the default for kielo's tests): the hub can't be reached.
    started = time.monotonic()
    code = main(["prompt", "--model", "org/not-here", "hei"])
    elapsed = time.monotonic() - started
    err = _one_error(capsys.readouterr().err)
    assert code == 2 and elapsed < 3, (code, elapsed)
    assert "org/not-here" in err and "local model folder" in err and "gemma-3-270m" in err


def test_offline_mode_is_detected_without_asking_the_hub(monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    started = time.monotonic()
    assert main(["prompt", "--model", "org/not-here", "hei"]) == 2
    assert time.monotonic() - started < 3
    err = _one_error(capsys.readouterr().err)
    assert "HF_HUB_OFFLINE" in err and "gemma-3-270m" in err


@pytest.mark.parametrize("name", ["org/not-here"])
def test_resolve_names_the_fix(name):
    from kielo.errors import KieloError
    from kielo.model.source import resolve_model

    with pytest.raises(KieloError) as e:
        resolve_model(name)
    assert "--model gemma-3-270m" in e.value.fix
