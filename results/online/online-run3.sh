#!/bin/bash
# Issue 30: the online profile (with offline DPO's second beta) at 256 prompts a round, then at
# 1000; the online rounds and RLOO runs come from the run cache of the earlier runs.
cd /work/online
. /work/main/.venv/bin/activate
for extra in "" "-S online.round.prompts=1000"; do
  echo "start $(date -u +%T) at $(git rev-parse --short HEAD) extra=[$extra]"
  t0=$(date +%s)
  dvc exp run -S profile=online $extra > /work/online-run3-$( [ -z "$extra" ] && echo 256 || echo 1000 ).log 2>&1
  rc=$?
  echo "dvc exp run rc=$rc, $(( $(date +%s) - t0 )) s, end $(date -u +%T)"
  [ -z "$extra" ] && /work/online-copy.sh > /dev/null
  [ -n "$extra" ] && OUT=/work/main/results/online/prompts-1000 /work/online-copy.sh > /dev/null
done
