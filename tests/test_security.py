"""Security defaults: no pickle loading, no model code run unless asked, no write outside the output folder."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

KIELO = Path(__file__).resolve().parents[1] / "kielo"


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def pickle_loads(source: str, name: str = "<snippet>") -> list[str]:
    """``name:line`` of every load that can unpickle: ``torch.load`` without ``weights_only=True``,
    ``pickle``/``dill``/``joblib`` loads, ``numpy.load(allow_pickle=True)``."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
        kwargs = {k.arg: k.value for k in node.keywords}
        attr = node.func.attr
        if owner == "torch" and attr == "load" and not _is_true(kwargs.get("weights_only")):
            hits.append(f"{name}:{node.lineno}")
        elif owner in ("pickle", "dill", "joblib", "cloudpickle") and attr in ("load", "loads", "Unpickler"):
            hits.append(f"{name}:{node.lineno}")
        elif owner in ("np", "numpy") and attr == "load" and _is_true(kwargs.get("allow_pickle")):
            hits.append(f"{name}:{node.lineno}")
    return hits


def offenders() -> list[str]:
    found = []
    for path in sorted(KIELO.rglob("*.py")):
        found += pickle_loads(path.read_text(encoding="utf-8"), str(path.relative_to(KIELO)))
    return found


def test_the_pickle_check_sees_what_it_should():
    assert pickle_loads("torch.load(f)") and pickle_loads("torch.load(f, weights_only=False)")
    assert pickle_loads("import pickle\npickle.loads(b)") and pickle_loads("np.load(f, allow_pickle=True)")
    assert not pickle_loads("torch.load(f, map_location='cpu', weights_only=True)") and not pickle_loads("np.load(f)")


def test_no_pickle_loading_in_kielo():
    """The trainer state included: it loads with weights_only=True (kielo.train.resume_state)."""
    assert offenders() == []


def test_trust_remote_code_is_off_unless_asked():
    """The schema default is off, every loader defaults to off, and no call in kielo turns it on by itself."""
    from kielo.analyze.load import load_extra_tokenizer
    from kielo.config.schema import ModelConfig
    from kielo.merge.dequantize import load_base_16bit
    from kielo.model.load import load_model_config, load_tokenizer

    assert ModelConfig().trust_remote_code is False
    for fn in (load_tokenizer, load_model_config, load_extra_tokenizer, load_base_16bit):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False, fn.__qualname__
    forced = []
    for path in sorted(KIELO.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code" and _is_true(node.value):
                forced.append(f"{path.relative_to(KIELO)}:{node.value.lineno}")
            if isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values, strict=True):
                    if isinstance(k, ast.Constant) and k.value == "trust_remote_code" and _is_true(v):
                        forced.append(f"{path.relative_to(KIELO)}:{v.lineno}")
    assert forced == []


HOSTILE = ["../../etc/passwd", "/abs/path", "..", ".", "a/../../b", "C:\\x\\..\\y", "nul\x00byte", "~/x", ""]


@pytest.mark.parametrize("name", HOSTILE)
def test_names_from_data_and_folders_stay_inside_the_output_folder(tmp_path, name):
    """Variant names (adapter folder names, given by the user) and prompt-file stems become file names: each
    must land as one file directly inside the output folder, whatever the name."""
    from kielo.evaluate.report import safe_name

    out = tmp_path / "out"
    for file in (out / "generations" / f"{safe_name(name)}.jsonl", out / f"adapter_{safe_name(name)}_heatmap.png"):
        assert file.resolve().parent in (out.resolve(), (out / "generations").resolve()), file
    stem = Path(name.replace("\x00", "")).stem or "prompts"
    assert (out / f"{stem}.jsonl").resolve().parent == out.resolve()


def test_merge_refuses_to_write_into_the_adapter(tmp_path):
    """The merged model never overwrites the adapter it came from (an output_dir inside it is refused)."""
    from kielo.errors import KieloError
    from kielo.merge.job import check_output

    adapter = tmp_path / "run"
    adapter.mkdir()
    with pytest.raises(KieloError, match="inside the adapter folder"):
        check_output(adapter / "merged", str(adapter))
