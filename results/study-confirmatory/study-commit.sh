#!/bin/bash
# After part 1's workers: record the runs in /work/study's dvc.lock (the stages' own commands ran
# them; dvc commit stores their outputs and hashes), then copy the small per-run files to main.
cd /work/study
. /work/main/.venv/bin/activate
variants=$(python -c "import yaml; print(' '.join(yaml.safe_load(open('params.yaml'))['align']['variants']))")
targets=""
for s in 0 1 2; do for v in $variants; do
  [ -f .done/$v-$s ] && targets="$targets align@$v-$s evaluate@$v-$s"
done; done
echo "$(echo $targets | wc -w) stages to commit"
time dvc commit -f $targets > /work/study-commit.log 2>&1 || echo "dvc commit FAILED"
dvc status $targets 2>&1 | grep -v "^\s*$" | head -5
out=/work/main/results/study-confirmatory/part1
rm -rf $out; mkdir -p $out
for s in 0 1 2; do
  for v in sft $variants; do
    [ -f metrics/eval/$v/seed-$s.json ] && install -D metrics/eval/$v/seed-$s.json $out/metrics/eval/$v/seed-$s.json
    [ -f metrics/align/$v/seed-$s.json ] && install -D metrics/align/$v/seed-$s.json $out/metrics/align/$v/seed-$s.json
    [ -f data/trajectory/$v/seed-$s/summary.json ] && install -D data/trajectory/$v/seed-$s/summary.json $out/trajectory/$v/seed-$s.json
  done
  [ -f metrics/best_of_n/seed-$s.json ] && install -D metrics/best_of_n/seed-$s.json $out/metrics/best_of_n/seed-$s.json
done
python - <<'PY'
import json, glob, csv, os
rows = []
for f in sorted(glob.glob('/work/study/logs/timings/evaluate-*.json')):
    name = os.path.basename(f)[len('evaluate-'):-5]
    e = json.load(open(f))
    a = f.replace('evaluate-', 'align-')
    al = json.load(open(a)) if os.path.exists(a) else {}
    rows.append({"run": name, "align_wall_s": al.get("wall_time_s"), "evaluate_final_s": e.get("final_s"),
                 "checkpoints": e.get("checkpoints"), "trajectory_s": e.get("trajectory_s")})
with open('/work/main/results/study-confirmatory/part1/timings.csv', 'w', newline='') as fh:
    w = csv.DictWriter(fh, fieldnames=list(rows[0])); w.writeheader(); w.writerows(rows)
print(len(rows), "timing rows")
PY
cp /work/study-w0.log /work/study-w1.log $out/ 2>/dev/null
echo done
