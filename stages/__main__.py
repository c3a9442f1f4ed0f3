"""Entry point: ``python -m stages <command> [--help]`` (see :mod:`stages.cli`).

With ``STAGES_WARM=1`` the command runs in a child forked from a warm server instead, which has
torch and transformers imported already (:mod:`stages.warm`).
"""

from stages.warm import delegate

delegate()  # returns unless a warm server ran the command (then this process exits as it did)

from stages.cli import main  # noqa: E402 (only when running cold)

main()
