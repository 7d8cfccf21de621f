"""The registries are the one place that names modalities and fusers; the house has no cycles."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import get_args, get_type_hints

import pytest

from tasks.config import ALL_MODALITIES, FusionStrategy, ModalityName, RunParameters
from tasks.fusion.plan import AUTO, FUSERS
from tasks.modalities.registry import REGISTRY, build_modality

ROOT = Path(__file__).resolve().parents[1]


def test_modality_literal_registry_and_run_parameters_agree() -> None:
    assert list(get_args(ModalityName)) == list(REGISTRY) == ALL_MODALITIES
    hints = get_type_hints(RunParameters)
    for spec in REGISTRY.values():
        assert spec.params_field in RunParameters.model_fields, spec.name
        assert hints[spec.params_field] is spec.params, spec.name


def test_fuser_literal_and_registry_agree() -> None:
    assert sorted(get_args(FusionStrategy)) == sorted([AUTO, *FUSERS])


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_modality_builds_under_its_own_name(name: str) -> None:
    assert build_modality(name, RunParameters()).name == name


def test_hybrid_features_use_the_runs_content_parameters() -> None:
    params = RunParameters.model_validate({"content": {"neighbours": 77}})
    model = build_modality("hybrid_features", params)
    assert model.content.neighbours == 77  # type: ignore[attr-defined]


NAMES = sorted([*REGISTRY, *FUSERS], key=len, reverse=True)
# Where a name may appear as a string: its registry, its own module, the Literal the UI shows.
ALLOWED = {"tasks/modalities/registry.py", "tasks/fusion/plan.py", "tasks/config.py",
           "tasks/fusion/stacking.py", "tasks/fusion/table.py",
           "tasks/fusion/weights.py"}


def test_no_modality_or_fuser_name_as_a_string_outside_its_registry() -> None:
    names = "|".join(map(re.escape, NAMES))
    pattern = re.compile(rf"""["']({names})["']""")
    offenders = []
    for path in sorted((ROOT / "tasks").rglob("*.py")) + sorted((ROOT / "flows").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in ALLOWED or rel.startswith("tasks/sources/") or (  # raw.social is a table
                rel.startswith("tasks/modalities/") and path.stem in {n.split("_")[0]
                                                                     for n in REGISTRY}):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and pattern.fullmatch(repr(node.value)):
                offenders.append(f"{rel}:{node.lineno} {node.value!r}")
    assert offenders == []


def _module_imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in [*(ROOT / "tasks").rglob("*.py"), *(ROOT / "flows").rglob("*.py")]:
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        deps = graph.setdefault(name, set())
        for node in ast.parse(path.read_text()).body:  # module level: what runs at import
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
    return {m: {d for d in deps if d in graph} for m, deps in graph.items()}


def test_no_import_cycles() -> None:
    graph, state, cycles = _module_imports(), {}, []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(" -> ".join([*stack[stack.index(d):], d]))
            elif d not in state:
                visit(d, [*stack, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_no_two_packages_import_each_other() -> None:
    """Data flows one way: sources → warehouse → data → modalities → fusion → evaluation →
    outputs; a package that imports one importing it back has no place in that order."""
    def package(module: str) -> str:
        parts = module.split(".")
        return ".".join(parts[:2]) if parts[0] == "tasks" else parts[0]

    edges = {(package(m), package(d)) for m, deps in _module_imports().items() for d in deps}
    both_ways = sorted((a, b) for a, b in edges if a < b and (b, a) in edges)
    assert both_ways == []
