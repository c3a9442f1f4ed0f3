"""The architecture, checked from the source: dvc.yaml deps are each stage's import closure.

The rules (which files a stage's command executes; the entry shim and empty ``__init__.py`` files
are not deps; function-level imports count) and the command that writes the lists,
``python -m stages deps``, are in :mod:`stages.tools.deps`. Also checked: stages never import
stages, the library never imports a stage, the benchmarks or the tools, and no module imports
another module's private ``_name``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stages.cli import build_app
from stages.tools import deps
from stages.tools.deps import (
    PIPELINES,
    STALE,
    closure,
    describe,
    imported_modules,
    module_path,
    read_stages,
    refresh,
    stage_modules,
    wanted,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "stages"
STAGE_MODULES = stage_modules()


def dvc_stages() -> dict[str, tuple[Path, deps.StageDeps]]:
    """``{stage: (pipeline folder, stage)}`` of every pipeline file (byo/dvc.yaml's stages named
    ``byo/dvc.yaml:<stage>``)."""
    out = {}
    for pipeline in PIPELINES:
        prefix = "" if pipeline.parent == Path(".") else f"{pipeline.as_posix()}:"
        for stage in read_stages((ROOT / pipeline).read_text(), pipeline.as_posix()):
            out[prefix + stage.name] = (pipeline.parent, stage)
    return out


@pytest.mark.parametrize("stage", sorted(dvc_stages()))
def test_dvc_deps_are_the_import_closure(stage):
    folder, found = dvc_stages()[stage]
    want = wanted(found, folder)
    assert found.listed == want, f"{STALE}: {describe(stage, found.listed, want)}"


def test_every_stage_command_is_in_dvc_yaml():
    assert {s.module for _, s in dvc_stages().values()} == STAGE_MODULES


def _sources(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


@pytest.mark.parametrize("module", sorted(STAGE_MODULES))
def test_stages_import_no_other_stage_and_no_tool(module):
    imported = imported_modules(module_path(module))
    others = imported & (STAGE_MODULES - {module})
    assert not others, (
        f"{module} imports stage module(s) {sorted(others)}; move shared code to stages.lib"
    )
    tools = {m for m in imported if m.startswith("stages.tools")}
    assert not tools, f"{module} imports {sorted(tools)}: the tools are not stage code"


def test_library_imports_no_stage_no_benchmark_and_no_tool():
    for path in _sources(PACKAGE / "lib"):
        bad = {
            m
            for m in imported_modules(path)
            if m in STAGE_MODULES
            or m.startswith(("stages.bench", "stages.tools"))
            or m == "stages.cli"
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


# A project of its own in tmp_path: `prepare` imports lib.a at the top, lib.a imports lib.b
# inside a function; lib's __init__.py is empty, util/__init__.py is not.
FILES = {
    "stages/__init__.py": "",
    "stages/prepare.py": "from stages.lib import a\n",
    "stages/lib/__init__.py": "",
    "stages/lib/a.py": "def f():\n    from stages.lib import b\n    import stages.util.x\n",
    "stages/lib/b.py": "X = 1\n",
    "stages/util/__init__.py": '"""Not empty."""\n',
    "stages/util/x.py": "",
}
PIPELINE = """\
# A comment that stays.
stages:
  prepare:
    cmd: python -m stages prepare
    deps:
      - stages/prepare.py
      - stages/lib/a.py
      - data/raw            # a data dep that stays
    params:
      - seed
    outs:
      - data/prepared

  # The same stage again, as a matrix with its .py deps after a data dep.
  again:
    matrix:
      seed: [0, 1]
    cmd: python -m stages prepare --seed ${item.seed}
    deps:
      - data/raw
      - stages/prepare.py
      - stages/lib/b.py
      - stages/lib/a.py
      - stages/util/__init__.py
      - stages/util/x.py
    outs:
      - data/again-${item.seed}
"""
CURRENT = [
    "stages/prepare.py",
    "stages/lib/a.py",
    "stages/lib/b.py",
    "stages/util/__init__.py",
    "stages/util/x.py",
]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name, text in FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "dvc.yaml").write_text(PIPELINE)
    (tmp_path / "byo").mkdir()
    (tmp_path / "byo" / "dvc.yaml").write_text(
        "stages:\n  prepare:\n    cmd: PYTHONPATH=.. python -m stages prepare\n"
        "    deps:\n      - preferences  # the dataset\n"
    )
    return tmp_path


def test_closure_follows_function_level_and_package_imports(project):
    """A lazy import inside a function and ``from pkg import module`` both count; an empty
    ``__init__.py`` is not a file the stage depends on, a non-empty one is."""
    assert closure("stages.prepare", project) == {Path(p) for p in CURRENT}


def test_deps_finds_the_stale_lists_and_rewrites_only_their_py_lines(project):
    before = {p: (project / p).read_text() for p in PIPELINES}
    report = refresh(project, check=True)
    assert report == [
        "again: out of order (own module first, then by path)",
        "prepare: misses ['stages/lib/b.py', 'stages/util/__init__.py', 'stages/util/x.py']",
        "byo/dvc.yaml:prepare: misses ['../stages/prepare.py', '../stages/lib/a.py', "
        "'../stages/lib/b.py', '../stages/util/__init__.py', '../stages/util/x.py']",
    ]
    assert {p: (project / p).read_text() for p in PIPELINES} == before  # --check writes nothing

    assert refresh(project, check=False) == report
    assert refresh(project, check=True) == []
    for pipeline in PIPELINES:
        text = (project / pipeline).read_text()
        old, new = before[pipeline].splitlines(), text.splitlines()
        assert [x for x in new if ".py" not in x] == [x for x in old if ".py" not in x]
        folder = pipeline.parent
        for stage in read_stages(text):
            assert stage.listed == wanted(stage, folder, project)
    byo = (project / "byo/dvc.yaml").read_text()
    assert "      - ../stages/prepare.py\n      - ../stages/lib/a.py\n" in byo
    assert byo.endswith("      - ../stages/util/x.py\n      - preferences  # the dataset\n")
    assert not list(project.rglob(".*tmp*"))  # written atomically, nothing left beside


def test_deps_drops_a_module_no_longer_imported(project):
    (project / "stages/lib/a.py").write_text("X = 2\n")
    refresh(project, check=False)
    stage = read_stages((project / "dvc.yaml").read_text())[1]
    assert (stage.name, stage.listed) == ("again", ["stages/prepare.py", "stages/lib/a.py"])


def test_deps_check_exits_1_and_names_the_command(project, monkeypatch):
    monkeypatch.setattr(deps, "ROOT", project)
    result = CliRunner().invoke(build_app("deps"), ["deps", "--check"])
    assert result.exit_code == 1 and "python -m stages deps" in result.output
    assert (project / "dvc.yaml").read_text() == PIPELINE
    assert CliRunner().invoke(build_app("deps"), ["deps"]).exit_code == 0
    result = CliRunner().invoke(build_app("deps"), ["deps", "--check"])
    assert result.exit_code == 0, result.output


def test_a_py_dep_with_a_comment_is_refused(project):
    path = project / "dvc.yaml"
    path.write_text(
        PIPELINE.replace(
            "- stages/lib/a.py\n      - data/raw", "- stages/lib/a.py  # x\n      - data/raw"
        )
    )
    with pytest.raises(ValueError, match="alone on its line"):
        refresh(project, check=False)
