#!/bin/bash
# Issue 30: copy the online profile's outputs from the run's clone into main's results/online/.
src=/work/online; out=${OUT:-/work/main/results/online}
rm -rf $out; mkdir -p $out/metrics $out/reports
cd $src
cp -r metrics/online metrics/online-rl $out/metrics/
mkdir -p $out/metrics/eval
for d in metrics/eval/online-* metrics/eval/rloo-* metrics/eval/dpo metrics/eval/sft; do cp -r $d $out/metrics/eval/; done
mkdir -p $out/trajectory/dpo; for s in 0 1 2; do cp data/trajectory/dpo/seed-$s/summary.json $out/trajectory/dpo/seed-$s.json; done
cp metrics/frontier.json metrics/summary.json $out/metrics/
cp -r reports/summary.md reports/summary.csv reports/frontier $out/reports/
mkdir -p $out/timings; cp logs/timings/online-* logs/timings/*rloo* logs/timings/align-dpo-* logs/timings/evaluate-dpo-* $out/timings/ 2>/dev/null
cp params.yaml $out/params.yaml
cp /work/online-run.sh /work/online-run.log /work/online-copy.sh $out/ 2>/dev/null
ls $out
