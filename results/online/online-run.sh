#!/bin/bash
# Issue 30: the online profile, as a user runs it, in a fresh clone of main sharing the DVC cache (as a user runs it).
cd /work/online && git pull -q --ff-only /work/main main
. /work/main/.venv/bin/activate
echo "start $(date -u +%T) at $(git rev-parse --short HEAD)"
t0=$(date +%s)
dvc exp run -S profile=online -n online-run
rc=$?
echo "dvc exp run rc=$rc, $(( $(date +%s) - t0 )) s, end $(date -u +%T)"
