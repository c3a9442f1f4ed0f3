"""The model helpers (stages/lib/modeling.py): tokenizer, tiny models, loading, context checks.

Models are 1-layer and loaded from folders through the same ``from_pretrained`` code path a
hub id uses; nothing reaches the network.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer, ModernBertModel

from stages.lib.config import TinyClassifierConfig, TinyGPT2Config
from stages.lib.modeling import (
    EOS,
    PAD,
    build_model,
    check_context,
    context_length,
    fuse_activations,
    load_causal_lm,
    load_pretrained,
    open_live,
    save_pretrained,
    tiny_classifier,
    tiny_gpt2,
    train_bpe_tokenizer,
)

GPT2 = TinyGPT2Config(vocab_size=280, n_layer=1, n_embd=32, n_head=2, n_positions=64)
CLASSIFIER = TinyClassifierConfig(
    vocab_size=280, n_layers=1, dim=32, n_heads=2, max_position_embeddings=64
)
TEXTS = ["A great film, truly great.", "A dull film and a dull plot."] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(TEXTS, 280, model_max_length=64)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bpe_tokenizer_has_distinct_pad_no_bos_and_round_trips(tmp_path):
    tok = train_bpe_tokenizer(TEXTS, 280)
    assert tok.eos_token == EOS and tok.pad_token == PAD and tok.pad_token_id != tok.eos_token_id
    ids = tok("A great film")["input_ids"]
    assert tok.eos_token_id not in ids and tok.decode(ids) == "A great film"  # nothing added
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded("A great film" + EOS)["input_ids"] == ids + [tok.eos_token_id]
    assert loaded.pad_token == PAD and loaded.bos_token is None


def test_tiny_gpt2_follows_its_config(tokenizer):
    model = tiny_gpt2(tokenizer, GPT2)
    c = model.config
    assert (c.n_layer, c.n_embd, c.n_head, c.n_positions) == (1, 32, 2, 64)
    assert c.vocab_size == len(tokenizer) and c.resid_pdrop == c.attn_pdrop == 0.0
    assert c.pad_token_id == tokenizer.pad_token_id and c.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert context_length(model) == 64


def test_tiny_classifier_follows_its_config(tokenizer):
    model = tiny_classifier(tokenizer, CLASSIFIER)
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads) == (1, 32, 2)
    assert c.intermediate_size == 128 and c.classifier_pooling == "mean"
    assert c.num_labels == 2 and c.id2label == {0: "NEGATIVE", 1: "POSITIVE"}
    assert context_length(model) == 64


@pytest.mark.parametrize("kind, tiny", [("causal", GPT2), ("classifier", CLASSIFIER)])
def test_build_model_tiny_is_seeded(kind, tiny):
    a, tok = build_model("tiny", kind, "sft.model", texts=TEXTS, tiny=tiny, seed=3)
    b, _ = build_model("tiny", kind, "sft.model", texts=TEXTS, tiny=tiny, seed=3)
    c, _ = build_model("tiny", kind, "sft.model", texts=TEXTS, tiny=tiny, seed=4)
    assert same_weights(a, b) and not same_weights(a, c)
    assert tok.model_max_length == 64 and len(tok) <= 280


def test_build_model_loads_a_folder(tmp_path, tokenizer):
    torch.manual_seed(0)
    save_pretrained(tiny_gpt2(tokenizer, GPT2), tokenizer, tmp_path / "lm")
    model, tok = build_model(
        str(tmp_path / "lm"), "causal", "sft.model", texts=[], tiny=None, seed=0
    )
    assert same_weights(model, load_pretrained(str(tmp_path / "lm"), "causal", "x")[0])
    assert tok.pad_token == PAD


def test_check_context_names_the_key(tokenizer):
    model = tiny_gpt2(tokenizer, GPT2)
    check_context(model, 64, "sft.max_length", "sft.tiny.n_positions")  # fits
    with pytest.raises(
        ValueError,
        match=r"^params: sft\.max_length: must be <= the model's "
        r"context of 64 positions \(sft\.tiny\.n_positions for "
        r"a tiny model\), got 65$",
    ):
        check_context(model, 65, "sft.max_length", "sft.tiny.n_positions")


def test_context_length_is_none_when_the_config_does_not_say():
    model = SimpleNamespace(config=SimpleNamespace(n_positions=None, n_ctx=0))
    assert context_length(model) is None
    assert context_length(SimpleNamespace(config=SimpleNamespace(n_ctx=32))) == 32
    check_context(model, 10**6, "sft.max_length", "sft.tiny.n_positions")  # nothing to check


@pytest.mark.parametrize(
    "name", ["./missing-model", "/nonexistent/folder", "not a hub id!", "$HOME/x", "~nobody/x"]
)
def test_unloadable_name_names_the_parameter(name):
    with pytest.raises(
        ValueError,
        match=r"^sft\.model: .* is not 'tiny', an existing folder or "
        r"a hub id \(no such folder\)$",
    ):
        load_pretrained(name, "causal", "sft.model")


def test_folder_without_a_model_names_the_parameter(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"^sft\.model: folder 'empty' has no config.json"):
        load_pretrained("empty", "causal", "sft.model")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"^sft\.model: cannot load 'broken' as a causal model \("):
        load_pretrained("broken", "causal", "sft.model")


def test_missing_pad_token_becomes_eos_with_a_notice(tmp_path, tokenizer, capsys):
    model = tiny_gpt2(tokenizer, GPT2)
    tok = train_bpe_tokenizer(TEXTS, 280, model_max_length=64)
    tok.pad_token = None
    model.config.pad_token_id = None
    save_pretrained(model, tok, tmp_path / "nopad")
    loaded, loaded_tok = load_pretrained(str(tmp_path / "nopad"), "causal", "sft.model")
    assert "sft.model: tokenizer has no pad token" in capsys.readouterr().out
    assert loaded_tok.pad_token == EOS and loaded.config.pad_token_id == loaded_tok.eos_token_id
    assert loaded.generation_config.pad_token_id == loaded_tok.eos_token_id


def test_strict_head_rejects_a_base_model(tmp_path, tokenizer):
    clf = tiny_classifier(tokenizer, CLASSIFIER)
    ModernBertModel(clf.config).save_pretrained(tmp_path / "base")  # no classifier head
    tokenizer.save_pretrained(tmp_path / "base")
    load_pretrained(str(tmp_path / "base"), "classifier", "reward.model")  # a fresh head is fine
    with pytest.raises(ValueError, match=r"^reward\.model: '.*base' has no trained weights for"):
        load_pretrained(str(tmp_path / "base"), "classifier", "reward.model", strict_head=True)


def test_load_causal_lm(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="no model found"):
        load_causal_lm(tmp_path / "missing")
    save_pretrained(tiny_gpt2(tokenizer, GPT2), tokenizer, tmp_path / "lm")
    model, tok = load_causal_lm(tmp_path / "lm", torch.device("cpu"))
    assert not model.training and tok.eos_token == EOS
    save_pretrained(tiny_classifier(tokenizer, CLASSIFIER), tokenizer, tmp_path / "clf")
    with pytest.raises(ValueError, match=r"cannot load .* as a causal model"):
        load_causal_lm(tmp_path / "clf")


def test_a_reloaded_tokenizer_saves_the_same_files_online_and_offline(
    tmp_path, tokenizer, monkeypatch
):
    """HF_HUB_OFFLINE=1 makes transformers load with local_files_only=True, which a tokenizer
    remembers and would save: the folders written with and without it must be identical."""
    import huggingface_hub.constants

    save_pretrained(tiny_gpt2(tokenizer, GPT2), tokenizer, tmp_path / "sft")
    saved = {}
    for offline in (False, True):
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
        model, tok = load_pretrained(str(tmp_path / "sft"), "causal", "sft.model")
        save_pretrained(model, tok, tmp_path / f"copy-{offline}")
        saved[offline] = (tmp_path / f"copy-{offline}" / "tokenizer_config.json").read_text()
    assert "local_files_only" not in saved[True]
    assert saved[True] == saved[False]


def test_save_pretrained_is_atomic(tmp_path, tokenizer):
    class Broken:
        def save_pretrained(self, folder):
            raise OSError("disk full")

    save_pretrained(tiny_gpt2(tokenizer, GPT2), tokenizer, tmp_path / "lm")
    before = sorted(p.name for p in (tmp_path / "lm").iterdir())
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(Broken(), tokenizer, tmp_path / "lm")
    assert sorted(p.name for p in (tmp_path / "lm").iterdir()) == before  # old output intact
    assert [p.name for p in tmp_path.iterdir()] == ["lm"]  # no temporary sibling left


def test_training_curves_are_logged_in_a_git_repo_without_commits(tmp_path, monkeypatch):
    """DVCLive raises in a Git repo without commits (treeverse/dvclive#522); a freshly
    initialised project still gets its curves."""
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    live = open_live("logs/sft")
    live.log_metric("loss", 1.5)
    live.next_step()
    live.end()
    assert (tmp_path / "logs/sft/plots/metrics/loss.tsv").is_file()


def test_fuse_activations_same_function_one_kernel(tiny_lm):
    from transformers.activations import GELUTanh, NewGELUActivation

    base, _ = tiny_lm
    fused = fuse_activations(copy.deepcopy(base))
    kinds = [type(m) for m in fused.modules()]
    assert GELUTanh in kinds and NewGELUActivation not in kinds
    assert NewGELUActivation in [type(m) for m in base.modules()]  # the input model was a copy
    assert fused.config.activation_function == base.config.activation_function == "gelu_new"
    x = torch.tensor([[5, 9, 30, 2, 17, 11]])
    plain, fast = base(x).logits, fused(x).logits
    assert torch.allclose(fast, plain, rtol=1e-5, atol=1e-5)
    plain.square().sum().backward()
    fast.square().sum().backward()
    for (name, p), q in zip(base.named_parameters(), fused.parameters()):
        assert torch.allclose(q.grad, p.grad, rtol=1e-4, atol=1e-5), name
    base.zero_grad(set_to_none=True)


def test_loaded_and_tiny_policies_use_the_fused_activation(tmp_path):
    from transformers.activations import GELUTanh

    tokenizer = train_bpe_tokenizer(TEXTS, 280, model_max_length=64)
    model = tiny_gpt2(tokenizer, GPT2)
    save_pretrained(model, tokenizer, tmp_path / "m")
    loaded, _ = load_causal_lm(tmp_path / "m")
    built, _ = build_model("tiny", "causal", "sft.model", texts=TEXTS, tiny=GPT2, seed=0)
    for m in (loaded, built):
        assert any(isinstance(x, GELUTanh) for x in m.modules())
