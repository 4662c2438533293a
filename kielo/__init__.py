"""kielo: QLoRA instruction fine-tuning of language models, Finnish first.

The Python API mirrors the CLI: each command is a plain function.
"""

__version__ = "0.1.0"
