"""Generation settings of an evaluation: the training runs' saved ones, unless the caller chose them.

A run folder saves the settings its adapter is meant to generate with (stop strings, max_new_tokens, ...)
in its ``kielo_config.yaml``; evaluating it with the schema defaults instead measures another setup. So
every ``generation`` key comes from the runs being evaluated (the run given as the model and the
adapters' runs), except the keys the caller chose: on the command line, those set by ``--config`` or a
``--generation.*`` flag; from code, the configured values that differ from the schema defaults. Runs that
saved different values for a key nobody chose can't share one setting and are an error, as are adapters
trained with different prompt formats (:func:`kielo.evaluate.loading.apply_prompt_format`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path

from kielo.config.schema import GenerationConfig
from kielo.errors import KieloError
from kielo.prompt.settings import KEYS, describe, with_values

COMMAND_LINE = "the command line"
GIVEN_CONFIG = "the given config"


@dataclass(frozen=True)
class GenerationChoice:
    """The settings to generate with, and where each came from."""

    settings: GenerationConfig
    from_runs: tuple[str, ...]  # keys taken from the runs' saved configs
    chosen: tuple[str, ...]  # keys the caller set, which win over the runs'
    runs: tuple[str, ...]  # the run folders whose saved settings were read
    chosen_by: str = COMMAND_LINE
    template_from: str = "the defaults"  # where data.template came from, in the same words

    def source(self) -> str:
        """Where the settings came from, in words: ``from the run's config (runs/x)``, ``from the command line``."""
        runs = f"the run's config ({', '.join(self.runs)})" if self.runs else ""
        if self.from_runs and self.chosen:
            return f"{', '.join(self.chosen)} from {self.chosen_by}, the rest from {runs}"
        if self.from_runs:
            return f"from {runs}"
        if self.chosen:
            return f"{', '.join(self.chosen)} from {self.chosen_by}, the rest the defaults"
        return "the defaults"

    def describe(self) -> str:
        """One line for reports and the terminal: ``greedy, max_new_tokens=64, stop=['\\n###'] (from ...)``."""
        return f"{describe(self.settings)} ({self.source()})"

    def as_dict(self) -> dict:
        return {
            "from_runs": list(self.from_runs),
            "chosen": list(self.chosen),
            "chosen_by": self.chosen_by,
            "runs": list(self.runs),
            "text": self.source(),
            "template_from": self.template_from,
        }


def _run_folder(path: str) -> str:
    """The run folder of an adapter path (a checkpoint's run is two levels up)."""
    p = Path(path)
    return str(p.parent.parent) if p.parent.name == "checkpoints" else str(p)


def resolve_generation(configured: GenerationConfig, runs: dict[str, dict], chosen: Collection[str] | None = None) -> GenerationChoice:
    """The generation settings for evaluating adapters whose runs saved ``runs`` (adapter path -> saved config).

    ``chosen`` names the ``generation`` keys (``"stop"``, ``"max_new_tokens"``) whose configured value wins over
    the runs'; None takes the configured values that differ from the schema defaults.
    """
    chosen_by = COMMAND_LINE
    if chosen is None:
        defaults = asdict(GenerationConfig())
        chosen = {k for k, v in asdict(configured).items() if v != defaults[k]}
        chosen_by = GIVEN_CONFIG
    saved = {path: (run.get("generation") or {}) for path, run in runs.items()}
    values: dict = {}
    for key in KEYS:
        if key in chosen:
            continue
        found = {path: s[key] for path, s in saved.items() if key in s}  # runs saved by other versions may lack keys
        if len({repr(v) for v in found.values()}) > 1:
            raise KieloError(
                f"the adapters' training runs saved different generation.{key}: "
                + ", ".join(f"{Path(p).name}: {v!r}" for p, v in found.items()),
                f"evaluate them with one setting: pass --generation.{key} VALUE",
            )
        if found:
            values[key] = next(iter(found.values()))
    read = tuple(dict.fromkeys(_run_folder(p) for p, s in saved.items() if s))
    return GenerationChoice(
        with_values(configured, values), tuple(k for k in KEYS if k in values), tuple(k for k in KEYS if k in chosen), read, chosen_by
    )
