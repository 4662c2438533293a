"""kielo's optional dependencies (pyproject.toml's extras): checked before a command does any work, so a
missing one fails (or is skipped with a note) at once with the extra to install, not after a model load."""

from __future__ import annotations

import sys
from importlib.util import find_spec

from kielo.errors import KieloError

# module -> the extra that installs it
EXTRAS = {
    "lm_eval": "harness",
    "euroeval": "euroeval",
    "sacrebleu": "eval",
    "matplotlib": "eval",
    "pyarrow": "parquet",
    "datasets": "hub",
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "trackio": "trackio",
}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (a ``None`` in sys.modules blocks it)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    return find_spec(module) is not None


def install_hint(module: str) -> str:
    """The pip command that installs ``module`` with kielo."""
    return f"pip install 'kielo[{EXTRAS[module]}]'"


def require(module: str, needed_for: str) -> None:
    """Raise a :class:`KieloError` naming the extra unless ``module`` is installed."""
    if not installed(module):
        raise KieloError(f"{needed_for} needs {module}, which is not installed", install_hint(module))
