"""The ``evaluate`` stage: chunked log-prob/entropy pass, metric helpers, end to end, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from stages.common import StageError, stage_command
from stages.evaluate import (METRIC_KEYS, bootstrap_interval, check_held_out, distinct_n,
                             generated_stats, pack, sequence_stats, summarize)


@pytest.fixture(scope="module")
def tiny():
    """A tiny GPT-2 policy and byte-level BPE tokenizer built offline."""
    from stages.modeling import tiny_gpt2, train_bpe_tokenizer
    from stages.synthetic import generate_splits

    train, _ = generate_splits(60, 4, 0)
    tok = train_bpe_tokenizer([r["text"] for r in train], vocab_size=300)
    torch.manual_seed(0)
    cfg = {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64, "dropout": 0.0}
    return tiny_gpt2(tok, cfg).eval(), tok


def _random_sequences(vocab: int, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    prompts, gens = [], []
    for _ in range(n):
        lp, lg = (int(torch.randint(1, 6, (1,), generator=g)),
                  int(torch.randint(1, 12, (1,), generator=g)))
        prompts.append(torch.randint(0, vocab, (lp,), generator=g).tolist())
        gens.append(torch.randint(0, vocab, (lg,), generator=g).tolist())
    return prompts, gens


def _reference(model, prompt: list[int], gen: list[int]) -> tuple[float, float]:
    """Straightforward: one unpadded sequence, full log_softmax over every position."""
    ids = torch.tensor([prompt + gen])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    pos = range(len(prompt) - 1, len(prompt) + len(gen) - 1)     # predicts each generated token
    lp = sum(float(logp[t, ids[0, t + 1]]) for t in pos)
    ent = sum(float(-(logp[t].exp() * logp[t]).sum()) for t in pos)
    return lp, ent


@pytest.mark.parametrize("chunk", [3, 1000])
def test_chunked_pass_matches_full_log_softmax(tiny, chunk):
    model, tok = tiny
    prompts, gens = _random_sequences(len(tok), 7)
    logp, ent, n = generated_stats(model, pack(prompts, gens, pad_id=5), chunk=chunk)
    assert chunk < max(len(p) + len(g) for p, g in zip(prompts, gens)) or chunk == 1000
    for i, (p, g) in enumerate(zip(prompts, gens)):
        ref_lp, ref_ent = _reference(model, p, g)
        assert int(n[i]) == len(g)                       # prompt and padding positions excluded
        assert float(logp[i]) == pytest.approx(ref_lp, abs=1e-4)
        assert float(ent[i]) == pytest.approx(ref_ent, abs=1e-4)


def test_sequence_stats_batches_in_input_order(tiny):
    model, tok = tiny
    prompts, gens = _random_sequences(len(tok), 9, seed=1)
    stats = sequence_stats(model, prompts, gens, batch_size=4, chunk=5)
    for i, (p, g) in enumerate(zip(prompts, gens)):
        ref_lp, ref_ent = _reference(model, p, g)
        assert stats["logp"][i] == pytest.approx(ref_lp, abs=1e-4)
        assert stats["entropy"][i] == pytest.approx(ref_ent, abs=1e-4)
        assert stats["n"][i] == len(g)


def test_kl_of_policy_with_itself_is_zero(tiny):
    model, tok = tiny
    prompts, gens = _random_sequences(len(tok), 6, seed=2)
    own = sequence_stats(model, prompts, gens, batch_size=6, chunk=8)
    again = sequence_stats(model, prompts, gens, batch_size=4, chunk=3, entropy=False)
    m = summarize(np.zeros((3, 2)), None, own, again["logp"], gens, n_resamples=50, seed=0)
    assert m["kl"] == pytest.approx(0.0, abs=1e-5)
    assert m["nll"] == pytest.approx(-own["logp"].mean(), abs=1e-5)
    assert m["entropy"] == pytest.approx(own["entropy"].sum() / own["n"].sum(), abs=1e-5)


def test_bootstrap_contains_mean_narrows_and_is_seeded():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 2.0, 20), rng.normal(1.0, 2.0, 2000)
    lo_s, hi_s = bootstrap_interval(small, n_resamples=1000, seed=0)
    lo_l, hi_l = bootstrap_interval(large, n_resamples=1000, seed=0)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 4
    assert bootstrap_interval(small, n_resamples=1000, seed=0) == (lo_s, hi_s)


def test_distinct_n_on_hand_made_tokens():
    seqs = [[1, 2, 3], [1, 2, 4]]
    assert distinct_n(seqs, 1) == pytest.approx(4 / 6)
    assert distinct_n(seqs, 2) == pytest.approx(3 / 4)     # (1,2) twice
    assert distinct_n([[1], [1]], 2) == 0.0                # bigrams never cross sequences
    assert distinct_n([[7, 7, 7, 7]], 2) == pytest.approx(1 / 3)


def test_held_out_check():
    train = [{"prompt_id": "train-1", "prompt": "The film was"}]
    assert check_held_out([{"prompt_id": "test-1", "prompt": "The film was"}], train) == 1
    with pytest.raises(StageError, match="train-1"):
        check_held_out([{"prompt_id": "train-1", "prompt": "Other words here"}], train)


# ------------------------------------------------------------------------ end to end, CLI
PARAMS = {"seed": 0, "data": {"source": "synthetic"}, "reward": {"score": "logit"},
          "evaluate": {"n_prompts": 5, "n_samples": 2, "max_new_tokens": 8, "batch_size": 4,
                       "bootstrap": 200, "logit_chunk": 16}}


def _prompts(path: Path, prefix: str, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt_id": f"{prefix}-{i}", "prompt": t}) + "\n"
                            for i, t in enumerate(texts)))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny):
    """A tmp repo with eval/train prompts, models/sft, models/aligned/dpo and models/reward."""
    from stages.modeling import save_pretrained, tiny_classifier, tiny_gpt2, train_bpe_tokenizer
    from stages.synthetic import generate_splits

    root = tmp_path_factory.mktemp("ws")
    model, tok = tiny
    train, test = generate_splits(30, 10, 1)
    _prompts(root / "data/prompts/train.jsonl", "train", [" ".join(r["text"].split()[:4])
                                                          for r in train])
    _prompts(root / "data/prompts/eval.jsonl", "test", [" ".join(r["text"].split()[:4])
                                                        for r in test])
    save_pretrained(model, tok, root / "models/sft")
    torch.manual_seed(1)
    other = tiny_gpt2(tok, {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64,
                            "dropout": 0.0})
    save_pretrained(other, tok, root / "models/aligned/dpo")
    rtok = train_bpe_tokenizer([r["text"] for r in train], vocab_size=300)
    rm = tiny_classifier(rtok, {"n_layers": 1, "dim": 16, "n_heads": 2,
                                "max_position_embeddings": 128, "dropout": 0.0})
    save_pretrained(rm, rtok, root / "models/reward")
    save_pretrained(rm, rtok, root / "models/aligned/classifier")    # not a causal LM
    return root


def _app():
    from stages.evaluate import main

    app = typer.Typer()
    app.command()(stage_command(main))
    app.command("noop")(lambda: None)          # keep `evaluate` a named sub-command
    return app


def _run(root: Path, monkeypatch, policy: str, **evaluate):
    params = {**PARAMS, "evaluate": {**PARAMS["evaluate"], **evaluate}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(root)
    return CliRunner().invoke(_app(), ["main", policy])


@pytest.mark.slow
def test_evaluate_end_to_end(workspace, monkeypatch):
    for policy in ("sft", "dpo"):
        result = _run(workspace, monkeypatch, policy)
        assert result.exit_code == 0, result.output
        metrics = json.loads((workspace / f"metrics/eval/{policy}.json").read_text())
        assert set(METRIC_KEYS) <= set(metrics)
        assert metrics["n_prompts"] == 5 and metrics["n_samples"] == 2
        assert metrics["reward_lo"] <= metrics["reward"] <= metrics["reward_hi"]
        assert metrics["gold_lo"] <= metrics["gold"] <= metrics["gold_hi"]
        assert 0 < metrics["entropy"] <= np.log(300) + 1e-6
        assert 0 < metrics["length"] <= 8 and 0 < metrics["distinct_2"] <= 1
        rows = [json.loads(line) for line in
                (workspace / f"data/eval/{policy}.jsonl").read_text().splitlines()]
        assert len(rows) == 5 and all(len(r["completions"]) == 2 == len(r["rewards"])
                                      for r in rows)
        assert metrics["nll"] == pytest.approx(-np.mean([v for r in rows for v in r["logp"]]),
                                               abs=1e-4)
    sft = json.loads((workspace / "metrics/eval/sft.json").read_text())
    dpo = json.loads((workspace / "metrics/eval/dpo.json").read_text())
    assert sft["kl"] == 0.0 and dpo["kl"] != 0.0
    rows = [json.loads(line) for line in (workspace / "data/eval/dpo.jsonl").read_text().split("\n")
            if line]
    kl = np.mean([a - b for r in rows for a, b in zip(r["logp"], r["logp_sft"])])
    assert dpo["kl"] == pytest.approx(kl, abs=1e-4)


@pytest.mark.parametrize("policy, settings, message", [
    ("sft", {"n_samples": 0}, ["evaluate.n_samples must be >= 1"]),
    ("nope", {}, ["models/aligned/nope: policy folder not found"]),
    ("classifier", {}, ["models/aligned/classifier", "causal"]),
])
def test_bad_input_is_one_line_error(workspace, monkeypatch, policy, settings, message):
    result = _run(workspace, monkeypatch, policy, **settings)
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert all(m in result.output for m in message), result.output


def test_eval_prompt_also_in_train_fails(workspace, monkeypatch, tmp_path):
    import shutil

    root = tmp_path / "leak"
    shutil.copytree(workspace / "data", root / "data")
    eval_rows = (root / "data/prompts/eval.jsonl").read_text()
    (root / "data/prompts/train.jsonl").write_text(eval_rows.splitlines()[0] + "\n")
    result = _run(root, monkeypatch, "sft")
    assert result.exit_code == 1 and "also in data/prompts/train.jsonl" in result.output
