"""``sft``: the SFT policy, a causal LM trained on the prepared train reviews.

Reads ``seed`` and ``sft.*`` from params.yaml and ``data/prepared/{train,test}.jsonl``; writes
``models/sft/`` (``save_pretrained`` model + tokenizer), ``metrics/sft.json`` (held-out
perplexity, the vocabulary size, train loss), training curves under ``logs/sft`` (DVCLive) and
its wall times under ``logs/timings/sft.json`` (git-ignored)::

    python -m stages sft                # or: dvc repro sft

``sft.model`` is ``tiny`` (a GPT-2 from the ``sft.tiny`` config with a byte-level BPE tokenizer
trained on the corpus, trained from scratch), a hub id (``gpt2``, ``lvwerra/gpt2-imdb``) or a
local folder (fine-tuned). With ``sft.epochs: 0`` a pretrained model is only copied into
``models/sft/``. Training runs through trl's ``SFTTrainer`` (EOS appended to every review so
the policy learns to stop), on CPU or unchanged on a GPU (bf16 where CUDA supports it).

**A policy that cannot model the texts.** A uniform guess over the tokenizer's ``vocab_size``
tokens has perplexity ``vocab_size``; a held-out perplexity above it (or above
``sft.max_perplexity`` when set) means the policy models these texts worse than no model at all
(e.g. a pretrained model kept with ``sft.epochs: 0`` on data unlike its own), and every aligned
policy starts from it. The stage then prints a one-line warning and sets
``perplexity_warning: true`` in ``metrics/sft.json`` (always written, with ``vocab_size``, and
``max_perplexity`` when set); the ``report`` stage repeats the warning at the top of
``reports/summary.md``. Nothing else changes: the stage still succeeds.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import datasets
import torch
import typer
from tqdm.auto import tqdm
from trl import SFTConfig, SFTTrainer

from stages.lib import paths
from stages.lib.common import seed_everything, seeded_subset
from stages.lib.config import SftConfig, load_params, read_section, read_seed
from stages.lib.contracts import PREPARED, read_rows
from stages.lib.modeling import build_model, check_context, pick_device
from stages.lib.sequences import right_pad, token_logprobs
from stages.lib.training import run_trainer, train_and_save


def train_causal_lm(
    model, tokenizer, texts: list[str], cfg: SftConfig, seed: int, log_dir: Path | None
) -> dict:
    """Train in place with trl's ``SFTTrainer`` (EOS appended, truncation at ``max_length``);
    returns the mean train loss, the first and the last logged loss, and the step count."""
    datasets.disable_progress_bars()
    return run_trainer(
        SFTTrainer,
        SFTConfig,
        model,
        datasets.Dataset.from_dict({"text": texts}),
        cfg,
        seed=seed,
        log_dir=log_dir,
        prefix="sft",
        processing_class=tokenizer,
        extra_args=dict(
            max_length=cfg.max_length,
            dataset_text_field="text",
            packing=False,
            activation_checkpointing=False,
            fp16=False,
        ),
    )


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 16) -> float:
    """Token-level perplexity of ``texts`` (each + EOS, cut at ``max_length`` tokens), i.e.
    exp of the mean NLL over every predicted token, as in training."""
    device = pick_device()
    model.to(device).eval()
    eos = tokenizer.eos_token_id
    encoded = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length)
    ids = [(row + [eos])[:max_length] for row in encoded["input_ids"]]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    nll, count = 0.0, 0
    for start in tqdm(range(0, len(order), batch_size), desc="perplexity", leave=False):
        input_ids, mask = right_pad([ids[i] for i in order[start : start + batch_size]], 0)
        input_ids, mask = input_ids.to(device), mask.to(device)
        logits = model(input_ids=input_ids, attention_mask=mask).logits
        logps = token_logprobs(logits, input_ids) * mask[:, 1:]
        nll -= float(logps.sum())
        count += int(mask[:, 1:].sum())
    if count == 0:
        raise ValueError("sft: no held-out tokens to compute perplexity on")
    return math.exp(nll / count)


def perplexity_warning(value: float, vocab_size: int, max_perplexity: float | None) -> str | None:
    """The one-line warning for a held-out perplexity ``value`` above the vocabulary size (worse
    than a uniform guess) or above ``max_perplexity`` (``sft.max_perplexity``; None: no
    threshold), naming both and what to do; None when neither holds."""
    above = []
    if value > vocab_size:
        above.append(f"the vocabulary size {vocab_size} (worse than a uniform guess)")
    if max_perplexity is not None and value > max_perplexity:
        above.append(f"sft.max_perplexity {max_perplexity:g}")
    if not above:
        return None
    return (
        f"sft: warning: held-out perplexity {value:.2f} is above {' and '.join(above)}: the "
        f"policy fits these texts poorly, and every aligned policy starts from it; fine-tune "
        f"it (more) on them (sft.epochs) or pick a model that fits the data (sft.model)"
    )


def held_out(model, tokenizer, test: list[str], cfg: SftConfig) -> dict:
    """The held-out metrics of ``metrics/sft.json``: ``eval_texts``, ``perplexity``,
    ``vocab_size`` (the tokenizer's, special tokens included: a uniform guess's perplexity),
    ``perplexity_warning`` (:func:`perplexity_warning` has a line) and ``max_perplexity`` when
    set."""
    ppl = perplexity(model, tokenizer, test, cfg.max_length, cfg.batch_size)
    vocab = len(tokenizer)
    out = {
        "eval_texts": len(test),
        "perplexity": ppl,
        "vocab_size": vocab,
        "perplexity_warning": perplexity_warning(ppl, vocab, cfg.max_perplexity) is not None,
    }
    if cfg.max_perplexity is not None:
        out["max_perplexity"] = cfg.max_perplexity
    return out


def run_sft(params: dict) -> tuple[dict, dict]:
    """Run the stage on a params mapping (paths relative to the cwd); returns its metrics (as
    written to ``metrics/sft.json``) and its wall times (``logs/timings/sft.json``)."""
    cfg, seed = read_section(params, "sft", SftConfig), read_seed(params)
    seed_everything(seed)
    started = time.perf_counter()
    train = [row["text"] for row in read_rows(paths.PREPARED_TRAIN, PREPARED)]
    test = [row["text"] for row in read_rows(paths.PREPARED_TEST, PREPARED)][: cfg.eval_texts]
    texts = seeded_subset(train, cfg.max_train_texts, f"{seed}-sft-texts")
    model, tokenizer = build_model(
        cfg.model, "causal", "sft.model", texts=train, tiny=cfg.tiny, seed=seed
    )
    check_context(model, cfg.max_length, "sft.max_length", "sft.tiny.n_positions")
    return train_and_save(
        "sft",
        cfg,
        model,
        tokenizer,
        len(texts),
        paths.SFT_DIR,
        train=lambda log_dir: train_causal_lm(model, tokenizer, texts, cfg, seed, log_dir),
        evaluate=lambda: held_out(model, tokenizer, test, cfg),
        started=started,
    )


def main(params: Path = typer.Option(Path("params.yaml"), help="Params file to read.")) -> None:
    """Train (or copy) the SFT policy into models/sft."""
    m, timings = run_sft(load_params(params))
    typer.echo(
        f"sft: {m['model']} -> {paths.SFT_DIR}, held-out perplexity {m['perplexity']:.2f} "
        f"({timings['wall_seconds']:.0f}s)"
    )
    warning = perplexity_warning(m["perplexity"], m["vocab_size"], m.get("max_perplexity"))
    if warning is not None:
        typer.echo(warning, err=True)
