"""Device driver: the `imdb` profile's pipeline on one GPU, then a reduced matched-KL study
(the f-DPO core: reverse KL, JS, alpha 0.5, forward KL, five beta each) with W parallel workers.
Stage commands are the ones dvc.yaml runs (`python -m stages <stage> ...`); DVC bookkeeping is
skipped (no dvc.lock): what comes back are the stages' own outputs (reports/, metrics/).
    python3 .gpu/imdb_study.py PARAMS IMDB_GZ_DIR WORKDIR BUDGET_S WORKERS
"""

import concurrent.futures as cf
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

params_file, imdb_gz, work, budget, workers = sys.argv[1:6]
T0, BUDGET, W = time.time(), float(budget), int(workers)
root = Path.cwd()
work = Path(work)
work.mkdir(parents=True, exist_ok=True)
imdb = work / "imdb"
imdb.mkdir(exist_ok=True)
for split in ("train", "test"):
    with gzip.open(Path(imdb_gz) / f"{split}.jsonl.gz", "rb") as f:
        (imdb / f"{split}.jsonl").write_bytes(f.read())
repo = work / "repo"
for item in ("stages", "conf"):
    shutil.copytree(root / item, repo / item, ignore=shutil.ignore_patterns("__pycache__"))
shutil.copy(root / "dvc.yaml", repo / "dvc.yaml")
params = yaml.safe_load(Path(params_file).read_text())
params["data"]["source"] = str(imdb)
(repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
env = {
    **os.environ,
    "OMP_NUM_THREADS": str(max(1, 16 // W)),
    "TQDM_DISABLE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONPATH": str(repo),
}
for args in (
    ["git", "init", "-q"],
    [
        "git",
        "-c",
        "user.name=x",
        "-c",
        "user.email=x@x",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "study",
    ],
):
    subprocess.run(args, cwd=repo, check=True)
log = []


def run(args):
    start = time.time()
    p = subprocess.run(
        [sys.executable, "-m", "stages", *args], cwd=repo, env=env, capture_output=True, text=True
    )
    log.append({"cmd": " ".join(args), "s": round(time.time() - start, 1), "rc": p.returncode})
    print(
        f"[{time.time() - T0:6.0f} s] {' '.join(args)}: {time.time() - start:.1f} s rc {p.returncode}",
        flush=True,
    )
    if p.returncode:
        print(p.stderr[-2000:], flush=True)
    return p.returncode


for stage in ("prepare", "sft", "reward", "sample", "score", "pairs", "reference"):
    if run([stage]):
        sys.exit(1)
seeds = params["seeds"]
variants = list(params["align"]["variants"])
done = set()


def task(kind, variant, seed):
    if time.time() - T0 > BUDGET:
        return kind, variant, seed, "skipped"
    if kind == "sft":
        rc = run(["evaluate", "sft", "--seed", str(seed)])
    elif kind == "bon":
        rc = run(["best-of-n", "--seed", str(seed)])
    else:
        rc = run(["align", variant, "--seed", str(seed)]) or run(
            ["evaluate", variant, "--seed", str(seed)]
        )
    return kind, variant, seed, "ok" if rc == 0 else "failed"


jobs = [("sft", None, s) for s in seeds] + [("bon", None, s) for s in seeds]
jobs += [("run", v, s) for s in seeds for v in variants]  # every variant's seed 0 first
with cf.ThreadPoolExecutor(W) as pool:
    results = list(pool.map(lambda j: task(*j), jobs))


def complete(k):
    return [v for v in variants if all(("run", v, s, "ok") in results for s in seeds[:k])]


k = next((k for k in range(len(seeds), 0, -1) if len(complete(k)) >= 0.8 * len(variants)), 1)
params["seeds"] = seeds[:k]
missing = [v for v in variants if v not in complete(k)]
print("seeds kept:", seeds[:k], flush=True)
print("incomplete variants (dropped from the report):", missing, flush=True)
for v in missing:
    params["align"]["variants"].pop(v)
(repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
run(["report"])
run(["frontier"])
(repo / "logs").mkdir(exist_ok=True)
(repo / "reports/study_log.json").write_text(
    json.dumps(
        {"wall_s": round(time.time() - T0, 1), "workers": W, "missing": missing, "runs": log},
        indent=1,
    )
)
print(f"total {time.time() - T0:.0f} s", flush=True)
