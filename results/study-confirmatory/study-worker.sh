#!/bin/bash
# One worker of the study's part 1: runs the stage commands of its share of (variant, seed) runs,
# exactly as dvc.yaml's align/evaluate commands; `dvc commit` records them afterwards.
# usage: study-worker.sh <worker 0|1> <seeds...>
cd /work/study
. /work/main/.venv/bin/activate
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
w=$1; shift
variants=$(python -c "import yaml; print(' '.join(yaml.safe_load(open('params.yaml'))['align']['variants']))")
i=0
for s in "$@"; do
  for v in $variants; do
    if [ $((i % 2)) -eq $w ]; then
      if [ -f metrics/eval/$v/seed-$s.json ] && [ -f data/trajectory/$v/seed-$s/summary.json ] && [ -f .done/$v-$s ]; then i=$((i+1)); continue; fi
      t0=$(date +%s)
      if python -m stages align $v --seed $s > logs/study/$v-$s.log 2>&1 && python -m stages evaluate $v --seed $s >> logs/study/$v-$s.log 2>&1; then
        mkdir -p .done; touch .done/$v-$s
        echo "$(date -u +%T) ok $v-$s $(( $(date +%s) - t0 )) s"
      else
        echo "$(date -u +%T) FAILED $v-$s: $(grep -a -m1 'Error' logs/study/$v-$s.log)"
      fi
    fi
    i=$((i+1))
  done
done
echo "worker $w done $(date -u +%T)"
