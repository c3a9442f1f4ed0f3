"""Maintenance commands, not stages: ``python -m stages params`` writes params.yaml from conf/
(:mod:`stages.tools.params`), ``python -m stages deps`` the ``.py`` deps of dvc.yaml and
byo/dvc.yaml from the code (:mod:`stages.tools.deps`). No stage and no library module imports
them."""
