"""Entry point: ``python -m stages <command> [--help]`` (see :mod:`stages.cli`)."""

from stages.cli import main

main()
