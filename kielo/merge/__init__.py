"""Merge a trained adapter into its unquantized base, prove the result, re-quantize or export GGUF.

The entry point is :func:`kielo.merge.run.merge`; each step lives in its own module (``dequantize``,
``merge``, ``verify``, ``requantize``, ``gguf_export``, ``gguf_vocab``, ``gguf_verify``, ``resources``,
``samples``).
"""
