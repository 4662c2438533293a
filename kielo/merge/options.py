"""The merge's choices and defaults, in one place for the library and the CLI, importable without torch."""

from __future__ import annotations

DTYPE_NAMES = ("bf16", "fp16", "fp32")  # what merged weights can be stored in
# "auto": fp16 where the weights' and activations' range allows it and fp16 keeps the update, else fp32
# (the rule and its numbers: kielo.merge.storage).
AUTO_DTYPE = "auto"
DTYPE_CHOICES = (AUTO_DTYPE, *DTYPE_NAMES)
# The GGUF file every export writes first: "auto" keeps the merged dtype (lossless); q8_0 here is kielo's own
# writer's (used only without llama.cpp).
GGUF_TYPES = ("auto", "f32", "f16", "bf16", "q8_0")
# Quantized copies made from that file with llama.cpp's llama-quantize (kielo.merge.llama_cpp.QUANT_TYPES).
GGUF_QUANTS = ("q4_k_m", "q5_k_m", "q8_0")
# Saved dtype -> largest allowed logit difference between the merged model and base + adapter
# (why these numbers: kielo.merge.verify).
TOLERANCES = {"fp32": 0.01, "bf16": 2.0, "fp16": 0.5}
DEFAULT_DTYPE = AUTO_DTYPE
# The verdict fails when storing changes the adapter's update by more than this share of its norm (norm of the
# rounding error of W + update over the norm of the update, all adapted weights together). Measured: the Gemma 3
# 270M demo adapter (r 16) changes by 11.8% in bf16, 1.5% in fp16, 0 in fp32 (the merge adds in fp32), and its
# bf16 merge answered only 3 of 4 greedy checks as base + adapter did (fp32: 4 of 4); the tiny BLOOM fixture's
# 3-step adapter (weights of std 0.3): 11.7% / 1.5%; the tiny Llama and Gemma ones (updates large against
# weights of std 0.02): 0.8% / 0.1%. 5% fails the bf16 merges that lose an eighth of the update, passes every
# fp16 merge with 3x its error as margin, and passes bf16 where the update is large enough to survive it.
MAX_UPDATE_ERROR = 0.05
DEFAULT_GGUF_TYPE = "auto"
DEFAULT_SAMPLES = 4
DEFAULT_MAX_NEW_TOKENS = 32
