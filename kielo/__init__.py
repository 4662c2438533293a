"""kielo: QLoRA instruction fine-tuning of language models, Finnish first.

The Python API mirrors the CLI: each command is a plain function. Heavy modules (torch, transformers)
are imported only when a function that needs them is first used. Training is ``kielo.train.train``
(``kielo.train`` is the package that holds it).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "Config": "kielo.config.schema",
    "load_config": "kielo.config.load",
    "load_model": "kielo.infer.load",
    "generate": "kielo.infer.generate",
    "load_examples": "kielo.data.records",
    "KieloError": "kielo.errors",
}
__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'kielo' has no attribute {name!r}")
