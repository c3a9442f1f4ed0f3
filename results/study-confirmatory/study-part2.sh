#!/bin/bash
# Study part 2 (seeds 3, 4), issue 29: the shared per-seed stages (SFT evaluation, best-of-n) by
# their own commands, then the align + evaluate runs as two worker processes (one thread each).
cd /work/study
. /work/main/.venv/bin/activate
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
echo "start $(date -u +%T)"
for s in 3 4; do
  ( python -m stages evaluate sft --seed $s && python -m stages best-of-n --seed $s ) > logs/study/shared-$s.log 2>&1 &
done
wait
ls metrics/eval/sft/seed-3.json metrics/eval/sft/seed-4.json metrics/best_of_n/seed-3.json metrics/best_of_n/seed-4.json || exit 1
echo "shared done $(date -u +%T)"
/work/study-worker.sh 0 3 4 > /work/study-w0-part2.log 2>&1 &
/work/study-worker.sh 1 3 4 > /work/study-w1-part2.log 2>&1 &
wait
echo "part 2 done $(date -u +%T)"
