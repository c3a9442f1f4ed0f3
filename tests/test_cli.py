"""The command line: one command per stage, one-line errors at the boundary, lazy imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from stages.cli import COMMANDS, TOOLS, build_app, stage_command

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_stage():
    result = CliRunner().invoke(build_app(), ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


@pytest.mark.parametrize(
    "error",
    [
        ValueError("params: x: bad\nmore"),
        FileNotFoundError("f: not found"),
        FloatingPointError("align@dpo: non-finite loss"),
    ],
)
def test_user_errors_become_one_line_and_exit_1(error):
    app = typer.Typer()

    def boom() -> None:
        raise error

    app.command()(stage_command(boom))
    result = CliRunner().invoke(app, [])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {str(error).splitlines()[0]}"


def test_bugs_are_not_hidden():
    app = typer.Typer()

    def bug() -> None:
        raise KeyError("internal")

    app.command()(stage_command(bug))
    result = CliRunner().invoke(app, [])
    assert result.exit_code != 0 and isinstance(result.exception, KeyError)


@pytest.mark.parametrize("fails", [False, True])
def test_a_stage_command_ends_the_process_group_it_leaves(tmp_path, fails):
    """A training stage under accelerate launch leaves a torch.distributed process group; the
    wrapper destroys it when the command returns or fails (a one-rank gloo group here)."""
    import torch.distributed as dist

    def train() -> None:
        store = dist.FileStore(str(tmp_path / "store"), 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        assert dist.is_initialized()
        if fails:
            raise ValueError("params: x: bad")

    app = typer.Typer()
    app.command()(stage_command(train))
    result = CliRunner().invoke(app, [])
    assert result.exit_code == (1 if fails else 0), result.output
    assert not dist.is_initialized()


def test_a_stage_command_imports_only_its_own_stage_module():
    code = (
        "import sys; from stages.cli import build_app; build_app('pairs'); "
        "print(sorted(m for m in sys.modules if m.startswith('stages.') and "
        "not m.startswith('stages.lib')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['stages.cli', 'stages.pairs']"


@pytest.mark.parametrize("tool", ["params", "deps"])
def test_a_tool_is_a_command_that_imports_only_its_module(tool):
    """The maintenance commands (stages.tools) run like a stage's, but are not stages."""
    assert tool in TOOLS and COMMANDS[tool][0] == f"stages.tools.{tool}"
    code = (
        f"import sys; from stages.cli import build_app; build_app({tool!r}); "
        "print(sorted(m for m in sys.modules if m.startswith('stages.') and "
        "not m.startswith('stages.lib')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == str(["stages.cli", "stages.tools", f"stages.tools.{tool}"])
