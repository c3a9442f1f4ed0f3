"""The architecture, checked from the source: dvc.yaml deps are each stage's import closure.

Each pipeline stage runs ``python -m stages <command>``, which imports the stage's module alone
(:func:`stages.cli.main`); the project files that command executes are that module plus every
module it imports inside the ``stages`` package, transitively (``ast``, function-level imports
included). ``dvc.yaml`` must list exactly those files as the stage's ``.py`` deps: a missing one
lets ``dvc status`` call a stale output up to date, an extra one re-runs a stage for nothing. The
entry shim (``stages/__main__.py``, ``stages/cli.py``, and ``stages/warm.py`` with
``stages/warm_server.py``, which only start the process that runs it) and empty package
``__init__.py`` files are not deps. Also checked: stages never import stages, the library never imports a stage or the
benchmarks, and no module imports another module's private ``_name``.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import yaml

from stages.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "stages"
STAGE_MODULES = {module for name, (module, _) in COMMANDS.items() if name != "bench"}


def module_path(module: str) -> Path | None:
    """The file of a ``stages...`` module (``x.py`` or ``x/__init__.py``), None if not ours."""
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(path: Path) -> set[str]:
    """Modules of the ``stages`` package that ``path`` imports anywhere (``from stages.lib import
    paths`` counts as ``stages.lib.paths`` when that is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "stages"}
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.split(".")[0] == "stages"
        ):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if module_path(sub) is not None else node.module)
    return out


def closure(module: str) -> set[Path]:
    """Files executed by importing ``module``: it, its imports (transitively) and the non-empty
    ``__init__.py`` of each package on the way."""
    seen, todo, files = set(), [module], set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        parts = mod.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run too
        path = module_path(mod)
        if path is None:
            continue
        if path.name != "__init__.py" or path.read_text().strip():
            files.add(path.relative_to(ROOT))
        todo += sorted(imported_modules(path))
    return files


#: The pipelines: the main one and the bring-your-own-preferences one, whose stages run in
#: byo/ (their deps are relative to it: ../stages/...).
PIPELINES = (Path("dvc.yaml"), Path("byo/dvc.yaml"))


def dvc_stages() -> dict[str, tuple[str, set[Path]]]:
    """``{stage: (module, .py deps)}`` from every pipeline file (foreach stages by their ``do``
    block; stages of byo/dvc.yaml named ``byo/dvc.yaml:<stage>``, their deps relative to the
    repository root)."""
    out = {}
    for pipeline in PIPELINES:
        spec = yaml.safe_load((ROOT / pipeline).read_text())["stages"]
        prefix = "" if pipeline.parent == Path(".") else f"{pipeline.as_posix()}:"
        for name, stage in spec.items():
            body = stage.get("do", stage)
            words = body["cmd"].split()
            command = words[words.index("stages") + 1]  # [PYTHONPATH=..] python -m stages <cmd>
            deps = {
                Path(os.path.normpath(pipeline.parent / d))
                for d in body.get("deps", [])
                if str(d).endswith(".py")
            }
            out[prefix + name] = (COMMANDS[command][0], deps)
    return out


@pytest.mark.parametrize("stage", sorted(dvc_stages()))
def test_dvc_deps_are_the_import_closure(stage):
    module, deps = dvc_stages()[stage]
    needed = closure(module)
    missing = sorted(str(p) for p in needed - deps)
    extra = sorted(str(p) for p in deps - needed)
    assert not missing, f"dvc.yaml stage {stage!r} misses deps it imports: {missing}"
    assert not extra, f"dvc.yaml stage {stage!r} lists deps it never imports: {extra}"


def test_every_stage_command_is_in_dvc_yaml():
    assert {m for m, _ in dvc_stages().values()} == STAGE_MODULES


def _sources(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


@pytest.mark.parametrize("module", sorted(STAGE_MODULES))
def test_stages_import_no_other_stage(module):
    others = imported_modules(module_path(module)) & (STAGE_MODULES - {module})
    assert not others, (
        f"{module} imports stage module(s) {sorted(others)}; move shared code to stages.lib"
    )


def test_library_imports_no_stage_and_no_benchmark():
    for path in _sources(PACKAGE / "lib"):
        bad = {
            m
            for m in imported_modules(path)
            if m in STAGE_MODULES or m.startswith("stages.bench") or m == "stages.cli"
        }
        assert not bad, (
            f"{path.relative_to(ROOT)} imports {sorted(bad)}: the library imports no stage"
        )


def test_benchmarks_import_no_stage():
    for path in _sources(PACKAGE / "bench"):
        bad = imported_modules(path) & STAGE_MODULES
        assert not bad, f"{path.relative_to(ROOT)} imports stage module(s) {sorted(bad)}"


def test_no_private_names_imported_across_modules():
    for path in [*_sources(PACKAGE), *_sources(ROOT / "tests")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("stages")
            ):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, (
                    f"{path.relative_to(ROOT)} imports private {private} from {node.module}"
                )


def test_closure_follows_function_level_and_package_imports(tmp_path):
    """The closure walker itself: a lazy import inside a function and ``from pkg import module``
    both count."""
    code = "def f():\n    from stages.lib import paths\n    import stages.lib.common\n"
    probe = PACKAGE / "lib" / "_deps_probe.py"
    try:
        probe.write_text(code)
        files = closure("stages.lib._deps_probe")
    finally:
        probe.unlink()
    assert Path("stages/lib/paths.py") in files and Path("stages/lib/common.py") in files
