"""The merge's choices and defaults, in one place for the library and the CLI, importable without torch."""

from __future__ import annotations

DTYPE_NAMES = ("bf16", "fp16", "fp32")
# --gguf_type values; "auto" keeps the merged dtype (lossless).
GGUF_TYPES = ("auto", "f32", "f16", "bf16", "q8_0")
# Saved dtype -> largest allowed logit difference between the merged model and base + adapter
# (why these numbers: kielo.merge.verify).
TOLERANCES = {"fp32": 0.01, "bf16": 2.0, "fp16": 0.5}
DEFAULT_DTYPE = "bf16"
DEFAULT_GGUF_TYPE = "auto"
DEFAULT_SAMPLES = 4
DEFAULT_MAX_NEW_TOKENS = 32
