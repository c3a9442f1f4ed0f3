"""Entry point: ``python -m stages <command> [--help]``."""
from stages.cli import app

app(prog_name="python -m stages")
