"""Beyond-accuracy metrics of top-K lists: diversity, novelty, calibration, exposure.

Each is computed from the lists a full-ranking evaluation already produces (``top``,
(B, K) item indices best first, 0 = an empty slot), for every cut-off K:

- ``ild@K`` (intra-list diversity): the mean dissimilarity, 1 - similarity, over the
  unordered pairs of the list's items. Similarity is the Jaccard index of the genre sets
  when the items have genres, else the cosine of the model's item embeddings. A list of
  fewer than 2 items scores 0; not defined for K = 1.
- ``novelty@K``: the mean self-information -log2(p_i) of the list's items, p_i the share
  of training users who consumed item i (at least 1 event, at most all users).
- ``calibration_kl@K`` (genres only): Steck's (RecSys 2018) KL(p_u || (1 - a) q + a p_u)
  of the list's genre distribution q from the user's history's p_u; 0 for a user whose
  history has no genre.
- ``exposure_gini@K``: one number per evaluation, the Gini coefficient of how often each
  catalogue item appears in the lists (0: every item shown equally; near 1: a few items
  take all the exposure).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recsys.allocation.features import ItemFeatures, kl_to_list
from recsys.evaluation.metrics import bootstrap_ci

# History columns turned into (B, block, G) genre weights at once, so that memory stays
# bounded for users with very long histories.
HISTORY_BLOCK = 256


def _first(top: torch.Tensor, k: int) -> torch.Tensor:
    """The first ``k`` columns of lists ``top`` (B, L); empty slots (0) added where L < k
    (a catalogue smaller than K gives shorter lists)."""
    if top.shape[1] >= k:
        return top[:, :k]
    return torch.nn.functional.pad(top, (0, k - top.shape[1]))


def pairwise_similarity(top: torch.Tensor, features: ItemFeatures) -> torch.Tensor:
    """(B, K, K) similarity of every two items of each list (B, K).

    Jaccard of the genre sets when ``features`` has genres (0 where neither item has a
    genre, as :meth:`ItemFeatures.similarity`), else the cosine of the unit-length item
    vectors. Entries involving an empty slot (item 0) are meaningless; callers mask them.
    """
    if features.has_genres:
        assert features.genres is not None
        g = features.genres[top]  # (B, K, G) 0/1
        # Batched products keep memory at (B, K, K) rather than (B, K, K, G).
        inter = g @ g.transpose(1, 2)  # (B, K, K) shared genres
        size = g.sum(-1)  # (B, K)
        union = size[:, :, None] + size[:, None, :] - inter
        return torch.where(union > 0, inter / union.clamp_min(1.0), torch.zeros_like(inter))
    v = features.vectors[top]  # (B, K, d), row 0 zero
    return v @ v.transpose(1, 2)


def intra_list_diversity(
    top: torch.Tensor, features: ItemFeatures, ks: tuple[int, ...]
) -> dict[int, np.ndarray]:
    """``{K: (B,) ILD@K}`` for each K in ``ks`` (K >= 2) of the lists ``top`` (B, L).

    The mean of 1 - similarity (see :func:`pairwise_similarity`) over the unordered pairs
    of non-empty items among the first K; 0 for a list with fewer than 2 items.
    """
    max_k = max(ks)
    items = _first(top, max_k)
    sim = pairwise_similarity(items, features).double()  # (B, K, K)
    real = items > 0  # (B, K)
    # Pairs i < j of real items: the upper triangle, each unordered pair once.
    upper = torch.ones(max_k, max_k, dtype=torch.bool).triu(1)
    pair = real[:, :, None] & real[:, None, :] & upper  # (B, K, K)
    dist = torch.where(pair, 1.0 - sim, 0.0)
    out = {}
    for k in ks:
        n_pairs = pair[:, :k, :k].sum((1, 2))
        total = dist[:, :k, :k].sum((1, 2))
        ild = torch.where(n_pairs > 0, total / n_pairs.clamp_min(1), 0.0)
        out[k] = ild.numpy()
    return out


def self_information(item_counts: np.ndarray, num_users: int) -> torch.Tensor:
    """(I + 1,) -log2(p_i) with p_i = max(count_i, 1) / num_users, at most 1 (0 at row 0).

    ``item_counts`` are training events per item (row 0 = padding); ``num_users`` those
    with at least one training event. An item never seen in training counts as seen once,
    so that its novelty is large but finite; repeat consumption may push a count above
    the users, hence the clip at 1 (novelty 0).
    """
    p = np.maximum(item_counts.astype(np.float64), 1.0) / max(num_users, 1)
    bits = -np.log2(np.minimum(p, 1.0))
    bits[0] = 0.0  # padding, never counted
    return torch.from_numpy(bits)


def novelty(top: torch.Tensor, info: torch.Tensor, ks: tuple[int, ...]) -> dict[int, np.ndarray]:
    """``{K: (B,) novelty@K}``: the mean of ``info`` (see :func:`self_information`) over
    the non-empty items among the first K of each list ``top`` (B, L); 0 for an
    empty list."""
    items = _first(top, max(ks))
    real = items > 0
    bits = torch.where(real, info[items], 0.0)
    # Prefix sums give every cut-off in one pass.
    total, count = bits.cumsum(1), real.cumsum(1)  # (B, K)
    out = {}
    for k in ks:
        n = count[:, k - 1]
        out[k] = torch.where(n > 0, total[:, k - 1] / n.clamp_min(1), 0.0).numpy()
    return out


def history_genres(history: torch.Tensor, features: ItemFeatures) -> torch.Tensor:
    """(B, G) genre distribution p_u of whole histories (B, H) (0 = none), as
    :meth:`ItemFeatures.genre_distribution`, read ``HISTORY_BLOCK`` columns at a time."""
    assert features.genres is not None, "no genres"
    has_genre = features.genres.sum(-1) > 0  # (I + 1,)
    total = torch.zeros(history.shape[0], len(features.genre_names), dtype=torch.float64)
    for lo in range(0, history.shape[1], HISTORY_BLOCK):
        block = history[:, lo : lo + HISTORY_BLOCK]
        # Each item with a genre spreads weight 1 over its genres, so a block's
        # distribution times its number of such items is its unnormalised sum.
        n = has_genre[block].sum(1, keepdim=True)  # (B, 1)
        total += features.genre_distribution(block).double() * n
    return total / total.sum(-1, keepdim=True).clamp_min(1e-12)


def calibration_kl(
    top: torch.Tensor, p_user: torch.Tensor, features: ItemFeatures, ks: tuple[int, ...]
) -> dict[int, np.ndarray]:
    """``{K: (B,) calibration_kl@K}``: :func:`kl_to_list` of the genre distribution of the
    first K items of each list ``top`` (B, L) from the user's ``p_user`` (B, G)
    (see :func:`history_genres`); 0 where ``p_user`` is all zero (no genre in the history).
    """
    out = {}
    for k in ks:
        q = features.genre_distribution(_first(top, k)).double()
        out[k] = kl_to_list(p_user, q).numpy()
    return out


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative ``counts`` (n,): with x_1 <= ... <= x_n sorted,
    sum_i (2i - n - 1) x_i / (n sum x); 0 if all are 0.

    Examples
    --------
    ``gini([0, 0, 5]) == 2/3``, ``gini([1, 1, 1]) == 0``.
    """
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * x).sum() / (n * total))


@dataclass
class BeyondResult:
    """Means (``ild@10`` ...), their 95% CIs and the per-user columns (``ild_at_10`` ...)."""

    means: dict[str, float]
    ci: dict[str, tuple[float, float]]
    per_user: dict[str, np.ndarray]


class BeyondAccuracy:
    """Accumulates the beyond-accuracy metrics over an evaluation's chunks of users.

    Parameters
    ----------
    features : ItemFeatures
        Genres (if any) and item vectors of the catalogue.
    item_counts : ndarray
        (I + 1,) training events per item (``SequenceData.item_counts()``).
    num_users : int
        Users with at least one training event (the denominator of popularity).
    ks : tuple of int
        The cut-offs; ``ild`` skips K = 1 (a list of one item has no pair).
    """

    def __init__(
        self,
        features: ItemFeatures,
        item_counts: np.ndarray,
        num_users: int,
        ks: tuple[int, ...],
    ):
        if len(item_counts) != features.num_items + 1:
            raise ValueError(
                f"item_counts has {len(item_counts) - 1} items, features {features.num_items}"
            )
        self.features = features
        self.ks = tuple(sorted(ks))
        self.ild_ks = tuple(k for k in self.ks if k >= 2)
        self.info = self_information(item_counts, num_users)
        self.exposure = {k: np.zeros(features.num_items + 1, dtype=np.int64) for k in self.ks}
        self._parts: dict[str, list[np.ndarray]] = {name: [] for name in self._names()}

    def _names(self) -> list[str]:
        names = [f"ild@{k}" for k in self.ild_ks] + [f"novelty@{k}" for k in self.ks]
        if self.features.has_genres:
            names += [f"calibration_kl@{k}" for k in self.ks]
        return names

    def add(self, top: torch.Tensor, history: torch.Tensor) -> None:
        """Add a chunk of users: their top lists (B, L) (0 = empty slot) and whole
        input histories (B, H) (0 = padding), both on the CPU."""
        top, history = top.cpu(), history.cpu()
        values: dict[str, np.ndarray] = {}
        if self.ild_ks:
            for k, v in intra_list_diversity(top, self.features, self.ild_ks).items():
                values[f"ild@{k}"] = v
        for k, v in novelty(top, self.info, self.ks).items():
            values[f"novelty@{k}"] = v
        if self.features.has_genres:
            p_user = history_genres(history, self.features)
            for k, v in calibration_kl(top, p_user, self.features, self.ks).items():
                values[f"calibration_kl@{k}"] = v
        for name, v in values.items():
            self._parts[name].append(v)
        for k in self.ks:
            self.exposure[k] += np.bincount(
                top[:, :k].numpy().ravel(), minlength=self.features.num_items + 1
            )

    def result(self, bootstrap: int = 1000, seed: int = 0) -> BeyondResult:
        """Means and (``bootstrap`` > 0) 95% bootstrap CIs of the per-user metrics, the
        per-user columns, and ``exposure_gini@K`` over items 1..I (a mean, no CI)."""
        values = {name: np.concatenate(parts) for name, parts in self._parts.items() if parts}
        means = {name: float(v.mean()) for name, v in values.items()}
        ci = {}
        if bootstrap > 0:
            ci = {name: bootstrap_ci(v, bootstrap, seed=seed) for name, v in values.items()}
        for k in self.ks:
            # Slot value 0 is an empty slot, not an item: left out of the exposure.
            means[f"exposure_gini@{k}"] = gini(self.exposure[k][1:])
        per_user = {name.replace("@", "_at_"): v for name, v in values.items()}
        return BeyondResult(means=means, ci=ci, per_user=per_user)
