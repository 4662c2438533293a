"""Finnish benchmark presets: ``--harness fin-bench`` (FIN-bench-v2 in lm-evaluation-harness) and
``--euroeval fi`` (EuroEval's Finnish datasets), and the hub check both need before any model loads.

FIN-bench-v2's task names come from its task table in LumiOpen's lm-evaluation-harness fork
(``lm_eval/tasks/finbench_v2/README.md``; paper arXiv:2512.13330). Upstream lm-eval does not ship these tasks:
``--harness_include`` names that fork's ``lm_eval/tasks/finbench_v2`` folder (or install the fork). Each task
comes in five prompt variants (``_p0`` ... ``_p4``); the preset runs ``_p0``. The paper evaluates base models
on the cloze formulation (``cf``: the answer's text scored as a continuation) and instruction-tuned models on
the multiple-choice formulation (``mcf``: the answer's letter); ``fin-bench`` picks by the base model (a
chat template in its tokenizer means instruction-tuned), ``fin-bench-cf`` / ``fin-bench-mcf`` choose.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from kielo.errors import KieloError

log = logging.getLogger(__name__)

_PROMPT = "p0"
# (task, formulation) -> name, per FIN-bench-v2's table; TruthfulQA's multiple choice exists only as cf and
# SQuAD-fi and TruthfulQA's generative part only as gen, so both presets carry them.
_TASKS = {
    "cf": [
        "arc_challenge_fi_cf_fbv2",
        "belebele_fin_Latn_cf_fbv2",
        "goldenswag_ht_fi_cf_fbv2",
        "sib200_fi_cf_fbv2",
        "finbench_analogies_cf_fbv2",
        "finbench_emotions_cf_fbv2",
        "finbench_general_knowledge_cf_fbv2",
        "finbench_hhh_alignment_cf_fbv2",
        "finbench_similarities_abstraction_cf_fbv2",
    ],
    "mcf": [
        "arc_challenge_fi_mcf_fbv2",
        "belebele_fin_Latn_mcf_fbv2",
        "goldenswag_ht_fi_mcf_fbv2",
        "sib200_fi_mcf_fbv2",
        "finbench_analogies_mcf_fbv2",
        "finbench_emotions_mcf_fbv2",
        "finbench_general_knowledge_mcf_fbv2",
        "finbench_hhh_alignment_mcf_fbv2",
        "finbench_similarities_abstraction_mcf_fbv2",
    ],
}
_SHARED = ["ogx_truthfulqax_mc1_fi_fbv2", "ogx_truthfulqax_mc2_fi_fbv2", "squad_fi_gen_fbv2"]
FIN_BENCH = {f: [f"{t}_{_PROMPT}" for t in [*tasks, *_SHARED]] for f, tasks in _TASKS.items()}
PRESETS = ("fin-bench", "fin-bench-cf", "fin-bench-mcf")
EUROEVAL_LANGUAGES = ("fi",)
HUB = ("huggingface.co", 443)


def is_preset(tasks: list[str]) -> bool:
    return len(tasks) == 1 and tasks[0] in PRESETS


def formulation(preset: str, instruction_tuned: bool) -> str:
    """``cf`` or ``mcf`` for a preset name (``fin-bench`` picks by the model)."""
    if preset == "fin-bench":
        return "mcf" if instruction_tuned else "cf"
    return preset.rsplit("-", 1)[1]


def instruction_tuned(model_path: str) -> bool:
    """Whether the base model's own tokenizer carries a chat template (kielo's saved tokenizers always do: the
    base's is the one asked)."""
    from transformers import AutoTokenizer

    return bool(AutoTokenizer.from_pretrained(model_path).chat_template)


def _local_tasks(include_path: str | None) -> set[str]:
    """Names of tasks in ``include_path`` whose data are local files (lm-eval's ``dataset_kwargs.data_files``)."""
    import yaml

    found: set[str] = set()
    if not include_path:
        return found
    for f in [*Path(include_path).rglob("*.yaml"), *Path(include_path).rglob("*.yml")]:
        try:
            doc = yaml.safe_load(f.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            continue  # lm-eval's YAMLs may use its own !function tags; such a task isn't known to be local
        if not isinstance(doc, dict) or "task" not in doc:
            continue
        files = (doc.get("dataset_kwargs") or {}).get("data_files")
        paths = files.values() if isinstance(files, dict) else [files] if files else []
        if paths and all(Path(f.parent, str(p)).exists() or Path(str(p)).exists() for p in paths):
            found.add(str(doc["task"]))
    return found


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached (and is not switched off with HF_HUB_OFFLINE)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False") or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    try:
        socket.create_connection(HUB, timeout=timeout).close()
        return True
    except OSError:
        return False


def check_hub(what: str, candidates: list[list[str]] | None = None, include_path: str | None = None) -> None:
    """Fail in one line, before any model loads, when ``what`` needs the hub and it can't be reached.

    No hub is needed when one of the ``candidates`` task sets has all its data in local files (in ``include_path``).
    """
    local = _local_tasks(include_path) if candidates else set()
    if candidates and any(set(tasks) <= local for tasks in candidates):
        return
    if not hub_reachable():
        raise KieloError(
            f"{what} reads its data from the Hugging Face hub, which can't be reached from here",
            "run it where huggingface.co is reachable (with HF_HUB_OFFLINE unset), or use --harness with task YAMLs on local data",
        )


def resolve_harness_tasks(tasks: list[str], bundle) -> tuple[list[str], str | None]:
    """A preset's task names (and its formulation, for ``fin-bench`` by ``bundle``'s base), or the tasks as given."""
    if not is_preset(tasks):
        return tasks, None
    form = formulation(tasks[0], tasks[0] == "fin-bench" and instruction_tuned(bundle.source.path))
    log.info("--harness %s: FIN-bench-v2, %s formulation (%d tasks)", tasks[0], form, len(FIN_BENCH[form]))
    return FIN_BENCH[form], form


def run_euroeval(models: dict[str, str], language: str, output_dir: Path) -> dict:
    """EuroEval's datasets of ``language`` on each model (a folder or hub id): ``{name: {dataset: scores}}``."""
    from importlib.util import find_spec

    if find_spec("euroeval") is None:
        raise KieloError("--euroeval needs the euroeval package, which is not installed", "pip install euroeval, or drop --euroeval")
    from euroeval import Benchmarker

    bench = Benchmarker(progress_bar=False, save_results=False, language=language, cache_dir=str(output_dir / "euroeval_cache"))
    out: dict[str, dict] = {}
    for name, model in models.items():
        log.info("EuroEval (%s) on %s", language, name)
        out[name] = {r.dataset: dict(r.results.get("total", r.results)) for r in bench.benchmark(model=model)}
    return {"language": language, "results": out}
