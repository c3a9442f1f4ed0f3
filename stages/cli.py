"""The Typer app behind ``python -m stages <command>``: one command per pipeline stage.

Each stage lives in its own module with a ``main`` function; this file only registers them,
so ``python -m stages --help`` lists every stage with its one-line help (plus ``bench``,
the benchmarks, which is not a pipeline stage).
"""
from __future__ import annotations

import importlib

import typer

from stages.common import stage_command

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Offline preference alignment (DPO and f-DPO family) as DVC stages.")

@app.callback()
def _main() -> None:
    """Offline preference alignment (DPO and f-DPO family) as DVC stages."""


#: command name -> (module, one-line help), in pipeline order.
COMMANDS = {
    "prepare": ("stages.prepare", "Load and clean reviews; draw train and eval prompts."),
    "sft": ("stages.sft", "Train (or copy) the SFT policy: a causal LM on the train reviews."),
    "reward": ("stages.reward", "Train (or copy) the sentiment reward model; report test accuracy."),
    "sample": ("stages.sample", "Sample K completions per train prompt from the SFT policy."),
    "score": ("stages.score", "Score every completion with the reward model (and gold scorer)."),
    "pairs": ("stages.pairs", "Build preference pairs from scored completions (first_round, rso, ...)."),
    "reference": ("stages.reference", "Log-probs of every completion under the SFT policy, once."),
    "align": ("stages.align", "Train one DPO-family variant on the preference pairs."),
    "evaluate": ("stages.evaluate", "Sample a policy on held-out prompts; reward, entropy, nll, kl."),
    "report": ("stages.report", "Summary table, reward-vs-entropy and reward-vs-KL plots."),
    "bench": ("stages.bench", "Benchmarks (not a stage): trainer vs trl, sampling, eval, FLOP/s."),
}


def _register(name: str, module: str, help_text: str) -> None:
    fn = importlib.import_module(module).main
    app.command(name=name, help=help_text, short_help=help_text)(stage_command(fn))


for _name, (_module, _help) in COMMANDS.items():
    _register(_name, _module, _help)
