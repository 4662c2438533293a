"""The files shipped in kielo/resources: one copy (the repository's paths link to it), found from any folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from kielo.config.load import from_dict, load_config
from kielo.data.records import load_examples
from kielo.demo import HELD_OUT, demo_base, resolve_paths
from kielo.errors import KieloError
from kielo.prompt.suite import load_suite
from kielo.resources import RESOURCES, locate

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [
    "configs/demo.yaml",
    "configs/demo_dpo.yaml",
    "data/fi_instruct/train.jsonl",
    "data/fi_instruct/dev.jsonl",
    "data/fi_instruct/test.jsonl",
    "data/fi_prefs/train.jsonl",
    "data/fi_prefs/dev.jsonl",
    "data/fi_prefs/test.jsonl",
    "data/DATA.md",
    "data/LICENSE",
    "prompts/fi_suite.yaml",
]


@pytest.mark.parametrize("name", SHIPPED)
def test_the_repository_path_is_the_packages_file(name):
    """configs/, data/ and prompts/ link into the package: there is no second copy to drift."""
    assert (RESOURCES / name).is_file() and not (RESOURCES / name).is_symlink()
    assert (ROOT / name).resolve() == (RESOURCES / name).resolve(), f"{name} is a copy, not a link to kielo/resources/{name}"


def test_locate_prefers_the_working_directory_then_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert locate("data/fi_instruct/train.jsonl") == RESOURCES / "data/fi_instruct/train.jsonl"
    own = tmp_path / "data" / "fi_instruct" / "train.jsonl"
    own.parent.mkdir(parents=True)
    own.write_text("{}\n")
    assert locate("data/fi_instruct/train.jsonl") == Path("data/fi_instruct/train.jsonl")  # the user's file wins
    for unknown in ("data/fi_instruct/nope.jsonl", "../configs/demo.yaml", "resources/configs/demo.yaml"):
        assert locate(unknown) == Path(unknown)
    absolute = tmp_path / "configs" / "demo.yaml"
    assert locate(absolute) == absolute  # an absolute path is never redirected


def test_bundled_files_load_by_their_relative_names_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert len(load_examples("data/fi_instruct/dev.jsonl")) == 95
    config = load_config("configs/demo.yaml")
    assert config.data.train == "data/fi_instruct/train.jsonl" and config.data.packing
    assert load_suite("prompts/fi_suite.yaml").cases
    with pytest.raises(KieloError, match="data file data/fi_instruct/nope.jsonl does not exist"):
        load_examples("data/fi_instruct/nope.jsonl")
    with pytest.raises(KieloError, match="config file configs/nope.yaml does not exist"):
        load_config("configs/nope.yaml")


def test_the_demo_finds_its_config_and_data_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base, root = demo_base()
    config = resolve_paths(from_dict(base), root)
    assert Path(config.data.train) == RESOURCES / "data/fi_instruct/train.jsonl"
    assert Path(config.data.validation) == RESOURCES / "data/fi_instruct/dev.jsonl"
    assert (root / HELD_OUT).is_file()
