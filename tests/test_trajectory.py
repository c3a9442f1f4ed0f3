"""A run's trajectory (issue 29): ``align.common.checkpoints`` saves the policy along training,
``evaluate`` measures every checkpoint as it measures the final policy.

What would make these fail: a checkpoint saved at the wrong step or perturbing the run (the
final weights differ from a run without checkpoints), a checkpoint measured with other settings
or another seed than the final policy (the last-step checkpoint's metrics differ from the
final ones), a schedule that is empty, unordered or beyond the run accepted, or a half-written
trajectory left behind."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stages.align import align
from stages.evaluate import checkpoint_steps, evaluate
from stages.lib import paths
from stages.lib.align import TrainConfig, optimizer_steps
from stages.lib.config import TinyClassifierConfig, TinyGPT2Config, load_params, read_mapping
from stages.lib.modeling import save_pretrained, tiny_classifier, tiny_gpt2, train_bpe_tokenizer
from stages.lib.sequences import completion_logprobs, encode_batch
from stages.lib.synthetic import generate_splits

pytestmark = pytest.mark.usefixtures("torch_one_thread")

PARAMS = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
TINY = TinyGPT2Config(vocab_size=300, n_layer=1, n_embd=32, n_head=2, n_positions=64)
K = 4


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _preferences(train: list[dict], tok, model) -> tuple[list[dict], list[dict]]:
    """K continuations of each train prompt cut from other reviews, ranked by a random reward."""
    rng = random.Random(0)
    rows, refs = [], []
    for i, review in enumerate(train[:16]):
        prompt = " ".join(review["text"].split()[:4])
        completions = [
            " " + " ".join(rng.choice(train)["text"].split()[4 : 4 + rng.randint(2, 5)])
            for _ in range(K)
        ]
        ids = [tok(c, add_special_tokens=False)["input_ids"] for c in completions]
        finished = [j % 2 == 0 for j in range(K)]
        ids = [c + [tok.eos_token_id] if done else c for c, done in zip(ids, finished)]
        rewards = [rng.random() for _ in range(K)]
        pairs = [[a, b] if rewards[a] > rewards[b] else [b, a] for a, b in ((0, 1), (2, 3))]
        rows.append(
            {
                "prompt_id": f"train-{i}",
                "prompt": prompt,
                "completions": completions,
                "completion_ids": ids,
                "finished": finished,
                "rewards": rewards,
                "pairs": pairs,
                "split": "val" if i % 4 == 3 else "train",
            }
        )
        with torch.no_grad():
            logps, n = completion_logprobs(model, encode_batch(tok, [prompt] * K, ids, 64))
        refs.append({"prompt_id": f"train-{i}", "logps": logps.tolist(), "n_tokens": n.tolist()})
    return rows, refs


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """models/sft, models/reward, prompts, test reviews, preferences and reference log-probs."""
    root = tmp_path_factory.mktemp("trajectory")
    train, test = generate_splits(40, 10, 1)
    tok = train_bpe_tokenizer([r["text"] for r in train], vocab_size=300)
    torch.manual_seed(0)
    model = tiny_gpt2(tok, TINY).eval()
    save_pretrained(model, tok, root / "models/sft")
    rm = tiny_classifier(
        tok,
        TinyClassifierConfig(
            vocab_size=300, n_layers=1, dim=16, n_heads=2, max_position_embeddings=128
        ),
    )
    save_pretrained(rm, tok, root / "models/reward")
    prompts = [
        {"prompt_id": f"{split}-{i}", "prompt": " ".join(r["text"].split()[:4])}
        for split, rows in (("train", train), ("test", test))
        for i, r in enumerate(rows)
    ]
    train_texts = {p["prompt"] for p in prompts if p["prompt_id"].startswith("train-")}
    for name, prefix in (("train", "train-"), ("eval", "test-")):
        rows = [p for p in prompts if p["prompt_id"].startswith(prefix)]
        if name == "eval":  # held out: no eval prompt text among the train prompts
            rows = [p for p in rows if p["prompt"] not in train_texts]
        _jsonl(root / f"data/prompts/{name}.jsonl", rows)
    _jsonl(root / "data/prepared/test.jsonl", test)
    prefs, refs = _preferences(train, tok, model)
    _jsonl(root / "data/preferences.jsonl", prefs)
    _jsonl(root / "data/reference.jsonl", refs)
    return root


def _params(**common) -> dict:
    params = copy.deepcopy(PARAMS)
    params["align"]["common"].update(
        {"epochs": 2, "batch_prompts": 4, "eval_steps": 2, "logging_steps": 1, **common}
    )
    params["evaluate"].update(
        {
            "n_prompts": 4,
            "n_samples": 2,
            "max_new_tokens": 6,
            "batch_size": 8,
            "bootstrap": 50,
            "fixed_contexts": 2,
        }
    )
    params["quality"]["measures"] = []
    return params


@pytest.fixture
def project(workspace, tmp_path, monkeypatch) -> Path:
    import shutil

    for sub in ("models", "data"):
        shutil.copytree(workspace / sub, tmp_path / sub)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_checkpoints_are_saved_without_changing_the_run_and_measured_like_the_final_policy(
    project,
):
    n_steps = optimizer_steps(12, read_mapping(_params()["align"]["common"], "c", TrainConfig))
    assert n_steps == 6  # 12 train prompts / 4 per step x 2 epochs
    plain = align("dpo", _params(), 0)
    final_plain = _weights(paths.aligned_model("dpo", 0))
    with_ckpt = align("dpo", _params(checkpoints=[1, 3, n_steps]), 0)
    assert with_ckpt == plain  # same metrics
    final = _weights(paths.aligned_model("dpo", 0))
    assert all(torch.equal(final[k], final_plain[k]) for k in final)  # same final weights
    assert checkpoint_steps(paths.aligned_model("dpo", 0)) == [1, 3, 6]
    first, last = (_weights(paths.checkpoint_model("dpo", 0, n)) for n in (1, n_steps))
    assert all(torch.equal(last[k], final[k]) for k in final)  # step 6 is the final policy
    assert any(not torch.equal(first[k], final[k]) for k in final)  # step 1 is not

    metrics = evaluate(_params(), "dpo", 0)
    summary = json.loads((paths.trajectory_dir("dpo", 0) / "summary.json").read_text())
    assert summary["steps"] == [1, 3, 6] and summary["variant"] == "dpo"
    assert summary["checkpoints"]["6"] == metrics  # same measures, same seed, same samples
    assert summary["checkpoints"]["1"] != metrics
    rows = [json.loads(x) for x in paths.eval_samples("dpo", 0).read_text().splitlines()]
    last_rows = paths.trajectory_samples("dpo", 0, 6).read_text().splitlines()
    assert [json.loads(x) for x in last_rows] == rows
    # a run without checkpoints: an empty trajectory, written all the same (a DVC output)
    align("dpo", _params(), 0)
    evaluate(_params(), "dpo", 0)
    summary = json.loads((paths.trajectory_dir("dpo", 0) / "summary.json").read_text())
    assert summary["steps"] == [] and summary["checkpoints"] == {}
    assert sorted(p.name for p in paths.trajectory_dir("dpo", 0).iterdir()) == ["summary.json"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "must be null (no trajectory) or a non-empty, strictly increasing list"),
        ([2, 2], "must be null (no trajectory) or a non-empty, strictly increasing list"),
        ([3, 1], "must be null (no trajectory) or a non-empty, strictly increasing list"),
        ([0, 1], "must be null (no trajectory) or a non-empty, strictly increasing list"),
        ([1, 7], "step 7 is beyond the run's 6 optimizer steps"),
        ("1", "must be a list of int or null"),
    ],
)
def test_a_bad_schedule_is_one_line_naming_the_key_and_writes_nothing(project, value, message):
    params = _params()
    params["align"]["variants"]["dpo"]["checkpoints"] = value
    with pytest.raises(ValueError) as err:
        align("dpo", params, 0)
    text = str(err.value)
    assert text.startswith("align@dpo-0: params: align.variants.dpo.checkpoints"), text
    assert message in text and "\n" not in text
    assert not Path("models/aligned").exists() and not Path("logs").exists()


def test_a_stray_folder_among_checkpoints_is_named(tmp_path):
    (tmp_path / "checkpoints/step-3").mkdir(parents=True)
    (tmp_path / "checkpoints/last").mkdir()
    with pytest.raises(ValueError, match=r"checkpoints/last: not a checkpoint folder step-<n>"):
        checkpoint_steps(tmp_path)
    (tmp_path / "checkpoints/last").rmdir()
    (tmp_path / "checkpoints/step-12").mkdir()
    assert checkpoint_steps(tmp_path) == [3, 12]  # numeric order, not text order
    assert checkpoint_steps(tmp_path / "nothing") == []
