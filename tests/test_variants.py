"""One base with several adapters: each variant gives its own logits, the base none of the adapters'."""

from __future__ import annotations

import torch
from conftest import tiny_config

from kielo.config.load import load_config
from kielo.model.bundle import load_variants, use_variant
from kielo.train.trainer import train


def test_variants_switch_between_base_and_adapters(tiny_llama, data_file, tmp_path):
    for seed in (1, 2):
        train(tiny_config(tiny_llama, data_file, tmp_path / f"run{seed}", training={"seed": seed}), progress=False)
    cfg = load_config(overrides={"model": str(tiny_llama), "quantization.compute_dtype": "fp32"})
    bundle, names = load_variants(cfg, [str(tmp_path / "run1"), str(tmp_path / "run2")])
    assert names == ["base", "run1", "run2"]
    # A folder named like a model attribute (`train`) still loads, under a name that doesn't clash.
    import shutil

    shutil.copytree(tmp_path / "run1", tmp_path / "train")
    assert load_variants(cfg, [str(tmp_path / "train")])[1] == ["base", "train_"]
    ids = torch.tensor([bundle.encoder.prompt_ids([{"role": "user", "content": "Mikä on Suomen pääkaupunki?"}])])
    out = {}
    with torch.no_grad():
        for name in names:
            with use_variant(bundle, name):
                out[name] = bundle.model(input_ids=ids).logits
    assert (out["run1"] - out["base"]).abs().max() > 1e-3
    assert (out["run2"] - out["run1"]).abs().max() > 1e-3
    with torch.no_grad(), use_variant(bundle, "base"):
        torch.testing.assert_close(bundle.model(input_ids=ids).logits, out["base"])
