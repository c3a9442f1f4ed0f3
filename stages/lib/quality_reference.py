"""The reference sets and feature spaces of the quality–diversity measures (stage
``quality-reference``, built once per profile) and how one ``evaluate`` run is measured against
them::

    rows = reference_rows(test_rows, cfg, prompt_words=4, max_new_tokens=48, tokenizer=tok, seed=0)
    arrays = build_spaces(cfg, rows, train_texts, seed=0)          # -> data/quality/spaces.npz
    spaces = Spaces.read(paths.QUALITY_SPACES, cfg)                # evaluate: asserted on read
    fields, metrics = measure_run(spaces, texts, n_per_prompt=4, cfg=cfg, seed=1)

A reference text is a held-out review cut to the length of an evaluation sample: its prompt
(the first ``data.prompt_words`` words, as ``prepare`` cuts prompts) and then at most
``evaluate.max_new_tokens`` SFT tokens of the rest (as ``evaluate``'s fixed contexts), so that
neither length nor a review's later sentences tell human text from samples.

**The spaces file** ``data/quality/spaces.npz`` (the data contract, asserted by
:meth:`Spaces.read`): ``k`` (the k of the radii), ``features`` and ``references`` (the names,
in params order), ``tfidf/terms``, ``tfidf/idf``, ``tfidf/components`` (the fitted TF-IDF + SVD,
:meth:`TfidfSvd.from_arrays`; only with the ``tfidf`` space) and per space and reference set
``<space>/<set>/features`` [N, d] and ``<space>/<set>/radii`` [N] (each point's distance to
its k-th neighbour in its set).

**A run's row field** ``quality`` (one per eval prompt of ``data/eval/<policy>/seed-<s>.jsonl``,
read by :mod:`stages.lib.runs`): ``{"k": k, "<space>/<set>": {"n_reference": N, "inside":
[per sample: reference balls holding it], "covers": [reference indices whose ball holds one of
the prompt's samples], "recalls": [reference indices inside one of its samples' balls]}}``.
Precision and density are means over samples (``inside`` > 0, ``inside`` / k); coverage and
recall are fractions of reference points hit by any prompt (the union of the sets), which the
report bootstraps over seeds and reference points (:func:`stages.lib.bootstrap.set_replicates`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stages.lib.common import prompt_text
from stages.lib.quality import (
    KEY,
    REFERENCE_MEASURES,
    QualityConfig,
    knn_radii,
    mauve_score,
    metric_name,
    prdc_hits,
    self_bleu,
    vendi_score,
)
from stages.lib.quality_features import TfidfSvd, mean_hidden_features


def cut_review(text: str, words: int, tokenizer, max_tokens: int) -> str:
    """A review cut to a sample's length: its prompt (first ``words`` words, single-spaced)
    and then at most ``max_tokens`` tokens of the rest, tokenised apart from the prompt as
    generation appends tokens (special tokens dropped, as evaluate decodes completions)."""
    prompt = prompt_text(text, words)
    rest = text[len(prompt) :] if text.startswith(prompt) else " " + " ".join(text.split()[words:])
    ids = tokenizer(rest, add_special_tokens=False)["input_ids"][:max_tokens]
    return prompt + tokenizer.decode(ids, skip_special_tokens=True)


def reference_rows(
    test_rows: list[dict],
    cfg: QualityConfig,
    *,
    prompt_words: int,
    max_new_tokens: int,
    tokenizer,
    seed: int,
) -> list[dict]:
    """``data/quality/reference.jsonl``: per reference set of ``cfg.references`` a seeded draw
    of ``cfg.reference_size`` held-out reviews without replacement (``all``: any review;
    ``positive``: label 1), each ``{"set", "review" (row of the test file), "label", "text"}``
    with the text cut by :func:`cut_review`. The draws are independent per set."""
    out = []
    for name in cfg.references:
        pool = [i for i, r in enumerate(test_rows) if name == "all" or r["label"] == 1]
        what = "held-out reviews" if name == "all" else "held-out positive (label 1) reviews"
        if cfg.reference_size > len(pool):
            raise ValueError(
                f"params: {KEY}.reference_size: must be <= the {len(pool)} {what} of "
                f"reference set '{name}', got {cfg.reference_size}"
            )
        rng = np.random.default_rng([seed, len(out)])
        picked = np.sort(rng.choice(pool, cfg.reference_size, replace=False))
        for i in picked.tolist():
            text = cut_review(test_rows[i]["text"], prompt_words, tokenizer, max_new_tokens)
            out.append({"set": name, "review": i, "label": test_rows[i]["label"], "text": text})
    return out


def _max_length(model) -> int:
    config = model.config
    return min(512, getattr(config, "n_positions", None) or config.max_position_embeddings)


def load_space_model(space: str, cfg: QualityConfig, sft_dir: Path):
    """``(model, tokenizer)`` of a model-based space: the SFT policy (``hidden``) or the local
    encoder folder ``quality.encoder`` (``encoder``; a missing folder is a one-line error)."""
    if space == "hidden":
        from stages.lib.modeling import load_causal_lm

        return load_causal_lm(sft_dir)
    folder = Path(cfg.encoder)
    if not folder.is_dir():
        raise FileNotFoundError(f"params: {KEY}.encoder: folder {folder} not found")
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


class Spaces:
    """The fitted feature spaces and the reference sets' features and radii."""

    def __init__(self, arrays: dict, cfg: QualityConfig, sft_dir: Path):
        self.arrays, self.cfg, self.sft_dir = arrays, cfg, sft_dir
        self._models: dict = {}
        self.tfidf = (
            TfidfSvd.from_arrays(
                arrays["tfidf/terms"], arrays["tfidf/idf"], arrays["tfidf/components"]
            )
            if "tfidf" in cfg.features
            else None
        )

    @classmethod
    def read(cls, path: Path, cfg: QualityConfig, sft_dir: Path) -> Spaces:
        """Load ``data/quality/spaces.npz`` and assert it holds what ``cfg`` asks for."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: not found (run `dvc repro quality-reference`)")
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
        stale = "(built with other quality params: run `dvc repro quality-reference`)"
        for key, want in (
            ("k", [cfg.k]),
            ("features", list(cfg.features)),
            ("references", list(cfg.references)),
        ):
            if key not in arrays or arrays[key].tolist() != want:
                got = arrays[key].tolist() if key in arrays else "nothing"
                raise ValueError(f"{path}: {key} is {got}, params say {want} {stale}")
        for space in cfg.features:
            for ref in cfg.references:
                x, r = arrays.get(f"{space}/{ref}/features"), arrays.get(f"{space}/{ref}/radii")
                if x is None or r is None or x.ndim != 2 or r.shape != (len(x),):
                    raise ValueError(
                        f"{path}: {space}/{ref}: features [N, d] and radii [N] missing"
                    )
                if len(x) != cfg.reference_size:
                    raise ValueError(
                        f"{path}: {space}/{ref} has {len(x)} points, params say "
                        f"{cfg.reference_size} {stale}"
                    )
        return cls(arrays, cfg, sft_dir)

    def reference(self, space: str, ref: str) -> tuple[np.ndarray, np.ndarray]:
        """The reference set's features [N, d] and k-NN radii [N] in ``space``."""
        return self.arrays[f"{space}/{ref}/features"], self.arrays[f"{space}/{ref}/radii"]

    def embed(self, space: str, texts: Sequence[str]) -> np.ndarray:
        """``texts`` in ``space``: [len(texts), d] float64."""
        if space == "tfidf":
            return self.tfidf.transform(texts)
        if space not in self._models:
            self._models[space] = load_space_model(space, self.cfg, self.sft_dir)
        model, tokenizer = self._models[space]
        return mean_hidden_features(model, tokenizer, texts, max_length=_max_length(model))


def build_spaces(
    cfg: QualityConfig, rows: list[dict], fit_texts: Sequence[str], sft_dir: Path, seed: int
) -> dict[str, np.ndarray]:
    """The arrays of ``data/quality/spaces.npz`` (see the module docstring): the TF-IDF + SVD
    fitted on ``fit_texts`` (the train reviews), every reference set embedded in every space,
    and its k-NN radii."""
    arrays: dict[str, np.ndarray] = {
        "k": np.array([cfg.k]),
        "features": np.array(list(cfg.features), dtype=str),
        "references": np.array(list(cfg.references), dtype=str),
    }
    if "tfidf" in cfg.features:
        embed = TfidfSvd(cfg.tfidf_dim, seed).fit(fit_texts)
        arrays.update({f"tfidf/{k}": v for k, v in embed.arrays().items()})
    spaces = Spaces(arrays, cfg, sft_dir)
    for space in cfg.features:
        for ref in cfg.references:
            x = spaces.embed(space, [r["text"] for r in rows if r["set"] == ref])
            arrays[f"{space}/{ref}/features"], arrays[f"{space}/{ref}/radii"] = (
                x,
                knn_radii(x, cfg.k),
            )
    return arrays


def _indices(hit: np.ndarray) -> list[int]:
    return np.flatnonzero(hit).tolist()


def measure_run(
    spaces: Spaces,
    texts: Sequence[str],
    completions: Sequence[str],
    n_per_prompt: int,
    cfg: QualityConfig,
    seed: int,
) -> tuple[list[dict], dict]:
    """One run's samples (``texts``: prompt + completion, prompt-major, ``n_per_prompt`` a
    prompt) against every reference set in every space: the per-prompt ``quality`` fields
    (module docstring) and the metrics (:meth:`QualityConfig.metric_names`, rounded to 6
    decimals). Self-BLEU reads the ``completions`` alone (a prompt's samples share it); MAUVE
    and self-BLEU's subset are seeded by the run's seed."""
    m, n_prompts = cfg.measures, len(texts) // n_per_prompt
    if len(texts) != n_prompts * n_per_prompt or len(completions) != len(texts):
        raise ValueError(
            f"{len(texts)} texts, {len(completions)} completions: expected "
            f"{n_per_prompt} per prompt each"
        )
    fields = [{"k": cfg.k} for _ in range(n_prompts)]
    metrics: dict[str, float] = {}
    for space in cfg.features:
        samples = spaces.embed(space, texts)
        for ref in cfg.references:
            features, radii = spaces.reference(space, ref)
            if any(x in m for x in REFERENCE_MEASURES[:4]):
                hits = prdc_hits(features, samples, cfg.k, reference_radii=radii)
                values = hits.measures()
                for p in range(n_prompts):
                    sl = slice(p * n_per_prompt, (p + 1) * n_per_prompt)
                    fields[p][f"{space}/{ref}"] = {
                        "n_reference": len(features),
                        "inside": hits.inside[sl].tolist(),
                        "covers": _indices(hits.covers[:, sl].any(axis=1)),
                        "recalls": _indices(hits.recalls[:, sl].any(axis=1)),
                    }
                metrics.update({metric_name(x, space, ref): values[x] for x in values if x in m})
            if "mauve" in m:
                metrics[metric_name("mauve", space, ref)] = mauve_score(features, samples, seed)
        if "vendi" in m:
            metrics[metric_name("vendi", space)] = vendi_score(samples)
    if "self_bleu" in m:
        metrics["self_bleu"] = self_bleu(completions, max_texts=cfg.self_bleu_texts, seed=seed)
    order = cfg.metric_names()
    return fields, {k: round(float(metrics[k]), 6) for k in order if k in metrics}
