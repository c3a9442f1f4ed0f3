"""``python -m stages deps``: each stage's ``.py`` deps in dvc.yaml and byo/dvc.yaml, from the code.

::

    python -m stages deps            # rewrite the stale lists (atomically)
    python -m stages deps --check    # write nothing; exit 1 listing the stale stages

A pipeline stage runs ``python -m stages <command>``, which imports the stage's module alone
(:func:`stages.cli.main`); the project files that command executes are that module plus every
module it imports inside the ``stages`` package, transitively (``ast``, function-level imports
included), and the non-empty ``__init__.py`` of each package on the way. A stage's ``.py`` deps
are exactly those files: the stage module first, then the rest sorted by path. The entry shim
(``stages/__main__.py``, ``stages/cli.py``, ``stages/warm.py``, ``stages/warm_server.py``: they
only start the process that runs the stage) and empty ``__init__.py`` files are not deps.

Only the ``.py`` lines of each stage's ``deps:`` change (written where the first one was); every
other line of the file (comments, other deps, params, outs, order) is kept as it is.
"""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass
from pathlib import Path

import typer
from ruamel.yaml import YAML

from stages.cli import COMMANDS, TOOLS
from stages.lib.common import atomic_path

ROOT = Path(__file__).resolve().parents[2]
#: The pipelines: the main one and the bring-your-own one, whose stages run in byo/ (their deps
#: are relative to it: ../stages/...).
PIPELINES = (Path("dvc.yaml"), Path("byo/dvc.yaml"))
#: What the stale lists' check and test say.
STALE = "run `python -m stages deps` to refresh the .py deps from the import closure"
ITEM = re.compile(r"^(\s*)- (\S+)\s*$")  # a dep alone on its line
INDENT = re.compile(r"^(\s*)- ")


def stage_modules() -> set[str]:
    """The module of every pipeline stage command (every command but the tools)."""
    return {module for name, (module, _) in COMMANDS.items() if name not in TOOLS}


def module_path(module: str, root: Path = ROOT) -> Path | None:
    """The file of a ``stages...`` module (``x.py`` or ``x/__init__.py``), None if not ours."""
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
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
                out.add(sub if module_path(sub, root) is not None else node.module)
    return out


def closure(module: str, root: Path = ROOT) -> set[Path]:
    """Files executed by importing ``module`` (relative to ``root``): it, its imports
    (transitively) and the non-empty ``__init__.py`` of each package on the way."""
    seen, todo, files = set(), [module], set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        parts = mod.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run too
        path = module_path(mod, root)
        if path is None:
            continue
        if path.name != "__init__.py" or path.read_text().strip():
            files.add(path.relative_to(root))
        todo += sorted(imported_modules(path, root))
    return files


def code_deps(module: str, root: Path = ROOT) -> list[Path]:
    """``module``'s closure in dvc.yaml's order: its own file first, then the rest by path."""
    own = module_path(module, root).relative_to(root)
    return [own, *sorted(closure(module, root) - {own}, key=Path.as_posix)]


@dataclass(frozen=True)
class StageDeps:
    """One stage of a pipeline file: its command's module and its ``.py`` deps as listed."""

    name: str  # as in the file; foreach/matrix stages by their definition's name
    module: str
    listed: list[str]  # the .py entries, in order, as written (relative to the file's folder)
    lines: list[int]  # their line numbers in the file (0-based)
    first_item: int  # line of the first entry of `deps:` (where a list with no .py goes)


def read_stages(text: str, where: str = "dvc.yaml") -> list[StageDeps]:
    """The stages of a pipeline file's text with their ``.py`` deps and those lines."""
    out = []
    for name, stage in YAML().load(text)["stages"].items():
        body = stage.get("do", stage)  # foreach stages: the `do` block
        words = body["cmd"].split()
        command = words[words.index("stages") + 1]  # [PYTHONPATH=..] python -m stages <cmd>
        if command not in COMMANDS or command in TOOLS:
            raise ValueError(f"{where}: stage {name!r} runs no stage command ({command!r})")
        deps = body.get("deps")
        if not deps:
            raise ValueError(f"{where}: stage {name!r} has no `deps:` list")
        py = [i for i, d in enumerate(deps) if str(d).endswith(".py")]
        out.append(
            StageDeps(
                name=name,
                module=COMMANDS[command][0],
                listed=[str(deps[i]) for i in py],
                lines=[deps.lc.item(i)[0] for i in py],
                first_item=deps.lc.item(0)[0],
            )
        )
    return out


def wanted(stage: StageDeps, folder: Path, root: Path = ROOT) -> list[str]:
    """The ``.py`` deps ``stage`` needs, relative to its pipeline file's ``folder``."""
    return [
        Path(os.path.relpath(root / p, root / folder)).as_posix()
        for p in code_deps(stage.module, root)
    ]


def refresh_text(
    text: str, folder: Path, root: Path = ROOT, where: str = "dvc.yaml"
) -> tuple[str, dict[str, tuple[list[str], list[str]]]]:
    """``(new text, {stale stage: (listed, wanted)})`` for the pipeline file ``text`` in
    ``folder`` (relative to ``root``): only the stale stages' ``.py`` lines are rewritten."""
    lines = text.splitlines(keepends=True)
    stale = {}
    for stage in sorted(read_stages(text, where), key=lambda s: s.first_item, reverse=True):
        want = wanted(stage, folder, root)
        if stage.listed == want:
            continue
        stale[stage.name] = (stage.listed, want)
        for line, value in zip(stage.lines, stage.listed, strict=True):
            match = ITEM.match(lines[line])
            if not match or match[2] != value:
                raise ValueError(f"{where}:{line + 1}: write a .py dep alone on its line")
        at = stage.lines[0] if stage.lines else stage.first_item
        indent = INDENT.match(lines[stage.first_item])
        if indent is None:
            raise ValueError(f"{where}:{stage.first_item + 1}: write `deps:` as a block list")
        for line in reversed(stage.lines):
            del lines[line]
        lines[at:at] = [f"{indent[1]}- {p}\n" for p in want]
    return "".join(lines), dict(sorted(stale.items()))


def describe(name: str, listed: list[str], want: list[str]) -> str:
    """One line saying how a stage's list is stale."""
    missing = [p for p in want if p not in listed]
    extra = [p for p in listed if p not in want]
    parts = [f"misses {missing}"] if missing else []
    parts += [f"lists {extra} it never imports"] if extra else []
    return f"{name}: " + ("; ".join(parts) or "out of order (own module first, then by path)")


def refresh(root: Path, check: bool) -> list[str]:
    """One line per stale stage of every pipeline under ``root`` (``byo/dvc.yaml:<stage>``);
    rewrite the stale files (atomically) unless ``check``."""
    report = []
    for pipeline in PIPELINES:
        path = root / pipeline
        text = path.read_text()
        new, stale = refresh_text(text, pipeline.parent, root, pipeline.as_posix())
        prefix = "" if pipeline.parent == Path(".") else f"{pipeline.as_posix()}:"
        report += [describe(prefix + name, *lists) for name, lists in stale.items()]
        if new != text and not check:
            with atomic_path(path) as tmp:
                tmp.write_text(new)
    return report


def main(
    check: bool = typer.Option(
        False, "--check", help="Write nothing; exit 1 listing the stale stages."
    ),
) -> None:
    """Rewrite the .py deps of dvc.yaml and byo/dvc.yaml from each stage's import closure."""
    report = refresh(ROOT, check)
    for line in report:
        typer.echo(line, err=check)
    if check and report:
        typer.echo(STALE, err=True)
        raise typer.Exit(code=1)
    typer.echo(f"{len(report)} stage(s) refreshed" if report else "every .py deps list is current")
