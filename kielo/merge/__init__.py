"""Merge a trained adapter into its unquantized base, prove the result, re-quantize or export GGUF.

The entry point is :func:`kielo.merge.run.merge` (``kielo merge`` on the command line, in ``command``).
Each step has its own module: ``dequantize`` (the 16-bit base), ``merge`` (fold and save), ``verify``
(merged vs base + adapter), ``requantize`` (NF4 copy), ``gguf_export`` / ``gguf_vocab`` / ``gguf_adapter``
(llama.cpp files), ``gguf_verify`` (reading them back), ``resources`` (memory and disk), ``samples`` (what
the checks run on), ``options`` (choices and defaults).
"""
