"""Batched sampling (:mod:`stages.generation`) and the ``sample`` stage."""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from stages.common import StageError, stage_command, write_jsonl
from stages.contracts import SAMPLES, read_rows
from stages.generation import batch_seed, generate_completions, plan_batches

pytestmark = pytest.mark.usefixtures("torch_one_thread")

PROMPTS = ["the film was", "I loved this movie and the acting was", "bad", "the plot is not"]


def _gen(model, tokenizer, prompts=PROMPTS, **kw):
    args = {"n_per_prompt": 3, "temperature": 0.7, "max_new_tokens": 12, "batch_size": 5,
            "seed": 0, "progress": False, **kw}
    return generate_completions(model, tokenizer, prompts, **args)


def test_plan_batches_sorted_and_complete():
    batches = plan_batches([3, 7, 1, 7], n_per_prompt=3, batch_size=4)
    flat = [s for b in batches for s in b]
    assert sorted(flat) == [(i, k) for i in range(4) for k in range(3)]
    assert all(len(b) <= 4 for b in batches)
    assert [i for i, _ in flat] == [1, 1, 1, 3, 3, 3, 0, 0, 0, 2, 2, 2]  # longest first, stable


def test_deterministic_for_a_seed_and_independent_of_global_rng(tiny_lm):
    model, tokenizer = tiny_lm
    torch.manual_seed(123)
    a = _gen(model, tokenizer)
    torch.manual_seed(456)
    state = torch.get_rng_state()
    b = _gen(model, tokenizer)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG neither used nor advanced
    assert a.token_ids == b.token_ids and a.texts == b.texts
    c = _gen(model, tokenizer, seed=1)
    assert c.token_ids != a.token_ids
    assert batch_seed(0, 1) != batch_seed(0, 2) and batch_seed(0, 1) == batch_seed(0, 1)


def test_completions_exclude_prompt_and_respect_max_new_tokens(tiny_lm):
    model, tokenizer = tiny_lm
    out = _gen(model, tokenizer, max_new_tokens=7)
    assert len(out.texts) == len(PROMPTS) and all(len(t) == 3 for t in out.texts)
    eos = tokenizer.eos_token_id
    total = 0
    for prompt, texts, ids, done in zip(PROMPTS, out.texts, out.token_ids, out.finished):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for text, gen, fin in zip(texts, ids, done):
            assert 1 <= len(gen) <= 7
            assert fin == (gen[-1] == eos) and eos not in gen[:-1]
            assert not fin or len(gen) <= 7
            assert text == tokenizer.decode(gen, skip_special_tokens=True,
                                            clean_up_tokenization_spaces=False)
            full = tokenizer.decode(prompt_ids + gen, skip_special_tokens=True,
                                    clean_up_tokenization_spaces=False)
            assert full.startswith(prompt)  # the prompt precedes, and is not in, the completion
            if "\ufffd" not in full:  # random byte tokens can split a UTF-8 character
                assert full == prompt + text
            total += len(gen)
    assert out.n_tokens == total and out.tokens_per_second > 0


def test_stops_at_eos(tiny_lm):
    """A model whose logits always favour EOS ends every completion at its first token, and
    the completion text is empty: no prompt text leaks into it."""
    model, tokenizer = tiny_lm
    model = copy.deepcopy(model)
    eos = tokenizer.eos_token_id
    model.register_forward_hook(lambda m, i, o: _boost(o, eos))
    out = _gen(model, tokenizer, max_new_tokens=10)
    assert all(ids == [eos] for per in out.token_ids for ids in per)
    assert all(all(per) for per in out.finished) and all(t == "" for per in out.texts for t in per)


def _boost(output, token):
    output.logits[..., token] += 1e4
    return output


@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_greedy_batched_equals_one_at_a_time(tmp_path, pad_is_eos):
    from conftest import build_tiny_lm

    from stages.generation import load_causal_lm

    model, tokenizer = load_causal_lm(build_tiny_lm(tmp_path / "lm", pad_is_eos=pad_is_eos,
                                                    seed=1), torch.device("cpu"))
    prompts = PROMPTS + ["a", "the acting and the score and the ending were never really fun"]
    kw = {"n_per_prompt": 1, "do_sample": False, "max_new_tokens": 15}
    batched = _gen(model, tokenizer, prompts, batch_size=len(prompts), **kw)
    single = [_gen(model, tokenizer, [p], batch_size=1, **kw).token_ids[0] for p in prompts]
    assert batched.token_ids == single


def test_padded_batch_samples_the_model_distribution(tiny_lm):
    """First sampled token of a short (left-padded) and a long prompt in one batch: empirical
    frequencies match softmax(logits / T) of an unpadded forward pass."""
    model, tokenizer = tiny_lm
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(15.0)  # perplexity ~3 and ~12 instead of ~200
    temperature, n = 0.7, 1000
    prompts = ["bad", "the plot is not very good but the acting"]
    out = _gen(model, tokenizer, prompts, n_per_prompt=n, batch_size=2 * n, max_new_tokens=1,
               temperature=temperature)
    for prompt, ids in zip(prompts, out.token_ids):
        enc = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            probs = torch.softmax(model(**enc).logits[0, -1] / temperature, -1)
        counts = torch.bincount(torch.tensor([g[0] for g in ids]), minlength=probs.numel())
        tv = 0.5 * (counts / n - probs).abs().sum().item()
        assert tv < 0.1, (prompt, tv)


def test_prompt_too_long_for_model(tiny_lm):
    model, tokenizer = tiny_lm
    with pytest.raises(StageError, match="exceeds the model's 128 positions"):
        _gen(model, tokenizer, ["the film was"], max_new_tokens=127)


# --- the sample stage -------------------------------------------------------------------

def _sample_params(**sample) -> dict:
    return {"seed": 0, "sample": {"n_per_prompt": 3, "temperature": 0.7, "max_new_tokens": 10,
                                  "batch_size": 4, **sample}}


def _stage_dir(tmp_path: Path, tiny_lm_dir: Path) -> None:
    shutil.copytree(tiny_lm_dir, tmp_path / "models" / "sft")
    write_jsonl(tmp_path / "data/prompts/train.jsonl",
                [{"prompt_id": f"train-{i}", "prompt": p} for i, p in enumerate(PROMPTS)])


def test_sample_stage_writes_samples(tmp_path, monkeypatch, tiny_lm_dir):
    from stages.sample import sample

    _stage_dir(tmp_path, tiny_lm_dir)
    monkeypatch.chdir(tmp_path)
    summary = sample(_sample_params(), progress=False)
    rows = read_rows("data/samples.jsonl", SAMPLES)
    assert [r["prompt_id"] for r in rows] == [f"train-{i}" for i in range(4)]
    assert [r["prompt"] for r in rows] == PROMPTS
    assert all(len(r["completions"]) == 3 for r in rows)
    assert summary["completions"] == 12 and summary["tokens_per_second"] > 0
    first = Path("data/samples.jsonl").read_text()
    sample(_sample_params(), progress=False)
    assert Path("data/samples.jsonl").read_text() == first  # reproducible


@pytest.mark.parametrize("key, value, needle", [
    ("n_per_prompt", 1, "sample.n_per_prompt must be >= 2"),
    ("temperature", 0, "sample.temperature must be > 0"),
    ("max_new_tokens", 0, "sample.max_new_tokens"),
    ("batch_size", "8", "sample.batch_size must be int"),
])
def test_sample_bad_params_one_line(tmp_path, monkeypatch, tiny_lm_dir, key, value, needle):
    import yaml

    from stages.sample import main

    _stage_dir(tmp_path, tiny_lm_dir)
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(_sample_params(**{key: value})))
    app = typer.Typer()
    app.command()(stage_command(main))
    result = CliRunner().invoke(app, ["--params", "params.yaml"])
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: params: ") and needle in lines[0]
    assert not Path("data/samples.jsonl").exists()
