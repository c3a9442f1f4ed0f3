"""Feature spaces for the quality–diversity measures of :mod:`stages.lib.quality` (§6a): texts
in, one float64 row per text out, nothing downloaded and nothing written::

    embed = TfidfSvd(dim=64, seed=0).fit(train_texts)       # once per profile: cache it
    ref, smp = embed.transform(reference_texts), embed.transform(sample_texts)
    smp = mean_hidden_features(sft_model, tokenizer, sample_texts)   # the SFT policy's view

``tfidf`` is independent of every model (the reward model included); ``hidden`` is the SFT
policy's mean last hidden state. Heavy imports (scikit-learn, torch) happen inside the
functions, so importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stages.lib.quality import KEY


class TfidfSvd:
    """TF-IDF + truncated SVD (latent semantic analysis, Deerwester et al. 1990), the rows
    L2-normalised (so Euclidean distance is a monotone function of cosine similarity).

    :meth:`fit` learns the vocabulary, the idf weights and the SVD basis from ``fit`` texts
    only (the train reviews); :meth:`transform` applies them to any texts: a term never seen in
    the fit texts is ignored, and a text with no known term is the zero vector. Sublinear tf
    (1 + log tf), the usual choice for documents of uneven length. Deterministic given ``seed``
    (randomised SVD with a fixed ``random_state``, signs fixed by scikit-learn's ``svd_flip``).
    The fitted object pickles, so a stage can cache it once per profile."""

    def __init__(self, dim: int, seed: int):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"params: {KEY}.tfidf_dim: must be an integer >= 1, got {dim!r}")
        self.dim, self.seed = dim, seed
        self.vectorizer = self.components = None

    def fit(self, texts: Sequence[str]) -> TfidfSvd:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(sublinear_tf=True, dtype=np.float64)
        tfidf = vectorizer.fit_transform(list(texts))
        limit = min(tfidf.shape)
        if self.dim >= limit:
            raise ValueError(
                f"params: {KEY}.tfidf_dim: must be < min(fit texts, terms) = "
                f"min({tfidf.shape[0]}, {tfidf.shape[1]}) = {limit}, got {self.dim}"
            )
        svd = TruncatedSVD(n_components=self.dim, algorithm="randomized", random_state=self.seed)
        svd.fit(tfidf)
        self.vectorizer, self.components = vectorizer, np.asarray(svd.components_, np.float64)
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), dim]`` float64, unit rows (zero rows for texts with no known term):
        the TF-IDF rows projected on the SVD basis (TruncatedSVD.transform), L2-normalised."""
        if self.components is None:
            raise RuntimeError("TfidfSvd.transform before fit")
        from sklearn.preprocessing import normalize

        z = self.vectorizer.transform(list(texts)) @ self.components.T
        return normalize(np.asarray(z, dtype=np.float64), norm="l2", axis=1)

    def arrays(self) -> dict[str, np.ndarray]:
        """What :meth:`from_arrays` needs (terms in column order, idf weights, SVD basis):
        numpy arrays a stage can save with ``np.savez`` instead of a pickle."""
        if self.components is None:
            raise RuntimeError("TfidfSvd.arrays before fit")
        terms = self.vectorizer.get_feature_names_out().astype(str)
        return {"terms": terms, "idf": self.vectorizer.idf_, "components": self.components}

    @classmethod
    def from_arrays(cls, terms, idf, components, seed: int = 0) -> TfidfSvd:
        """The fitted space back from :meth:`arrays` (same transform, bit for bit)."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        components = np.asarray(components, dtype=np.float64)
        embed = cls(int(components.shape[0]), seed)
        vectorizer = TfidfVectorizer(
            vocabulary=[str(t) for t in terms], sublinear_tf=True, dtype=np.float64
        )
        vectorizer.idf_ = np.asarray(idf, dtype=np.float64)
        embed.vectorizer, embed.components = vectorizer, components
        return embed


def tfidf_svd_features(
    fit_texts: Sequence[str], texts_list: Sequence[Sequence[str]], dim: int, seed: int
) -> list[np.ndarray]:
    """Fit :class:`TfidfSvd` on ``fit_texts`` once and embed each text set of ``texts_list``
    (``[len(texts), dim]`` float64 each, unit rows)."""
    embed = TfidfSvd(dim, seed).fit(fit_texts)
    return [embed.transform(texts) for texts in texts_list]


def mean_hidden_features(
    model, tokenizer, texts: Sequence[str], batch_size: int = 32, max_length: int = 512
) -> np.ndarray:
    """A language model's mean last hidden state over each text's tokens: ``[len(texts),
    hidden]`` float64 (the same pooling as sentence encoders' mean pooling; MAUVE's authors use
    the last token's state of GPT-2 large instead, which a tiny model makes noisy).

    ``model`` is a causal LM (or its base model): its ``base_model`` gives the last hidden
    state, the LM head is skipped. Texts are cut at ``max_length`` tokens, sorted by length
    into batches and right-padded; the mean is over the attention mask, so a text's features
    do not depend on which texts share its batch. An empty text is pooled over one EOS token.
    Runs on the model's device under ``torch.inference_mode`` in eval mode (restored after):
    deterministic."""
    import torch

    texts = list(texts)
    body = model.base_model
    width = model.config.hidden_size
    if not texts:
        return np.zeros((0, width))
    device = next(model.parameters()).device
    filler = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    ids = [row or [filler] for row in ids]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.empty((len(ids), width), dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                longest = max(len(ids[i]) for i in idx)
                input_ids = torch.full((len(idx), longest), filler, dtype=torch.long)
                mask = torch.zeros((len(idx), longest), dtype=torch.long)
                for row, i in enumerate(idx):
                    input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                    mask[row, : len(ids[i])] = 1
                hidden = body(
                    input_ids=input_ids.to(device), attention_mask=mask.to(device)
                ).last_hidden_state
                weights = mask.to(device=device, dtype=torch.float64).unsqueeze(-1)
                pooled = (hidden.double() * weights).sum(1) / weights.sum(1)
                out[idx] = pooled.cpu().numpy()
    finally:
        model.train(was_training)
    return out
