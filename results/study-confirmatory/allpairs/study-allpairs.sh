#!/bin/bash
# Study, exploratory extension (issue 29 item 3): the seven pairwise families on all pairs at
# their beta0, five seeds (35 runs), by the same two workers (which skip finished runs), then
# report + frontier over all 43 variants, copied into main's results/study-confirmatory/allpairs/.
cd /work/study
. /work/main/.venv/bin/activate
echo "start $(date -u +%T) at $(git rev-parse --short HEAD) + conf/profile/study.yaml of main"
/work/study-worker.sh 0 0 1 2 3 4 > /work/study-w0-allpairs.log 2>&1 &
/work/study-worker.sh 1 0 1 2 3 4 > /work/study-w1-allpairs.log 2>&1 &
wait
echo "runs done $(date -u +%T)"
t0=$(date +%s)
python -m stages report > logs/study/report-allpairs.log 2>&1 || { echo "report FAILED"; exit 1; }
python -m stages frontier > logs/study/frontier-allpairs.log 2>&1 || { echo "frontier FAILED"; tail -3 logs/study/frontier-allpairs.log; exit 1; }
echo "analysis $(( $(date +%s) - t0 )) s, end $(date -u +%T)"
out=/work/main/results/study-confirmatory/allpairs
rm -rf $out; mkdir -p $out/reports $out/metrics
for s in 0 1 2 3 4; do
  for v in hinge-all ipo-all jsd-all alpha-0_5-all fkl-all rpo-all rso-hinge-sft-all; do
    install -D metrics/eval/$v/seed-$s.json $out/runs/metrics/eval/$v/seed-$s.json
    install -D metrics/align/$v/seed-$s.json $out/runs/metrics/align/$v/seed-$s.json
    install -D data/trajectory/$v/seed-$s/summary.json $out/runs/trajectory/$v/seed-$s.json
  done
done
cp -r reports/summary.md reports/summary.csv reports/frontier $out/reports/
cp metrics/frontier.json metrics/summary.json $out/metrics/
cp /work/study-w0-allpairs.log /work/study-w1-allpairs.log /work/study-allpairs.sh $out/
echo "copied $(date -u +%T)"
