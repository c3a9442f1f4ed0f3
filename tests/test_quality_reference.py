"""The ``quality-reference`` stage and the quality measures of ``evaluate`` end to end on tiny
models (issue #28): the reference sets, the cached spaces, the metrics recomputed from the
files, the per-prompt fields that ``report`` and ``frontier`` bootstrap, and bad input (one
line naming the key, nothing written). The measures themselves: tests/test_lib_quality.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from stages.cli import stage_command
from stages.evaluate import main as evaluate_main
from stages.lib.config import TinyClassifierConfig, TinyGPT2Config, load_params, read_mapping
from stages.lib.modeling import save_pretrained, tiny_classifier, tiny_gpt2, train_bpe_tokenizer
from stages.lib.quality import QualityConfig, mauve_score, prdc_measures, vendi_score
from stages.lib.quality_reference import Spaces, cut_review
from stages.lib.runs import quality_sets, read_eval
from stages.lib.synthetic import generate_splits
from stages.quality_reference import main as reference_main

pytestmark = pytest.mark.usefixtures("torch_one_thread")

PARAMS = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
TINY_GPT2 = TinyGPT2Config(vocab_size=300, n_layer=1, n_embd=16, n_head=2, n_positions=64)
#: Small enough for 40 test reviews (about 20 positive) and 6 prompts x 2 samples.
QUALITY = {
    "measures": ["precision", "recall", "density", "coverage", "mauve", "vendi", "self_bleu"],
    "features": ["tfidf", "hidden"],
    "references": ["all", "positive"],
    "reference_size": 8,
    "k": 2,
    "tfidf_dim": 4,
    "tfidf_fit_texts": None,
    "self_bleu_texts": 12,
    "encoder": None,
}
EVALUATE = {"n_prompts": 6, "n_samples": 2, "max_new_tokens": 8, "batch_size": 4, "bootstrap": 50}


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tmp repo: prepared train/test reviews, prompts, models/sft, models/reward."""
    root = tmp_path_factory.mktemp("quality")
    train, test = generate_splits(60, 40, 3)
    _jsonl(root / "data/prepared/train.jsonl", train)
    _jsonl(root / "data/prepared/test.jsonl", test)
    train_prompts = [{"prompt_id": f"train-{i}", "prompt": f"Train prompt {i}"} for i in range(9)]
    _jsonl(root / "data/prompts/train.jsonl", train_prompts)  # only for the held-out check
    ev = [
        {"prompt_id": f"test-{i}", "prompt": " ".join(r["text"].split()[:4])}
        for i, r in enumerate(test)
    ]
    _jsonl(root / "data/prompts/eval.jsonl", ev)
    tok = train_bpe_tokenizer([r["text"] for r in train], vocab_size=300)
    torch.manual_seed(0)
    save_pretrained(tiny_gpt2(tok, TINY_GPT2).eval(), tok, root / "models/sft")
    rm = tiny_classifier(
        tok,
        TinyClassifierConfig(
            vocab_size=300, n_layers=1, dim=16, n_heads=2, max_position_embeddings=128
        ),
    )
    save_pretrained(rm, tok, root / "models/reward")
    return root


def _invoke(root: Path, monkeypatch, command, args: list[str], quality: dict | None = None):
    params = {
        **PARAMS,
        "data": {**PARAMS["data"], "source": "synthetic"},
        "evaluate": {**PARAMS["evaluate"], **EVALUATE},
        "quality": {**QUALITY, **(quality or {})},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(root)
    app = typer.Typer()
    app.command()(stage_command(command))
    app.command("noop")(lambda: None)
    return CliRunner().invoke(app, ["main", *args])


@pytest.mark.slow
def test_reference_then_evaluate_measures_what_the_files_say(workspace, monkeypatch):
    result = _invoke(workspace, monkeypatch, reference_main, [])
    assert result.exit_code == 0, result.output
    test = _rows(workspace / "data/prepared/test.jsonl")
    ref = _rows(workspace / "data/quality/reference.jsonl")
    # 8 per set, distinct reviews per set, positive only holds label 1; each text is the start
    # of its review (cut to a sample's length, not rewritten). Catches: the positive set drawn
    # from all reviews, texts not cut, a draw with replacement.
    for name in ("all", "positive"):
        rows = [r for r in ref if r["set"] == name]
        assert len(rows) == 8 == len({r["review"] for r in rows})
        assert all(test[r["review"]]["text"].startswith(r["text"]) for r in rows)
    assert all(r["label"] == 1 == test[r["review"]]["label"] for r in ref if r["set"] == "positive")
    assert any(len(r["text"]) < len(test[r["review"]]["text"]) for r in ref)

    result = _invoke(workspace, monkeypatch, evaluate_main, ["sft", "--seed", "0"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((workspace / "metrics/eval/sft/seed-0.json").read_text())["quality"]
    cfg = read_mapping(QUALITY, "quality", QualityConfig)
    assert set(metrics) == set(cfg.metric_names())
    rows = _rows(workspace / "data/eval/sft/seed-0.jsonl")
    texts = [r["prompt"] + c for r in rows for c in r["completions"]]
    monkeypatch.chdir(workspace)
    spaces = Spaces.read(Path("data/quality/spaces.npz"), cfg, Path("models/sft"))
    for space in ("tfidf", "hidden"):
        samples = spaces.embed(space, texts)
        for name in ("all", "positive"):
            # the reference features are the cut texts of that set, embedded: catches a stale
            # or swapped set and features of the uncut reviews
            own = [r["text"] for r in ref if r["set"] == name]
            reference = spaces.reference(space, name)[0]
            np.testing.assert_allclose(reference, spaces.embed(space, own), atol=1e-9)
            # recomputed from the files with the reference first: catches swapped arguments
            want = prdc_measures(reference, samples, k=2)
            for m, v in want.items():
                assert metrics[f"{m}_{space}_{name}"] == pytest.approx(v, abs=1e-6), (m, space)
            mauve = mauve_score(reference, samples, seed=0)
            assert metrics[f"mauve_{space}_{name}"] == pytest.approx(mauve, abs=1e-6)
        assert metrics[f"vendi_{space}"] == pytest.approx(vendi_score(samples), abs=1e-6)
    # the per-prompt fields give the run's values back (what report/frontier bootstrap)
    run = read_eval("sft", 0)
    for name in ("tfidf_all", "hidden_positive"):
        for m in ("precision", "density"):
            value = run.num[f"{m}_{name}"].sum() / run.den[f"{m}_{name}"].sum()
            assert value == pytest.approx(metrics[f"{m}_{name}"], abs=1e-6)
        for m in ("coverage", "recall"):
            assert run.sets[f"{m}_{name}"].any(axis=1).mean() == pytest.approx(
                metrics[f"{m}_{name}"]
            )


def test_quality_sets_group_hits_by_prompt():
    """Each prompt's ``covers`` become one column; a reference point hit by two prompts is one
    point (catches counting hits instead of points)."""
    rows = [
        {
            "entropy": [1.0, 1.0],
            "quality": {
                "k": 1,
                "s/a": {"n_reference": 4, "inside": [1, 0], "covers": [0, 2], "recalls": [1]},
            },
        },
        {
            "entropy": [1.0, 1.0],
            "quality": {
                "k": 1,
                "s/a": {"n_reference": 4, "inside": [2, 1], "covers": [2], "recalls": []},
            },
        },
    ]
    sets = quality_sets(rows, "f")
    np.testing.assert_array_equal(sets["coverage_s_a"], [[1, 0], [0, 0], [1, 1], [0, 0]])
    assert sets["coverage_s_a"].any(axis=1).mean() == 0.5
    assert sets["recall_s_a"].any(axis=1).mean() == 0.25
    bad = [{**rows[0], "quality": {"k": 1, "s/a": {**rows[0]["quality"]["s/a"], "covers": [4]}}}]
    with pytest.raises(ValueError, match="row 1: quality 's/a' must hold"):
        quality_sets(bad, "f")


def test_cut_review_keeps_the_prompt_and_max_tokens(workspace):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(workspace / "models/sft")
    text = "The film was great, and the actors were very good in every scene of it."
    cut = cut_review(text, 4, tok, 3)
    rest = tok(text[len("The film was great,") :], add_special_tokens=False)["input_ids"]
    assert cut == "The film was great," + tok.decode(rest[:3])
    assert text.startswith(cut) and cut != text
    assert cut_review(text, 4, tok, 1000) == text


@pytest.mark.parametrize(
    ("quality", "message"),
    [
        ({"reference_size": 30}, "params: quality.reference_size: must be <= the"),
        ({"k": 8}, "params: quality.k: must be < reference_size (8), got 8"),
        ({"measures": ["fid"]}, "params: quality.measures: unknown measure 'fid'"),
        (
            {"features": ["encoder"], "encoder": "nowhere"},
            "params: quality.encoder: folder nowhere not found",
        ),
        ({"features": ["encoder"]}, "params: quality.encoder: is null"),
        ({"tfidf_dim": 500}, "params: quality.tfidf_dim: must be < min(fit texts, terms)"),
    ],
)
def test_bad_reference_params_one_line_nothing_written(
    workspace, monkeypatch, tmp_path, quality, message
):
    root = tmp_path / "ws"
    for sub in ("data/prepared", "data/prompts", "models/sft"):
        (root / sub).parent.mkdir(parents=True, exist_ok=True)
        (root / sub).symlink_to(workspace / sub)
    result = _invoke(root, monkeypatch, reference_main, [], quality)
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {message}"), result.output
    assert result.output.count("\n") == 1
    assert not (root / "data/quality").exists()


@pytest.mark.slow
def test_evaluate_refuses_a_stale_reference(workspace, monkeypatch, tmp_path):
    """Spaces built with k 2 but params say k 3: evaluate stops before sampling, names the file
    and writes nothing (catches radii of one k used with balls of another)."""
    root = tmp_path / "ws"
    for sub in ("data/prepared", "data/prompts", "models"):
        (root / sub).parent.mkdir(parents=True, exist_ok=True)
        (root / sub).symlink_to(workspace / sub)
    assert _invoke(root, monkeypatch, reference_main, []).exit_code == 0
    result = _invoke(root, monkeypatch, evaluate_main, ["sft", "--seed", "0"], {"k": 3})
    assert result.exit_code == 1
    assert result.output.startswith("error: data/quality/spaces.npz: k is [2], params say [3]")
    assert not (root / "data/eval").exists() and not (root / "metrics").exists()


@pytest.mark.slow
def test_encoder_space_is_a_local_folder_pooled_like_hidden(workspace, monkeypatch, tmp_path):
    """``encoder`` pointed at the SFT policy's own folder must give the ``hidden``
    space to float32 rounding (the same mean pooling of the same last hidden state, loaded
    with AutoModel instead of the causal LM: 1e-8 apart):
    catches another pooling, the LM head's logits instead of hidden states, or texts cut
    differently for the encoder."""
    root = tmp_path / "ws"
    for sub in ("data/prepared", "data/prompts", "models"):
        (root / sub).parent.mkdir(parents=True, exist_ok=True)
        (root / sub).symlink_to(workspace / sub)
    quality = {"features": ["hidden", "encoder"], "encoder": "models/sft"}
    result = _invoke(root, monkeypatch, reference_main, [], quality)
    assert result.exit_code == 0, result.output
    with np.load(root / "data/quality/spaces.npz") as f:
        for name in ("all", "positive"):
            np.testing.assert_allclose(
                f[f"encoder/{name}/features"], f[f"hidden/{name}/features"], atol=1e-6
            )
