#!/bin/bash
# Study analysis (issue 29), after part 2: report and frontier by dvc.yaml's own commands, in
# the study worktree at its commit (the analysis code committed before the run), then the files
# copied into main's results/study-confirmatory/.
cd /work/study
. /work/main/.venv/bin/activate
echo "analysis start $(date -u +%T) at $(git rev-parse --short HEAD)"
t0=$(date +%s)
python -m stages report > logs/study/report.log 2>&1 || { echo "report FAILED"; tail -3 logs/study/report.log; exit 1; }
t1=$(date +%s); echo "report $((t1 - t0)) s"
python -m stages frontier > logs/study/frontier.log 2>&1 || { echo "frontier FAILED"; tail -3 logs/study/frontier.log; exit 1; }
t2=$(date +%s); echo "frontier $((t2 - t1)) s, end $(date -u +%T)"
out=/work/main/results/study-confirmatory
variants=$(python -c "import yaml; print(' '.join(yaml.safe_load(open('params.yaml'))['align']['variants']))")
rm -rf $out/part2; mkdir -p $out/part2
for s in 3 4; do
  for v in sft $variants; do
    [ -f metrics/eval/$v/seed-$s.json ] && install -D metrics/eval/$v/seed-$s.json $out/part2/metrics/eval/$v/seed-$s.json
    [ -f metrics/align/$v/seed-$s.json ] && install -D metrics/align/$v/seed-$s.json $out/part2/metrics/align/$v/seed-$s.json
    [ -f data/trajectory/$v/seed-$s/summary.json ] && install -D data/trajectory/$v/seed-$s/summary.json $out/part2/trajectory/$v/seed-$s.json
  done
  install -D metrics/best_of_n/seed-$s.json $out/part2/metrics/best_of_n/seed-$s.json
done
cp /work/study-w0-part2.log /work/study-w1-part2.log /work/study-part2.log $out/part2/
python - <<'PY'
import json, glob, csv, os
rows = []
for f in sorted(glob.glob('/work/study/logs/timings/evaluate-*-[34].json')):
    name = os.path.basename(f)[len('evaluate-'):-5]
    e = json.load(open(f))
    a = f.replace('evaluate-', 'align-')
    al = json.load(open(a)) if os.path.exists(a) else {}
    rows.append({"run": name, "align_wall_s": al.get("wall_time_s"), "evaluate_final_s": e.get("final_s"),
                 "checkpoints": e.get("checkpoints"), "trajectory_s": e.get("trajectory_s")})
with open('/work/main/results/study-confirmatory/part2/timings.csv', 'w', newline='') as fh:
    w = csv.DictWriter(fh, fieldnames=list(rows[0])); w.writeheader(); w.writerows(rows)
print(len(rows), "timing rows")
PY
rm -rf $out/reports $out/metrics; mkdir -p $out/reports $out/metrics
cp -r reports/summary.md reports/summary.csv reports/seeds.csv reports/*.png reports/frontier $out/reports/
cp metrics/frontier.json $out/metrics/; cp metrics/summary.json $out/metrics/
cp /work/study-analysis.sh /work/study-part2.sh $out/
echo "copied $(date -u +%T)"
