#!/bin/bash
# Study part 1 (seeds 0-2), issue 29: shared stages through DVC, then the align + evaluate
# runs as two worker processes (one thread each) running the stages' own commands.
cd /work/study
. /work/main/.venv/bin/activate
echo "start $(date -u +%T)"
dvc repro reference quality-reference || exit 1
for s in 0 1 2; do dvc repro evaluate-sft@$s best-of-n@$s || exit 1; done
echo "shared done $(date -u +%T)"
/work/study-worker.sh 0 0 1 2 > /work/study-w0.log 2>&1 &
/work/study-worker.sh 1 0 1 2 > /work/study-w1.log 2>&1 &
wait
echo "part 1 done $(date -u +%T)"
