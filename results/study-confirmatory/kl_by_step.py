"""KL to the SFT policy (nats/sequence) and reward along training: seed means over the five
seeds of every study variant at each checkpoint and at the end (112 steps). Where the curves
flatten (issue 29, item 1). Run from this folder: python kl_by_step.py > kl_by_step.md"""

import glob
import json
import statistics
from collections import defaultdict
from pathlib import Path

STEPS = (6, 10, 16, 32, "final")
points = defaultdict(lambda: defaultdict(list))  # variant -> step -> [(kl, reward)]
for f in glob.glob("part*/trajectory/*/seed-*.json"):
    d = json.loads(Path(f).read_text())
    for n, m in d["checkpoints"].items():
        points[d["variant"]][int(n)].append((m["kl"], m["reward"]))
for f in glob.glob("part*/metrics/eval/*/seed-*.json"):
    v = f.split("/")[-2]
    if v != "sft":
        m = json.loads(Path(f).read_text())
        points[v]["final"].append((m["kl"], m["reward"]))
print("KL / reward, seed means (5 seeds each), by optimizer step\n")
print(
    "| variant | "
    + " | ".join(f"step {n}" if n != "final" else "final (112)" for n in STEPS)
    + " |"
)
print("|---|" + "---|" * len(STEPS))
for v in sorted(points):
    cells = []
    for n in STEPS:
        p = points[v][n]
        assert len(p) == 5, (v, n, len(p))
        kl, rw = statistics.mean(k for k, _ in p), statistics.mean(r for _, r in p)
        cells.append(f"{kl:.2f} / {rw:.2f}")
    print(f"| {v} | " + " | ".join(cells) + " |")
