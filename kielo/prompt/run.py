"""Answer prompts with one model or several side by side, and run prompt suites.

Side by side means one base model loaded once, with each adapter switched on in turn
(:func:`kielo.model.bundle.load_variants`), every model answering the same prompts with the same
settings. Greedy decoding is batched; when sampling, each prompt is generated on its own and re-seeded
with ``generation.seed`` first, so an answer depends only on the prompt, the model and the seed, not on
which other prompts ran or in what order.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from kielo.config.schema import Config, GenerationConfig
from kielo.errors import KieloError
from kielo.prompt.sources import Prompt
from kielo.prompt.suite import Check, Expectations, Suite, check
from kielo.resources import RESOURCES

log = logging.getLogger(__name__)

SHIPPED_SUITE = RESOURCES / "prompts" / "fi_suite.yaml"


@dataclass
class Answer:
    """One model's answer to one prompt, with the suite's checks when there are any."""

    prompt: Prompt
    model: str
    text: str
    tokens: int
    ended: bool
    stop: str | None = None
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


@dataclass
class PromptRun:
    """Every model's answers to the same prompts, in prompt order."""

    models: list[str]
    prompts: list[Prompt]
    answers: dict[str, list[Answer]]
    settings: GenerationConfig
    system_prompt: str | None = None
    tokens_per_s: dict[str, float] = field(default_factory=dict)
    suite: Suite | None = None

    def passed(self, model: str) -> int:
        """How many of ``model``'s answers passed every check."""
        return sum(a.passed for a in self.answers[model])

    def pass_rates(self) -> dict[str, float]:
        """The share of prompts whose answer passed every check, per model."""
        return {m: self.passed(m) / max(len(self.prompts), 1) for m in self.models}

    def all_passed(self, model: str | None = None) -> bool:
        """Whether ``model`` (default: the last-named, i.e. the one under test) passed every check."""
        model = model or self.models[-1]
        return self.passed(model) == len(self.prompts)


def load_models(config: Config, adapters: list[str] | None = None):
    """The bundle and the names of the models to show.

    With adapters: the base and one model per adapter. Without: just ``model.name`` (a run folder
    given as the model is shown as its fine-tuned model, not beside its base).
    """
    from kielo.model.bundle import load_variants

    adapters = list(adapters or [])
    bundle, names = load_variants(config, adapters)
    return bundle, (names if adapters else names[-1:])


def _answer_all(bundle, name: str, prompts: list[Prompt], g: GenerationConfig, system: str | None) -> tuple[list, float]:
    from kielo.infer.generate import generate

    conversations = [p.conversation(system) for p in prompts]
    done = 0

    def progress(n: int) -> None:  # answering a suite on a CPU takes minutes: say how far it is
        nonlocal done
        done += n
        log.info("%s: %d/%d prompts answered", name, done, len(prompts))

    if g.temperature <= 0:
        return generate(bundle, conversations, g, progress=progress)
    # Sampling: one prompt per call, because generate() seeds once per call; a batch would share one stream.
    outs, started = [], time.time()
    for conv in conversations:
        outs.append(generate(bundle, [conv], g, progress=progress)[0][0])
    return outs, sum(o.tokens for o in outs) / max(time.time() - started, 1e-9)


def run_prompts(
    bundle,
    models: list[str],
    prompts: list[Prompt],
    g: GenerationConfig,
    system_prompt: str | None = None,
    expectations: list[Expectations] | None = None,
) -> PromptRun:
    """Every model in ``models`` (variant names of ``bundle``) answers every prompt with settings ``g``.

    With ``expectations`` (one per prompt), each answer is checked too.
    """
    from kielo.model.bundle import use_variant

    if not prompts:
        raise KieloError("there are no prompts to answer", "give a prompt, --file or --suite")
    answers: dict[str, list[Answer]] = {}
    speeds: dict[str, float] = {}
    for name in models:
        started = time.time()
        with use_variant(bundle, name):
            outs, speeds[name] = _answer_all(bundle, name, prompts, g, system_prompt)
        log.info("%s: %d prompt(s) in %.1f s, %.1f tokens/s", name, len(prompts), time.time() - started, speeds[name])
        answers[name] = [Answer(p, name, o.text, o.tokens, o.ended, o.stop) for p, o in zip(prompts, outs, strict=True)]
        if expectations is not None:
            for answer, expect in zip(answers[name], expectations, strict=True):
                answer.checks = check(expect, answer)  # type: ignore[arg-type]  # an Answer has what a Generation has
    return PromptRun(list(models), list(prompts), answers, g, system_prompt, speeds)


def run_suite(bundle, models: list[str], suite: Suite, g: GenerationConfig, system_prompt: str | None = None) -> PromptRun:
    """Run a suite on every model: answers plus pass/fail checks. Deciding what a failure means is the caller's."""
    run = run_prompts(bundle, models, suite.prompts, g, system_prompt, [c.expect for c in suite.cases])
    run.suite = suite
    for name, rate in run.pass_rates().items():
        log.info("%s: %d/%d prompts passed (%.0f%%)", name, run.passed(name), len(suite.cases), 100 * rate)
    return run


def run_suite_file(config: Config, adapters: list[str] | None = None, suite: str | Path | None = None) -> PromptRun:
    """Load the model(s) of ``config`` (base, plus each adapter) and run a suite file, by default the shipped
    Finnish suite. Nothing is decided about failures: see :meth:`PromptRun.pass_rates` and ``all_passed``."""
    from kielo.prompt.suite import load_suite

    loaded = load_suite(suite or SHIPPED_SUITE)
    bundle, models = load_models(config, adapters)
    return run_suite(bundle, models, loaded, config.generation, bundle.config.data.system_prompt)


def suite_pass_rates(config: Config, adapters: list[str] | None = None, suite: str | Path | None = None) -> dict[str, float]:
    """Pass rate per model (``{"base": 0.1, "demo": 0.6}``) on a suite, for reports such as the demo's; unlike
    `kielo prompt --suite`, a failing model is not an error."""
    return run_suite_file(config, adapters, suite).pass_rates()
