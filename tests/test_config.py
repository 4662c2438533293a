"""Config schema: defaults, validation messages, overrides, shipped configs and the README reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from kielo.config.load import from_dict, load_config, read_yaml
from kielo.config.reference import END, START, replace_in
from kielo.config.schema import Config
from kielo.errors import KieloError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_valid():
    cfg = Config()
    assert cfg.model.name == "gemma-3-270m" and cfg.quantization.bits == 4 and cfg.lora.target_modules == "all-linear"


def test_unknown_key_suggests_the_right_one(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("lora:\n  rank: 8\n")
    with pytest.raises(KieloError) as e:
        load_config(p)
    assert "lora.rank" in e.value.message and "lora.r" in e.value.fix


def test_unknown_override_suggests():
    with pytest.raises(KieloError) as e:
        load_config(overrides={"training.max_step": "3"})
    assert "training.max_steps" in e.value.fix


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"quantization.bits": "3"}, "quantization.bits"),
        ({"lora.r": "abc"}, "lora.r"),
        ({"lora.dropout": "1.5"}, "lora.dropout"),
        ({"data.overlong": "cut"}, "data.overlong"),
        ({"training.micro_batch_size": "0"}, "training.micro_batch_size"),
        ({"data.validation": "v.jsonl", "data.validation_split": "0.1"}, "data.validation"),
        ({"training.gradient_checkpointing": "maybe"}, "training.gradient_checkpointing"),
    ],
)
def test_bad_values_name_the_key(overrides, fragment):
    with pytest.raises(KieloError) as e:
        load_config(overrides=overrides)
    assert fragment in e.value.message and e.value.fix


def test_overrides_are_typed_and_model_shorthand(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("training:\n  max_steps: 5\nlora:\n  r: 4\n")
    cfg = load_config(
        p,
        {
            "training.max_steps": "20",
            "lora.target_modules": "q_proj,v_proj",
            "model": "x/y",
            "training.learning_rate": "1e-4",
            "data.packing": "true",
        },
    )
    assert cfg.training.max_steps == 20 and cfg.lora.r == 4
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.model.name == "x/y" and cfg.training.learning_rate == 1e-4 and cfg.data.packing is True


def test_missing_config_file_is_clear(tmp_path):
    with pytest.raises(KieloError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    data = read_yaml(path)
    # Every key the file sets arrives in the config unchanged (nothing silently dropped).
    for section, values in data.items():
        if isinstance(values, dict):
            for key, value in values.items():
                got = getattr(getattr(cfg, section), key)
                assert got == value or (isinstance(value, str) and str(got) == value), f"{section}.{key}"
    if cfg.data.train:
        assert (ROOT / cfg.data.train).is_file(), f"{path.name}: data.train {cfg.data.train} is missing"


def test_presets_cover_the_finnish_models():
    names = {load_config(p).model.name for p in (ROOT / "configs" / "presets").glob("*.yaml")}
    for hub_id in (
        "LumiOpen/Llama-Poro-2-8B-base",
        "Finnish-NLP/Ahma-7B",
        "LumiOpen/Viking-7B",
        "TurkuNLP/gpt3-finnish-large",
        "LumiOpen/Poro-34B",
    ):
        assert hub_id in names


def test_readme_config_reference_is_generated_from_the_schema():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert START in text and END in text
    assert replace_in(text) == text, "README config reference is stale: run `python -m kielo.config.reference`"


@pytest.mark.parametrize("key", ["generation.stop", "lora.target_modules"])
def test_list_keys_parse_brackets_and_commas_alike(key):
    """`[]`, `[a, b]` and `a,b` mean the same list for every list-valued key, on the command line and in YAML."""
    section, name = key.split(".")
    for text in ("[q_proj, v_proj]", "q_proj,v_proj", "q_proj, v_proj", "[q_proj,v_proj]"):
        assert getattr(getattr(load_config(None, {key: text}), section), name) == ["q_proj", "v_proj"], text
        assert getattr(getattr(from_dict({section: {name: text}}), section), name) == ["q_proj", "v_proj"], text
    assert getattr(getattr(load_config(None, {key: "q_proj"}), section), name) == ["q_proj"]
    with pytest.raises(KieloError):
        load_config(None, {key: "[q_proj, [v_proj]]"})


def test_stop_list_clears_with_empty_brackets():
    assert load_config(None, {"generation.stop": "[]"}).generation.stop == []
    assert load_config(None, {"generation.stop": "['###', \"\\n\\n\"]"}).generation.stop == ["###", "\n\n"]
    with pytest.raises(KieloError):
        load_config(None, {"lora.target_modules": "[]"})  # an adapter needs modules: empty is an error, not a silent no-op
