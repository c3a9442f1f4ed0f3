"""The Typer app behind ``python -m stages <command>``: one command per pipeline stage.

Each stage lives in its own module (``stages/<name>.py``) with a ``main`` function; this file
only registers them. ``python -m stages <name>`` imports that stage's module alone (so a stage
runs exactly the code that ``dvc.yaml`` lists as its deps), ``python -m stages --help`` lists
every stage with its one-line help. The :data:`TOOLS` are not pipeline stages: ``bench`` runs
the benchmarks, ``params`` writes params.yaml from conf/ and ``deps`` the ``.py`` deps of
dvc.yaml from the imports (:mod:`stages.tools`).

User errors are ``ValueError``, ``FileNotFoundError`` or ``FloatingPointError`` (a non-finite
training loss) raised anywhere below; this boundary prints them as one line, ``error: ...``, and
exits 1. Set ``STAGES_TRACEBACK=1`` to see the traceback instead.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

import typer

#: command name -> (module, one-line help), in pipeline order.
COMMANDS = {
    "prepare": ("stages.prepare", "Load and clean reviews; draw train and eval prompts."),
    "sft": ("stages.sft", "Train (or copy) the SFT policy: a causal LM on the train reviews."),
    "reward": (
        "stages.reward",
        "Train (or copy) the sentiment reward model; report test accuracy.",
    ),
    "sample": ("stages.sample", "Sample K completions per train prompt from the SFT policy."),
    "score": ("stages.score", "Score every completion with the reward model (and gold scorer)."),
    "pairs": (
        "stages.pairs",
        "Build preference pairs from scored completions (first_round, rso, ...).",
    ),
    "ingest": (
        "stages.ingest",
        "Import a preference dataset (trl format or ranked) instead of sample/score/pairs.",
    ),
    "reference": ("stages.reference", "Log-probs of every completion under the SFT policy, once."),
    "align": ("stages.align", "Train one DPO-family variant on the preference pairs."),
    "online-init": (
        "stages.online_init",
        "Round 0 of iterative DPO: copy the SFT policy (and validate online.*).",
    ),
    "online-round": (
        "stages.online_round",
        "One on-policy round: sample, score, pair, reference, train from the last round.",
    ),
    "online-rl": (
        "stages.online_rl",
        "Online RL baseline: trl's RLOO with the reward model, one KL coefficient and seed.",
    ),
    "quality-reference": (
        "stages.quality_reference",
        "Reference sets of held-out reviews and the feature spaces of the quality measures.",
    ),
    "evaluate": (
        "stages.evaluate",
        "Sample a policy on held-out prompts; reward, entropy, nll, kl.",
    ),
    "report": ("stages.report", "Summary table, reward-vs-entropy and reward-vs-KL plots."),
    "best-of-n": (
        "stages.best_of_n",
        "Best-of-n baseline: n_max scored SFT samples per eval prompt.",
    ),
    "frontier": (
        "stages.frontier",
        "Families along beta at matched KL, Pareto envelopes, best-of-n baseline.",
    ),
    "bench": (
        "stages.bench.cli",
        "Benchmarks (not a stage): trainer vs trl, sampling, eval, FLOP/s.",
    ),
    "params": (
        "stages.tools.params",
        "Write params.yaml from conf/ (not a stage; --check: is it current?).",
    ),
    "deps": (
        "stages.tools.deps",
        "Refresh dvc.yaml's .py deps from the imports (not a stage; --check).",
    ),
}
#: The commands that are not pipeline stages: in no dvc.yaml, not preloaded by the warm server.
TOOLS = frozenset({"bench", "params", "deps"})

#: Exceptions that mean bad input (params, files, rows) rather than a bug.
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)


def stage_command(fn: Callable) -> Callable:
    """Wrap a command so a user error prints ``error: <first line>`` and exits 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            if os.environ.get("STAGES_TRACEBACK"):
                raise
            text = str(err).strip() or type(err).__name__
            typer.echo(f"error: {text.splitlines()[0]}", err=True)
            raise typer.Exit(code=1) from None
        finally:
            end_distributed()

    return wrapper


def end_distributed() -> None:
    """Destroy the process group a training stage leaves under ``accelerate launch`` or
    ``torchrun`` before the interpreter exits: without it a CPU (gloo) rank now and then aborted
    at exit ("terminate called without an active exception"), failing the stage. torch is only
    looked up, never imported here."""
    torch = sys.modules.get("torch")
    if (
        torch is not None
        and torch.distributed.is_available()
        and torch.distributed.is_initialized()
    ):
        torch.distributed.destroy_process_group()


def build_app(only: str | None = None) -> typer.Typer:
    """The app with every command registered, or only ``only`` (its module alone imported)."""
    app = typer.Typer(
        add_completion=False,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        help="Offline preference alignment (DPO and f-DPO family) as DVC stages.",
    )

    @app.callback()
    def _main() -> None:
        """Offline preference alignment (DPO and f-DPO family) as DVC stages."""

    for name, (module, help_text) in COMMANDS.items():
        if only is not None and name != only:
            continue
        fn = importlib.import_module(module).main
        app.command(name=name, help=help_text, short_help=help_text)(stage_command(fn))
    return app


def main(argv: list[str] | None = None) -> None:
    """Run ``python -m stages`` with ``argv`` (default: the process arguments)."""
    argv = sys.argv[1:] if argv is None else argv
    only = argv[0] if argv and argv[0] in COMMANDS else None
    build_app(only)(args=argv, prog_name="python -m stages")
