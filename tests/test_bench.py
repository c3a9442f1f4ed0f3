"""The benchmark's correctness, not its speed: our trainer and trl's DPOTrainer take the same
steps on the same pairs, the FLOP count follows the 6·N·T rule, the CLI writes its reports."""

from __future__ import annotations

import copy
import functools
import json
import random
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from stages.bench import runs as runs_module
from stages.bench.align import align_throughput, bench_rows, clean_boundary, trl_completion_ids
from stages.bench.cli import align_optimizer, machine, markdown
from stages.bench.flops import alignment_flops, step_flops, step_scaling
from stages.bench.runs import INPUTS, run_wall_times, side_by_side, timed_run, workspace
from stages.cli import build_app
from stages.lib.config import load_params

app = build_app()
ROOT = Path(__file__).resolve().parents[1]
PARAMS = load_params(ROOT / "params.yaml")

WORDS = "the film was good bad great awful plot acting boring fun dull story".split()


def _scored(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        completions = [
            " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) + "."
            for _ in range(4)
        ]
        rows.append(
            {
                "prompt_id": f"train-{i}",
                "prompt": "the film was",
                "completions": completions,
                "completion_ids": [[1 + j] * (2 + j) for j in range(4)],  # not the text's tokens
                "finished": [False] * 4,
                "rewards": [rng.random() for _ in range(4)],
            }
        )
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("pairing, per_prompt", [("disjoint", 2), ("all", 6)])
def test_ours_and_trl_take_the_same_steps(tiny_lm_dir, torch_one_thread, pairing, per_prompt):
    r = align_throughput(
        tiny_lm_dir, _scored(12), pairing=pairing, prompts_per_step=2, steps=3, lr=1e-2, beta=0.5
    )
    assert r["prompts"] == 6 and r["pairs"] == 6 * per_prompt
    assert r["pairs_per_step"] == 2 * per_prompt
    assert len(r["ours"]["losses"]) == len(r["trl"]["losses"]) == 3
    assert r["ours"]["losses"][0] == pytest.approx(0.6931472, abs=1e-6)  # policy == reference
    assert abs(r["ours"]["losses"][-1] - 0.6931472) > 1e-3  # lr 1e-2 moved it
    assert r["max_abs_loss_diff"] < 1e-5
    # ours scores each completion once; trl scores chosen + rejected of every pair
    assert r["ours"]["reference_sequences"] == 4 * 6
    assert r["trl"]["reference_sequences"] == 2 * 6 * per_prompt
    assert r["sweep_ours_s"] == pytest.approx(r["ours"]["reference_s"] + 10 * r["ours"]["train_s"])


def test_bench_rows_skip_ties_and_say_when_short():
    rows = _scored(5)
    rows[0]["rewards"] = [1.0, 1.0, 1.0, 1.0]  # every pair tied
    picked = bench_rows(rows, "all", 4, seed=0)
    assert [r["prompt_id"] for r in picked] == ["train-1", "train-2", "train-3", "train-4"]
    assert all(len(r["pairs"]) == 6 for r in picked)
    with pytest.raises(ValueError, match="only 4 of the scored rows"):
        bench_rows(rows, "all", 5, seed=0)


def test_ours_scores_the_tokens_trl_scores(tiny_lm):
    """trl tokenises the completion text and appends EOS: ours is given exactly those ids."""
    _, tokenizer = tiny_lm
    ids = trl_completion_ids(tokenizer, [" good.", ""])
    eos = tokenizer.eos_token_id
    assert ids == [tokenizer(" good.", add_special_tokens=False)["input_ids"] + [eos], [eos]]


def test_clean_boundary_spots_tokens_merging_across_the_prompt(tiny_lm):
    _, tokenizer = tiny_lm
    assert clean_boundary(tokenizer, "the film was", [" good.", " not very good."])
    assert not clean_boundary(tokenizer, "the film wa", [" good.", "s good."])  # "wa"+"s" merge
    rows = _scored(6)
    rows[0]["prompt"], rows[0]["completions"][2] = "the film wa", "s fun."
    picked = bench_rows(rows, "disjoint", 5, seed=0, tokenizer=tokenizer)
    assert "train-0" not in [r["prompt_id"] for r in picked]


def test_step_flops_follows_the_6NT_rule():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=500, n_positions=32)
    model = GPT2LMHeadModel(config)
    # matmul weights: all parameters minus position embeddings, layer norms and biases
    n = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and "wpe" not in name)
    tokens = 3 * 1  # seq_len 1: no attention cost beyond one score per head
    assert step_flops(config, 3, 1) == pytest.approx(6 * n * tokens, rel=0.01)
    # attention grows with the square of the sequence length
    extra = step_flops(config, 1, 20) - 20 * step_flops(config, 1, 1)
    assert extra == pytest.approx(6 * 2 * config.n_layer * 64 * (20 * 20 - 20), rel=1e-9)


def test_alignment_flops_times_real_trainer_steps(tiny_lm, torch_one_thread):
    from transformers import GPT2Config

    from stages.lib.align import build_items

    _, tokenizer = tiny_lm
    rows = [{**r, "pairs": [[0, 1], [2, 3]], "split": "train"} for r in _scored(8)]
    items = build_items(rows, [{"logps": [-50.0] * 4} for _ in rows])
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tokenizer), n_positions=64)
    f = alignment_flops(items, tokenizer, batch_prompts=2, steps=2, config=config)
    assert f["optimizer"] == "adamw_torch" and f["timed_steps"] == 2
    assert [shape[0] for shape in f["batch_shapes"]] == [8, 8]  # 2 prompts x 4 completions
    assert f["step_flops"] == pytest.approx(
        sum(step_flops(config, b, t) for b, t in f["batch_shapes"]) / 2
    )
    assert f["achieved_flops"] > 0 and f["matmul_flops"] > 0
    assert f["ratio"] == pytest.approx(f["achieved_flops"] / f["matmul_flops"])


def test_step_flops_counts_the_head_on_the_given_positions():
    from transformers import GPT2Config

    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=500, n_positions=32)
    full, packed = step_flops(config, 4, 10), step_flops(config, 4, 10, head_tokens=25)
    assert full - packed == pytest.approx(6 * (40 - 25) * 500 * 64)
    assert step_flops(config, 4, 10, head_tokens=40) == full


def test_alignment_flops_on_a_saved_policy_fast_and_plain(tiny_lm_dir, tiny_lm, torch_one_thread):
    from stages.lib.align import build_items

    _, tokenizer = tiny_lm
    rows = [{**r, "pairs": [[0, 1], [2, 3]], "split": "train"} for r in _scored(6)]
    items = build_items(rows, [{"logps": [-50.0] * 4} for _ in rows])
    runs = {
        fast: alignment_flops(
            items, tokenizer, model_dir=tiny_lm_dir, batch_prompts=2, steps=2, fast=fast, peak=1e9
        )
        for fast in (False, True)
    }
    plain, fast = runs[False], runs[True]
    assert plain["path"] == "plain" and fast["path"] == "fast"
    assert "demo SFT policy" in fast["model"] and fast["matmul_flops"] == 1e9
    assert plain["step_flops"] == fast["step_flops"]  # the same padded shapes, same numerator
    assert plain["useful_flops"] == pytest.approx(plain["achieved_flops"])
    assert fast["useful_flops"] < fast["achieved_flops"]  # the head skips prompt and padding
    assert fast["ratio"] == pytest.approx(fast["achieved_flops"] / 1e9)


def test_step_scaling_times_the_fast_step_at_other_batches_and_threads(tiny_lm_dir, tiny_lm):
    import torch

    from stages.lib.align import build_items

    _, tokenizer = tiny_lm
    rows = [{**r, "pairs": [[0, 1], [2, 3]], "split": "train"} for r in _scored(12)]
    items = build_items(rows, [{"logps": [-50.0] * 4} for _ in rows])
    scale = functools.partial(
        step_scaling,
        items,
        tokenizer,
        model_dir=tiny_lm_dir,
        optimizer="adamw_torch",
        peak=1e9,
        repeats=1,
    )
    before = torch.get_num_threads()
    scaling = scale(batch_prompts=2, threads=2, steps=2)
    assert torch.get_num_threads() == before  # restored
    shapes = [(r["threads"], r["batch_prompts"]) for r in scaling]
    assert shapes == [(2, 2), (2, 4), (1, 2), (1, 1)]
    assert [r["batch_shapes"][0][0] for r in scaling] == [8, 16, 8, 4]  # 4 completions a prompt
    assert all(r["path"] == "fast" for r in scaling)
    for r in scaling:
        assert r["ms_per_seq"] == pytest.approx(r["step_s"] / r["batch_shapes"][0][0] * 1e3)
        assert r["vs_configured"] == pytest.approx(scaling[0]["ms_per_seq"] / r["ms_per_seq"])
    assert scaling[0]["vs_configured"] == 1.0
    md = markdown({"machine": machine(2), "date": "now", "flops_scaling": scaling})
    assert md.count("\n| configured | 2 | 2 | 8 |") == 1 and "would at best take" in md
    assert "(best of 1, alternating)" in md
    one = scale(batch_prompts=1, threads=1, steps=1)
    assert [(r["threads"], r["batch_prompts"]) for r in one] == [(1, 1), (1, 2)]  # no repeats
    few = scale(batch_prompts=2, threads=2, steps=4)  # 12 prompts: 5 batches of 4 do not fit
    assert [(r["threads"], r["batch_prompts"]) for r in few] == [(2, 2), (1, 2), (1, 1)]


def test_step_scaling_keeps_each_shapes_fastest_of_the_repeats(monkeypatch):
    """The shapes alternate over the repeats and each keeps its fastest step."""
    import torch

    from stages.bench import flops

    # round 1 then round 2, in shape order (2, 2), (2, 4), (1, 2), (1, 1)
    times, calls = iter([0.4, 0.5, 0.3, 0.2, 0.35, 0.9, 0.31, 0.1]), []

    def fake(items, tokenizer, *, batch_prompts, **kwargs):
        calls.append((torch.get_num_threads(), batch_prompts))
        return {"step_s": next(times), "batch_shapes": [(4 * batch_prompts, 10)]}

    monkeypatch.setattr(flops, "alignment_flops", fake)
    rows = flops.step_scaling(
        list(range(100)),
        None,
        model_dir="m",
        optimizer="o",
        batch_prompts=2,
        threads=2,
        steps=3,
        repeats=2,
    )
    assert calls == [(2, 2), (2, 4), (1, 2), (1, 1)] * 2
    assert [r["step_s"] for r in rows] == [0.35, 0.5, 0.3, 0.1]
    assert [r["ms_per_seq"] for r in rows] == pytest.approx([43.75, 31.25, 37.5, 25.0])
    assert rows[-1]["vs_configured"] == pytest.approx(1.75) and rows[0]["repeats"] == 2


def _fake_code(root: Path) -> Path:
    """A code tree whose ``python -m stages <stage> <variant> --seed <s>`` records its call in
    the working folder (with the thread and warm settings it was given), fails for variant
    ``bad``, and whose ``python -m stages.warm_server stop`` records that it was called."""
    (root / "stages").mkdir(parents=True)
    (root / "stages/__init__.py").write_text("")
    (root / "stages/__main__.py").write_text(
        "import os, sys, pathlib\n"
        "if sys.argv[1:] == ['--help']:\n"
        "    pathlib.Path(f\"help-{os.environ['STAGES_WARM']}\").write_text('')\n"
        "    sys.exit(0)\n"
        "stage, variant, seed = sys.argv[1], sys.argv[2], sys.argv[4]\n"
        "if variant == 'bad':\n"
        "    sys.exit('error: no such variant')\n"
        "threads = os.environ.get('OMP_NUM_THREADS', 'all')\n"
        "warm = 'warm' if os.environ['STAGES_WARM'] == '1' else 'cold'\n"
        "pathlib.Path(f'{stage}-{variant}-{seed}-{threads}').write_text(str(pathlib.Path.cwd()))\n"
        "pathlib.Path(f'{stage}-{variant}-{seed}-{warm}').write_text(os.environ.get('STAGES_WARM_DIR', ''))\n"
    )
    (root / "stages/warm_server.py").write_text(
        "import os, sys, pathlib\n"
        "assert sys.argv[1:] == ['stop']\n"
        "pathlib.Path('stopped').write_text(os.environ['STAGES_WARM_DIR'])\n"
    )
    (root / "params.yaml").write_text("seed: 0\n")
    return root


def _fake_inputs(repo: Path) -> Path:
    """Every run input under ``repo``: folders empty, files ``{}``."""
    for rel in INPUTS:
        target = repo / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.mkdir() if "." not in target.name else target.write_text("{}\n")
    return repo


def test_runs_work_in_a_scratch_workspace_with_the_given_code(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # sequential runs inherit the setting
    repo = _fake_inputs(tmp_path / "repo")
    code = _fake_code(tmp_path / "code")
    with pytest.raises(FileNotFoundError, match="models/sft not found"):
        workspace(tmp_path / "empty", code, tmp_path / "ws0")
    folder = workspace(repo, code, tmp_path / "ws")
    assert all((folder / rel).is_symlink() for rel in INPUTS)
    assert (folder / "params.yaml").read_text() == "seed: 0\n"
    t = timed_run(code, folder, "dpo", 3)
    assert t["total_s"] == pytest.approx(t["align_s"] + t["evaluate_s"])
    assert (folder / "align-dpo-3-all").is_file() and (folder / "evaluate-dpo-3-all").is_file()
    with pytest.raises(ValueError, match=r"^bench runs: align failed: error: no such variant$"):
        timed_run(code, folder, "bad", 0)
    both = side_by_side(code, folder, "ipo", (0, 1))
    for seed in (0, 1):  # sequential with every core, then side by side with one thread each
        assert (folder / f"evaluate-ipo-{seed}-all").is_file()
        assert (folder / f"evaluate-ipo-{seed}-1").is_file()
    assert both["speedup"] == pytest.approx(both["sequential_s"] / both["parallel_one_thread_s"])
    assert not any((repo / "models").glob("aligned*"))  # the repository is never written


def test_runs_time_this_tree_cold_and_warm_alternating(tmp_path, monkeypatch):
    """The `runs` item: this tree cold (STAGES_WARM=0 even when the caller set 1), then warm
    (STAGES_WARM=1, a private server folder, its server started before and stopped after)."""
    monkeypatch.setenv("STAGES_WARM", "1")
    repo = _fake_inputs(_fake_code(tmp_path / "repo"))
    seen = {}
    real_workspace = runs_module.workspace

    def keep(repo_, code, folder):  # the scratch folder is deleted: look inside it on the way
        seen["folder"] = real_workspace(repo_, code, folder)
        return seen["folder"]

    real_stop = runs_module.stop_warm

    def stop(code, folder, warm_dir):
        real_stop(code, folder, warm_dir)
        seen["files"] = {p.name: p.read_text() for p in folder.iterdir() if p.is_file()}
        seen["warm_dir"] = str(warm_dir)

    monkeypatch.setattr(runs_module, "workspace", keep)
    monkeypatch.setattr(runs_module, "stop_warm", stop)
    out = run_wall_times(repo, variant="dpo", seed=2, repeats=1, parallel=False)
    files = seen["files"]
    assert files["help-1"] == "" and files["stopped"] == seen["warm_dir"]
    for stage in ("align", "evaluate"):
        assert files[f"{stage}-dpo-2-cold"] == ""
        assert files[f"{stage}-dpo-2-warm"] == seen["warm_dir"]
    assert set(out) >= {"head", "warm", "warm_speedup"} and "baseline" not in out
    assert out["warm"]["server_start_s"] > 0
    assert out["warm_speedup"] == pytest.approx(out["head"]["total_s"] / out["warm"]["total_s"])


def test_runs_against_a_baseline_give_each_repeats_speedups(tmp_path):
    """With a baseline commit, every repeat's totals are kept and the speedups within each
    repeat (baseline over this tree, cold and warm) give the ratio's spread in one run."""
    import subprocess

    repo = _fake_inputs(_fake_code(tmp_path / "repo"))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "stages", "params.yaml"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "code"], check=True)
    out = run_wall_times(repo, variant="dpo", seed=0, baseline="HEAD", repeats=2, parallel=False)
    totals = out["totals_s"]
    assert {k: len(v) for k, v in totals.items()} == {"head": 2, "baseline": 2, "warm": 2}
    for name in ("head", "baseline", "warm"):
        assert out[name]["total_s"] == min(totals[name])  # the best of the repeats
    assert out["speedups"] == [b / h for b, h in zip(totals["baseline"], totals["head"])]
    assert out["speedups_warm"] == [b / w for b, w in zip(totals["baseline"], totals["warm"])]
    assert out["speedup"] == pytest.approx(min(totals["baseline"]) / min(totals["head"]))
    md = markdown({"machine": machine(1), "date": "now", "runs": out})
    each = ", ".join(
        f"{c:.2f}x cold and {w:.2f}x warm" for c, w in zip(out["speedups"], out["speedups_warm"])
    )
    assert f"within each repeat (the runs timed one after the other): {each}." in md


def test_runs_inputs_are_the_data_deps_of_align_and_evaluate():
    """The scratch workspace links every data and model dep that dvc.yaml gives the align and
    evaluate stages (their code comes from PYTHONPATH, the aligned model from the align run)."""
    stages = yaml.safe_load((Path(__file__).parents[1] / "dvc.yaml").read_text())["stages"]
    deps = {
        d
        for name in ("align", "evaluate")
        for d in stages[name]["deps"]
        if not d.startswith(("stages/", "models/aligned/"))
    }
    assert deps == set(INPUTS)


def test_bench_command_writes_json_and_markdown(
    tiny_lm_dir, tmp_path, monkeypatch, torch_one_thread
):
    import shutil

    shutil.copytree(tiny_lm_dir, tmp_path / "models/sft")
    (tmp_path / "data/prompts").mkdir(parents=True)
    (tmp_path / "data/prompts/train.jsonl").write_text(
        "".join(
            json.dumps({"prompt_id": f"train-{i}", "prompt": p}) + "\n"
            for i, p in enumerate(["the film was", "the plot", "a story that was", "I"])
        )
    )
    params = copy.deepcopy(PARAMS)  # the repository's sample settings, benchmark-sized
    params["sample"].update(n_per_prompt=2, max_new_tokens=6, batch_size=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["bench", "--only", "sample", "--threads", "1"])
    assert result.exit_code == 0, result.output
    bench = json.loads((tmp_path / "reports/bench.json").read_text())
    s = bench["sample"]
    assert s["prompts"] == 4 and s["k"] == 2 and s["batch_size"] == 4
    assert s["temperature"] == PARAMS["sample"]["temperature"]
    for way in ("sample", "one_prompt", "unsorted"):
        assert 0 < s[way]["tokens"] <= 4 * 2 * 6 and s[way]["tokens_per_s"] > 0
    assert bench["machine"]["torch_threads"] == 1
    md = (tmp_path / "reports/bench.md").read_text()
    assert "one prompt at a time" in md and md.strip() == markdown(bench).strip()


def test_bench_command_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    result = CliRunner().invoke(app, ["bench", "--only", "align,nope"])
    assert result.exit_code == 1
    assert (
        result.output.strip() == "error: --only: unknown item 'nope' (items: align, sample, "
        "eval, flops, runs, sweep, paper, dvc, online)"
    )
    result = CliRunner().invoke(app, ["bench", "--only", "align"])
    assert result.exit_code == 1
    assert (
        result.output.strip() == "error: bench align: models/sft not found (run `dvc repro` first)"
    )
    assert not (tmp_path / "reports").exists()


def test_lockfile_cost_times_the_loaders_on_the_same_text(tmp_path):
    """The dvc item reads a dvc.lock: its stage count, both loaders (the C one installed as a
    dependency) and DVC's round trip, all on the same file; the Markdown line names them."""
    from stages.bench.lockfile import lockfile_cost

    stage = "    cmd: python -m stages x\n    deps:\n    - path: a\n      md5: 0\n      size: 1\n"
    text = "schema: '2.0'\nstages:\n" + "".join(f"  s{i}:\n{stage}" for i in range(30))
    (tmp_path / "dvc.lock").write_text(text)
    cost = lockfile_cost(tmp_path / "dvc.lock", repeats=1)
    assert cost["stages"] == 30 and cost["lines"] == text.count("\n")
    assert cost["loader"] == "CParser"  # ruamel.yaml.clib, a dependency of the project
    assert cost["c_load_s"] > 0 and cost["pure_load_s"] > 0 and cost["roundtrip_s"] > 0
    assert cost["load_speedup"] == cost["pure_load_s"] / cost["c_load_s"]
    md = markdown({"machine": machine(1), "date": "now", "dvc": {**cost, "status_s": 1.0}})
    assert "`dvc.lock`: 30 stages" in md and "`dvc status` 1.0 s" in md


def test_bench_help_lists_its_options():
    result = CliRunner().invoke(app, ["bench", "--help"])
    assert result.exit_code == 0, result.output
    assert "--only" in result.output and "--sweep" in result.output


def test_flops_reads_the_configured_optimizer_typed():
    assert align_optimizer(PARAMS) == PARAMS["align"]["common"]["optimizer"]
    params = copy.deepcopy(PARAMS)
    params["align"]["common"]["loss"] = "sigmoid"  # loss keys may sit in align.common
    assert align_optimizer(params) == PARAMS["align"]["common"]["optimizer"]
    params["align"]["common"]["optimizer"] = "adam"
    with pytest.raises(ValueError, match=r"^params: align\.common\.optimizer: must be one of "):
        align_optimizer(params)
    with pytest.raises(ValueError, match=r"^params: section 'align' is missing"):
        align_optimizer({"seed": 0})


def test_bench_sample_settings_are_checked(tiny_lm_dir, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(tiny_lm_dir, tmp_path / "models/sft")
    (tmp_path / "data/prompts").mkdir(parents=True)
    (tmp_path / "data/prompts/train.jsonl").write_text(
        json.dumps({"prompt_id": "train-0", "prompt": "the film was"}) + "\n"
    )
    params = copy.deepcopy(PARAMS)
    params["sample"]["temperature"] = -1.0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["bench", "--only", "sample", "--threads", "1"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: params: sample.temperature: must be > 0, got -1.0"


def test_bench_online_times_a_round_rloo_and_align_side_by_side(
    tiny_lm_dir, tmp_path, monkeypatch, torch_one_thread
):
    """The `online` item on tiny models: every phase of the round, the RLOO run, the align run
    and the sampler comparison are timed in one run, their ratios written and positive."""
    import shutil

    from tests.conftest import save_classifier

    shutil.copytree(tiny_lm_dir, tmp_path / "models/sft")
    save_classifier(tmp_path / "models/reward")
    (tmp_path / "data/prompts").mkdir(parents=True)
    (tmp_path / "data/prompts/train.jsonl").write_text(
        "".join(
            json.dumps({"prompt_id": f"train-{i}", "prompt": f"The film {i} was"}) + "\n"
            for i in range(10)
        )
    )
    params = copy.deepcopy(PARAMS)  # the repository's settings, benchmark-sized
    params["online"]["round"]["sample"].update(max_new_tokens=6, batch_size=16, temperature=1.0)
    params["align"]["common"].update(batch_prompts=2, epochs=1)
    params["online"]["rl"].update(prompts_per_step=2, n_per_prompt=2, max_new_tokens=6)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    args = ["bench", "--only", "online", "--threads", "1", "--online-prompts", "8"]
    result = CliRunner().invoke(app, [*args, "--rl-steps", "1"])
    assert result.exit_code == 0, result.output
    o = json.loads((tmp_path / "reports/bench.json").read_text())["online"]
    assert (o["prompts"], o["completions"], o["variant"]) == (8, 8 * 4, "dpo")
    phases = ("sample_s", "score_s", "pairs_s", "reference_s", "train_s")
    assert all(o["round"][k] >= 0 for k in phases) and o["round"]["train_s"] > 0
    assert o["round"]["total_s"] == pytest.approx(sum(o["round"][k] for k in phases))
    assert o["align"]["train_steps"] == o["round"]["train_steps"] >= 1  # the same items
    assert (o["rloo"]["steps"], o["rloo"]["prompt_visits"], o["rloo"]["kl_coef"]) == (1, 2, 0.05)
    for key in ("round_vs_align", "rloo_vs_align", "rloo_per_prompt_vs_align"):
        assert o[key] > 0
    assert o["round_vs_align"] == pytest.approx(o["round"]["total_s"] / o["align"]["train_s"])
    assert o["sampler_vs_one_prompt"] == o["sample"]["speedup_vs_one_prompt"] > 0
    md = (tmp_path / "reports/bench.md").read_text()
    assert "| On-policy vs offline (8 train prompts, dpo) |" in md
    assert "`generate` one prompt at a time" in md
    result = CliRunner().invoke(app, [*args[:-1], "11"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: bench online: --online-prompts 11 > 10 prompts"
