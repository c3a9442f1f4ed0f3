#!/bin/bash
# Issue 30, second experiment: the online profile with every round on all 1000 train prompts
# (round 1 then sees the offline DPO's amount of SFT samples), in the same clone.
cd /work/online
. /work/main/.venv/bin/activate
echo "start $(date -u +%T) at $(git rev-parse --short HEAD)"
t0=$(date +%s)
dvc exp run -S profile=online -S online.round.prompts=1000 -n online-prompts-1000
rc=$?
echo "dvc exp run rc=$rc, $(( $(date +%s) - t0 )) s, end $(date -u +%T)"
