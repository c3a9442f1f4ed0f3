"""Quality and diversity as generative modelling measures them (§6a, issue #28): pure functions,
numpy in and out, no file I/O::

    from stages.lib.quality import quality_diversity, self_bleu
    m = quality_diversity(reference, samples, k=5, seed=0)   # features: [N, d] human, [M, d] policy
    m["precision"], m["recall"], m["density"], m["coverage"], m["mauve"], m["vendi"]
    self_bleu(sample_texts, max_texts=500, seed=0)           # 0..100, lexical, no features

``reference`` is always the real (held-out human) set and ``samples`` the policy's: precision
and density say whether the samples stay inside the human distribution (quality), recall and
coverage whether the policy still covers it (diversity). Swapping the two swaps precision with
recall. Vendi is the samples' own diversity; MAUVE compares the two distributions as a whole.
The features come from :mod:`stages.lib.quality_features`.

Packages: MAUVE from ``mauve-text`` (the authors' code, fed our features), Vendi from
``vendi-score`` (the authors'), BLEU from ``sacrebleu``. Precision/recall/density/coverage are
written here (a few lines of numpy, the definitions of Naeem et al.'s ``prdc`` package, which
the tests check them against): ``prdc`` 0.2 runs each distance matrix in an 8-thread pool and
prints on every call, 0.1-0.3 s per call on 2 cores against ~0.01 s here. Heavy imports happen
inside the functions. Bad settings raise a one-line ``ValueError`` naming the key of the
``quality`` params section (:class:`QualityConfig`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from stages.lib.config import param, positive_int

#: The params section the messages name.
KEY = "quality"
#: Measures computed from a feature space (one value per space), in report order.
FEATURE_MEASURES = ("precision", "recall", "density", "coverage", "mauve", "vendi")
#: Measures computed from the texts themselves (one value per run).
TEXT_MEASURES = ("self_bleu",)
MEASURES = FEATURE_MEASURES + TEXT_MEASURES
PRDC = ("precision", "recall", "density", "coverage")
#: Measures of the samples against a reference set (one value per space and reference).
REFERENCE_MEASURES = PRDC + ("mauve",)
#: ``tfidf``: TF-IDF + SVD fitted on the train reviews (independent of every model, the reward
#: model included); ``hidden``: the SFT policy's mean last hidden state; ``encoder``: the mean
#: last hidden state of a local encoder folder (``quality.encoder``, e.g. a sentence encoder).
FEATURE_SPACES = ("tfidf", "hidden", "encoder")
#: Reference sets of held-out human text: every test review, or the positive (label 1) ones.
REFERENCE_SETS = ("all", "positive")


def metric_name(measure: str, space: str | None = None, reference: str | None = None) -> str:
    """The metric key of a measure: ``<measure>_<space>_<reference>`` (precision, recall,
    density, coverage, mauve), ``vendi_<space>`` (the samples alone) or ``self_bleu``."""
    return "_".join(p for p in (measure, space, reference) if p)


@dataclass(frozen=True)
class QualityConfig:
    """``quality``: the quality–diversity measures of every evaluate run against held-out
    human reviews (reference sets built once by the quality-reference stage)."""

    measures: list[str] = param(
        "measures to compute",
        MEASURES,
        check=lambda v: bool(check_measures(v)) or True,
    )
    features: list[str] = param(
        "feature spaces", ("tfidf", "hidden"), check=lambda v: bool(check_feature_spaces(v)) or True
    )
    references: list[str] = param(
        "reference sets", REFERENCE_SETS, check=lambda v: bool(check_references(v)) or True
    )
    reference_size: int = param("reviews per reference set", 400, check=positive_int, must=">= 1")
    k: int = param("nearest neighbours of the k-NN balls", 5, check=positive_int, must=">= 1")
    tfidf_dim: int = param("SVD dimensions of the tfidf space", 64, check=positive_int, must=">= 1")
    tfidf_fit_texts: int | None = param(
        "train reviews the tfidf space is fitted on (null = all)",
        None,
        check=positive_int,
        must="null or >= 1",
    )
    self_bleu_texts: int = param(
        "samples scored by self-BLEU (a seeded subset)", 400, check=lambda v: v >= 2, must=">= 2"
    )
    encoder: str | None = param("local encoder folder of the encoder space", None)

    def __post_init__(self):
        if len(self.measures) != len(set(self.measures)):
            raise ValueError(f"params: {KEY}.measures: repeats a measure: {self.measures!r}")
        if not self.measures:
            return
        if not self.features and any(m in FEATURE_MEASURES for m in self.measures):
            raise ValueError(f"params: {KEY}.features: empty, but measures need a feature space")
        if not self.references and any(m in REFERENCE_MEASURES for m in self.measures):
            raise ValueError(f"params: {KEY}.references: empty, but measures need a reference")
        if "encoder" in self.features and not self.encoder:
            raise ValueError(
                f"params: {KEY}.encoder: is null, but features lists 'encoder' (give a local "
                f"encoder folder)"
            )
        if self.reference_size <= self.k:
            raise ValueError(
                f"params: {KEY}.k: must be < reference_size ({self.reference_size}), got {self.k}"
            )

    def metric_names(self) -> list[str]:
        """Every metric key a run reports (:func:`metric_name`), in report order."""
        out = []
        for space in self.features:
            for ref in self.references:
                out += [
                    metric_name(m, space, ref) for m in self.measures if m in REFERENCE_MEASURES
                ]
            if "vendi" in self.measures:
                out.append(metric_name("vendi", space))
        return out + (["self_bleu"] if "self_bleu" in self.measures else [])


def _names(values, known: Sequence[str], key: str, what: str) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise ValueError(f"params: {KEY}.{key}: must be a list of {what}s, got {values!r}")
    out = tuple(dict.fromkeys(values))
    for name in out:
        if name not in known:
            raise ValueError(
                f"params: {KEY}.{key}: unknown {what} {name!r} (known: {', '.join(known)})"
            )
    return out


def check_measures(measures) -> tuple[str, ...]:
    """``evaluate.quality.measures`` without duplicates, each one of :data:`MEASURES`."""
    return _names(measures, MEASURES, "measures", "measure")


def check_feature_spaces(features) -> tuple[str, ...]:
    """``evaluate.quality.features`` without duplicates, each one of :data:`FEATURE_SPACES`."""
    return _names(features, FEATURE_SPACES, "features", "feature space")


def check_references(references) -> tuple[str, ...]:
    """``quality.references`` without duplicates, each one of :data:`REFERENCE_SETS`."""
    return _names(references, REFERENCE_SETS, "references", "reference set")


def check_k(k, n_reference: int, n_samples: int) -> int:
    """k of the k-nearest-neighbour balls: an integer >= 1 and < both set sizes (a point's
    k-th neighbour other than itself must exist)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"params: {KEY}.k: must be an integer >= 1, got {k!r}")
    if k >= n_reference:
        raise ValueError(
            f"params: {KEY}.k: must be < the reference set's size ({n_reference}), got {k}"
        )
    if k >= n_samples:
        raise ValueError(f"params: {KEY}.k: must be < the number of samples ({n_samples}), got {k}")
    return int(k)


def check_reference_size(size, available: int, k: int, what: str = "held-out reviews") -> int:
    """``evaluate.quality.reference_size``: an integer > k and <= the ``available`` texts."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= k:
        raise ValueError(
            f"params: {KEY}.reference_size: must be an integer > k ({k}), got {size!r}"
        )
    if size > available:
        raise ValueError(
            f"params: {KEY}.reference_size: must be <= the {available} {what}, got {size}"
        )
    return int(size)


def _features(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name}: must be a non-empty [n, d] array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: has non-finite values")
    return x


def _pair(reference, samples) -> tuple[np.ndarray, np.ndarray]:
    reference, samples = _features(reference, "reference"), _features(samples, "samples")
    if reference.shape[1] != samples.shape[1]:
        raise ValueError(
            f"reference and samples: feature widths differ ({reference.shape[1]} vs "
            f"{samples.shape[1]}): embed both in the same space"
        )
    return reference, samples


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
    """Each point's Euclidean distance to its k-th nearest neighbour other than itself
    (the radius of its k-NN ball); cache it with the reference set."""
    from scipy.spatial.distance import cdist

    return np.partition(cdist(features, features), k, axis=1)[:, k]


@dataclass
class Hits:
    """Which k-NN balls hold which points, the parts of :func:`prdc_measures` (N reference
    points X_i, M samples Y_j): ``inside[j]`` the number of reference balls B(X_i, NND_k(X_i))
    that hold Y_j; ``covers[i, j]`` whether Y_j is in X_i's ball; ``recalls[i, j]`` whether X_i
    is in Y_j's ball B(Y_j, NND_k(Y_j)). Grouped by prompt, coverage and recall can be
    bootstrapped over prompts (a prompt's samples cover a set of reference balls)."""

    k: int
    inside: np.ndarray  # [M] int
    covers: np.ndarray  # [N, M] bool
    recalls: np.ndarray  # [N, M] bool

    def measures(self) -> dict[str, float]:
        """Precision, recall, density and coverage (see :func:`prdc_measures`)."""
        return {
            "precision": float((self.inside > 0).mean()),
            "recall": float(self.recalls.any(axis=1).mean()),
            "density": float(self.inside.mean() / self.k),
            "coverage": float(self.covers.any(axis=1).mean()),
        }


def prdc_hits(reference, samples, k: int, reference_radii=None) -> Hits:
    """The :class:`Hits` of ``samples`` against ``reference`` (``reference_radii``: the
    reference's :func:`knn_radii` for this ``k`` when cached, else computed)."""
    from scipy.spatial.distance import cdist

    reference, samples = _pair(reference, samples)
    k = check_k(k, len(reference), len(samples))
    real = knn_radii(reference, k) if reference_radii is None else np.asarray(reference_radii)
    if real.shape != (len(reference),):
        raise ValueError(f"reference_radii: shape {real.shape}, expected ({len(reference)},)")
    dist = cdist(reference, samples)  # [N, M]
    covers = dist < real[:, None]
    return Hits(k, covers.sum(axis=0), covers, dist < knn_radii(samples, k)[None, :])


def prdc_measures(reference, samples, k: int) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) and density and coverage
    (Naeem et al. 2020) of ``samples`` (policy, Y_1..Y_M) against ``reference`` (real, X_1..X_N),
    with B(x, r) the open ball and NND_k the distance to the k-th nearest neighbour within a
    point's own set, exactly as the authors' ``prdc`` package computes them:

    - precision = 1/M Σ_j 1[∃i: Y_j ∈ B(X_i, NND_k(X_i))]   samples inside the real manifold;
    - recall    = 1/N Σ_i 1[∃j: X_i ∈ B(Y_j, NND_k(Y_j))]   real points inside the samples';
    - density   = 1/(kM) Σ_j Σ_i 1[Y_j ∈ B(X_i, NND_k(X_i))]   (can exceed 1);
    - coverage  = 1/N Σ_i 1[∃j: Y_j ∈ B(X_i, NND_k(X_i))]   real balls holding a sample.

    Identical sets give 1 for all four (density exactly 1 without distance ties)."""
    return prdc_hits(reference, samples, k).measures()


def mauve_score(
    reference,
    samples,
    seed: int,
    num_buckets: int | str = "auto",
    kmeans_num_redo: int = 5,
    kmeans_max_iter: int = 500,
    scaling: float = 5.0,
) -> float:
    """MAUVE (Pillutla et al. 2021) of ``samples`` against ``reference`` with the authors'
    ``mauve-text`` on our features (nothing downloaded): the joint set is L2-normalised, reduced
    by PCA to 90% of its variance and quantised by k-means into ``num_buckets`` clusters
    (``auto``: a tenth of the smaller set); with P, Q the two histograms and R_λ = λP + (1-λ)Q,
    MAUVE is the area under the divergence curve (exp(-c KL(Q|R_λ)), exp(-c KL(P|R_λ))),
    c = ``scaling``. 1 for identical sets, near 0 for disjoint ones; symmetric in P and Q (up to
    the k-means, which sees the joint set in another order).
    BLAS and OpenMP run on one thread meanwhile (``threadpoolctl``, restored after): on a busy
    2-core machine faiss's and numpy's thread pools, each sized to every core, fight and make a
    ~0.03 s call take 0.2-3 s; the result is the same. Deterministic given ``seed``."""
    from mauve import compute_mauve
    from threadpoolctl import threadpool_limits

    reference, samples = _pair(reference, samples)
    with threadpool_limits(limits=1):
        out = compute_mauve(
            p_features=reference,
            q_features=samples,
            num_buckets=num_buckets,
            kmeans_num_redo=kmeans_num_redo,
            kmeans_max_iter=kmeans_max_iter,
            mauve_scaling_factor=scaling,
            seed=seed,
            verbose=False,
        )
    return float(out.mauve)


def vendi_score(features) -> float:
    """The Vendi score (Friedman & Dieng 2023) with the cosine-similarity kernel: exp of the
    Shannon entropy of the eigenvalues of K/n, K_ij = <x_i, x_j> of the L2-normalised rows,
    the effective number of distinct samples (1 for n copies of one sample, n for n orthogonal
    ones). The authors' ``vendi_score.score_dual`` (the d × d form, same eigenvalues)."""
    from threadpoolctl import threadpool_limits
    from vendi_score.vendi import score_dual

    features = _features(features, "features")
    with threadpool_limits(limits=1):  # a d × d eigenproblem: threads only add contention
        return float(score_dual(features, q=1, normalize=True))


def self_bleu(texts: Sequence[str], max_texts: int = 500, seed: int = 0) -> float:
    """Self-BLEU (Zhu et al. 2018, Texygen), 0..100: the mean over texts of each text's
    sentence BLEU against all the others as references, as ``sacrebleu.sentence_bleu`` scores
    it (13a tokens, exp smoothing, effective order; multi-reference clipping, closest reference
    length). 100 when all texts are equal, 0 when no two share a word; lower is more diverse.
    When there are more than ``max_texts`` texts, a seeded subset of that size is scored.

    The leave-one-out statistics are sacrebleu's, gathered in O(total n-grams) instead of
    sacrebleu's O(n²) re-tokenisation (17 s for 200 reviews): per n-gram the two highest counts
    give the clipping count against all texts but one."""
    from sacrebleu.metrics.bleu import BLEU
    from sacrebleu.metrics.helpers import extract_all_word_ngrams

    texts = list(texts)
    if len(texts) < 2:
        raise ValueError(f"self-BLEU needs >= 2 texts, got {len(texts)}")
    if len(texts) > max_texts:
        keep = np.sort(np.random.default_rng(seed).choice(len(texts), max_texts, replace=False))
        texts = [texts[i] for i in keep]
    metric = BLEU(effective_order=True)
    order = metric.max_ngram_order
    grams, lengths = zip(
        *(extract_all_word_ngrams(metric.tokenizer(t.rstrip()), 1, order) for t in texts)
    )
    best: dict[tuple, list] = {}  # n-gram -> [highest count, its text, second highest count]
    for i, counts in enumerate(grams):
        for gram, c in counts.items():
            top = best.setdefault(gram, [0, -1, 0])
            if c > top[0]:
                top[:] = [c, i, top[0]]
            elif c > top[2]:
                top[2] = c
    lengths = np.asarray(lengths)
    scores = []
    for i, counts in enumerate(grams):
        others = np.delete(lengths, i)
        diff = np.abs(others - lengths[i])
        ref_len = int(others[diff == diff.min()].min())  # closest, the shorter on a tie
        correct, total = [0] * order, [0] * order
        for gram, c in counts.items():
            top = best[gram]
            total[len(gram) - 1] += c
            correct[len(gram) - 1] += min(c, top[2] if top[1] == i else top[0])
        score = BLEU.compute_bleu(
            correct,
            total,
            int(lengths[i]),
            ref_len,
            smooth_method=metric.smooth_method,
            smooth_value=metric.smooth_value,
            effective_order=True,
            max_ngram_order=order,
        )
        scores.append(score.score)
    return float(np.mean(scores))


def quality_diversity(
    reference, samples, k: int, seed: int, measures: Sequence[str] = FEATURE_MEASURES
) -> dict[str, float]:
    """The feature-space measures named in ``measures`` of the policy's ``samples`` [M, d]
    against the human ``reference`` [N, d] (same feature space), in :data:`FEATURE_MEASURES`
    order: precision, recall, density, coverage (k-NN balls, ``k``), MAUVE (``seed``), Vendi
    (of the samples alone). Every name is checked against :data:`MEASURES` first; text
    measures (``self_bleu``) are left to :func:`self_bleu`, once per run, not per space."""
    measures = check_measures(measures)
    reference, samples = _pair(reference, samples)
    if any(m in PRDC for m in measures):
        check_k(k, len(reference), len(samples))
    out: dict[str, float] = {}
    if any(m in PRDC for m in measures):
        out.update(prdc_measures(reference, samples, k))
    if "mauve" in measures:
        out["mauve"] = mauve_score(reference, samples, seed)
    if "vendi" in measures:
        out["vendi"] = vendi_score(samples)
    return {m: out[m] for m in FEATURE_MEASURES if m in measures}
