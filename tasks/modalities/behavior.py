"""Behavior modality: collaborative filtering on the user×item interaction matrix.

Three model families, all behind the `Modality` protocol (`name = "behavior"`):

- `EaseModel` — closed-form linear item×item autoencoder (Steck 2019), the strongest model when
  the catalog is small enough for a dense item×item inverse; large catalogs are capped to the
  most-interacted items, the tail gets `-inf` (other modalities serve it).
- `AlsModel` — implicit-feedback matrix factorisation (Hu, Koren & Volinsky 2008) solved with a few
  conjugate-gradient steps per row and sweep (`als_solver`, compiled); memory is O((users+items) ×
  factors), so it is the choice when EASE does not fit.
- `ItemKnnModel` — item-kNN with cosine / asymmetric cosine (with shrinkage), Euclidean or
  Manhattan similarity (1/(1+d), optionally on unit-normalised item vectors); similarities are
  computed sparsely over co-interacted pairs, a block of items at a time, and only the top-k
  neighbours per item are kept.

`make_behavior(BehaviorParams())` builds one; defaults are the choices tuned on the Last.fm inner
split by `benchmarks/tune_behavior.py`. `score_block` is one matmul per block of users; users
with no history get all -inf (other modalities serve them).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, Field
from scipy.linalg import lapack

from tasks.data.dataset import Dataset
from tasks.kernels.als import cg_half_sweep
from tasks.kernels.blocks import SubsetScorer, block_array, parallel_chunks, single_threaded_blas
from tasks.kernels.ease import weights_from_inverse
from tasks.kernels.sparse import scores_on_columns, sparse_gram
from tasks.modalities.base import Modality
from tasks.parameter_rules import PARAMETER_CONFIG

InputWeighting = Literal["binary", "confidence"]
Similarity = Literal["cosine", "asymmetric_cosine", "euclidean", "manhattan"]
Algorithm = Literal["auto", "ease", "als", "itemknn"]

NEG_INF = np.float32(-np.inf)


class BehaviorParams(BaseModel):
    """Hyperparameters of the behavior modality.

    Defaults are the per-family choices on the Last.fm inner validation split
    (`benchmarks/tune_behavior.py`). ALS beat EASE and item-kNN there (NDCG@10 0.182 vs 0.169 and
    0.170), scales to any catalog and fits in seconds, so it is the default algorithm. 64 factors:
    128 are marginally better on Last.fm (validation 0.183 vs 0.180, test 0.249 vs 0.245) but
    double fit and scoring time, which at 100k users × 20k items broke the speed budget
    (`benchmarks/bench_modalities.py`); set `factors` higher when the night is long enough.
    Confidence inputs are rescaled to mean 1, so λ / alpha / shrink carry over to other event
    weights.
    """

    model_config = PARAMETER_CONFIG

    algorithm: Algorithm = Field(
        default="als",
        description="Model family. 'auto' = EASE when the active catalog fits max_items_for_ease "
        "(or the capped catalog still holds ease_min_coverage of the interactions), else ALS.",
    )
    # EASE
    l2: float = Field(default=100.0, gt=0, description="EASE ridge penalty λ on item weights.")
    max_items_for_ease: int = Field(
        default=6000, gt=0,
        description="EASE models at most this many most-interacted items (dense m×m inverse); "
        "the rest score -inf. 3000 was 4× faster at −0.001 NDCG on Last.fm.",
    )
    ease_min_coverage: float = Field(
        default=0.8, ge=0, le=1,
        description="'auto' keeps (capped) EASE while its items hold this share of interactions.",
    )
    ease_input: InputWeighting = Field(
        default="confidence", description="EASE input: 0/1 or mean-1 confidence (measured best)."
    )
    # ALS
    factors: int = Field(
        default=64, gt=0,
        description="ALS latent dimension; fit and scoring time grow linearly with it.",
    )
    iterations: int = Field(default=15, gt=0, description="ALS alternating sweeps.")
    als_regularization: float = Field(
        default=75.0, ge=0,
        description="ALS L2 penalty on factors; quality depends on its ratio to alpha (best ≈ 5).",
    )
    als_alpha: float = Field(
        default=15.0, ge=0, description="ALS confidence c = 1 + alpha·r on observed interactions."
    )
    als_input: InputWeighting = Field(
        default="confidence", description="ALS r: 0/1 or mean-1 confidence (measured best)."
    )
    cg_steps: int = Field(
        default=3, gt=0, description="Conjugate-gradient steps per ALS half-sweep (warm start)."
    )
    seed: int = Field(
        default=7, ge=0, description="Random seed of the ALS initialisation (>= 0, as NumPy needs)."
    )
    # item-kNN
    similarity: Similarity = Field(
        default="cosine", description="item-kNN similarity; distances d become 1/(1+d)."
    )
    neighbors: int = Field(default=800, gt=0, description="item-kNN: neighbours kept per item.")
    shrink: float = Field(
        default=2.0, ge=0, description="item-kNN: shrinkage added to (asym.) cosine denominators."
    )
    asymmetric_alpha: float = Field(
        default=0.5, ge=0, le=1,
        description="Asymmetric cosine: dot / (|i|^(2a) |j|^(2(1-a))); 0.5 = cosine.",
    )
    knn_normalize: bool = Field(
        default=False,
        description="item-kNN: unit-normalise item vectors first (L1 for Manhattan, else L2); "
        "needed for useful Euclidean/Manhattan neighbours, which otherwise track popularity.",
    )
    knn_input: InputWeighting = Field(
        default="confidence", description="item-kNN input: 0/1 or mean-1 confidence."
    )


def _prepare(matrix: sp.csr_matrix, weighting: InputWeighting) -> sp.csr_matrix:
    """Interactions as float32 CSR: 0/1, or confidence rescaled to a mean of 1.

    The rescaling makes λ, alpha and shrink mean the same for both inputs and for any event
    weights / value transform (on Last.fm log1p play counts average 5.5, which would otherwise
    shift EASE's best λ by 30×).
    """
    x = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    x.sum_duplicates()
    x.sort_indices()
    if weighting == "binary":
        x.data = np.ones_like(x.data)
    elif x.nnz:
        mean = float(np.mean(x.data, dtype=np.float64))
        if mean > 0:
            x.data /= np.float32(mean)
    return x


def _empty_rows_to_neg_inf(scores: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
    """Users with no usable history get all -inf: this modality has no evidence for them."""
    scores[np.diff(history.indptr) == 0] = NEG_INF
    return scores


def _sparse_to_dense_neg_inf(product: sp.csr_matrix) -> np.ndarray:
    """Densify a sparse score block, with -inf where no neighbour contributed."""
    coo = product.tocoo()
    out = np.full(product.shape, NEG_INF, dtype=np.float32)
    out[coo.row, coo.col] = coo.data
    return out


def _gather_nnz_rows(matrix: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into indices/data) of every stored entry of `rows`, plus the repeat counts.

    Vectorised CSR row gathering: no Python loop over rows.
    """
    starts = matrix.indptr[rows]
    counts = (matrix.indptr[rows + 1] - starts).astype(np.int64)
    total = int(counts.sum())
    offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(starts, counts) + offsets, counts


# --------------------------------------------------------------------------------------- EASE


def ease_weights(gram: np.ndarray, l2: float, overwrite: bool = False) -> np.ndarray:
    """EASE closed form: B = I − P/diag(P) with P = (G + λI)⁻¹ (zero diagonal by construction).

    G + λI is SPD, so P comes from a Cholesky factor and LAPACK potri: about half the time of a
    general inverse and no m×m identity right-hand side. In float32: twice as fast as float64
    and, with λ ≥ 1 on count-scale Grams, the same item rankings to the precision scores are
    stored in (float32).

    On one BLAS thread: OpenBLAS's factorisation and inverse split their sums by the number of
    threads, so the same Gram gave other bits (and other tied items) on another machine or
    with another thread count. One thread costs ~1.4 s more at 6,000 items on 2 cores.

    `overwrite`: the caller's C-ordered float32 Gram becomes the weights, with no m×m copy
    (G is symmetric, so its transpose, an F-ordered view, is G for LAPACK).
    """
    if overwrite and gram.dtype == np.float32 and gram.flags.c_contiguous:
        g = gram.T
    else:
        g = np.array(gram, dtype=np.float32, order="F", copy=True)
    g[np.diag_indices_from(g)] += np.float32(l2)
    with single_threaded_blas():  # counted: jobs side by side share one limit
        factor, info = lapack.spotrf(g, lower=0, overwrite_a=1)
        if info != 0:
            raise np.linalg.LinAlgError(
                f"EASE Gram matrix not positive definite (potrf info={info})"
            )
        upper, info = lapack.spotri(factor, lower=0, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE inverse failed (potri info={info})")
    # potri fills only the upper triangle: B = −P/diag(P) off the diagonal, written in place.
    return weights_from_inverse(upper)


def ease_item_subset(counts: np.ndarray, max_items: int) -> np.ndarray:
    """Items EASE models: the most-interacted active items, at most `max_items`, index-sorted."""
    active = np.flatnonzero(counts > 0)
    if len(active) > max_items:
        # stable: ties broken by item index so refits are deterministic
        order = np.lexsort((active, -counts[active]))
        active = np.sort(active[order[:max_items]])
    return active


class EaseModel:
    """EASE on (up to) `max_items` most-interacted items; other items score -inf."""

    name = "behavior"

    def __init__(self, l2: float = 100.0, max_items: int = 6000,
                 weighting: InputWeighting = "confidence") -> None:
        self.l2 = l2
        self.max_items = max_items
        self.weighting = weighting
        self.items_: np.ndarray = np.array([], dtype=np.int64)
        self.weights_: np.ndarray = np.zeros((0, 0), dtype=np.float32)
        self.history_: sp.csr_matrix = sp.csr_matrix((0, 0), dtype=np.float32)
        self.n_items_ = 0

    def fit(self, data: Dataset) -> EaseModel:
        x = _prepare(data.interactions, self.weighting)
        counts = np.diff(x.tocsc().indptr)
        self.items_ = ease_item_subset(counts, self.max_items)
        sub = x[:, self.items_].tocsr()
        gram = sparse_gram(sub)
        self.weights_ = ease_weights(gram, self.l2, overwrite=True)
        self.history_ = sub
        self.n_items_ = data.n_items
        return self

    def score_block(self, users: np.ndarray) -> np.ndarray:
        hist = self.history_[np.asarray(users, dtype=np.int64)]
        out = block_array((hist.shape[0], self.n_items_))
        return scores_on_columns(hist, self.weights_, self.items_, out)

    def scored_items(self) -> np.ndarray:
        return self.items_

    def score_items(self, users: np.ndarray) -> np.ndarray:
        hist = self.history_[np.asarray(users, dtype=np.int64)]
        out = block_array((hist.shape[0], len(self.items_)))
        return scores_on_columns(hist, self.weights_, np.arange(len(self.items_)), out)


# ---------------------------------------------------------------------------------------- ALS


class AlsModel:
    """Implicit-feedback ALS (confidence 1 + alpha·r) by compiled CG sweeps; scores U[b] @ Vᵀ."""

    name = "behavior"

    def __init__(self, factors: int = 64, iterations: int = 15, regularization: float = 75.0,
                 alpha: float = 15.0, weighting: InputWeighting = "confidence",
                 cg_steps: int = 3, seed: int = 7) -> None:
        self.factors = factors
        self.iterations = iterations
        self.regularization = regularization
        self.alpha = alpha
        self.weighting = weighting
        self.cg_steps = cg_steps
        self.seed = seed
        self.user_factors_: np.ndarray = np.zeros((0, factors), dtype=np.float32)
        self.item_factors_: np.ndarray = np.zeros((0, factors), dtype=np.float32)
        self.user_active_: np.ndarray = np.zeros(0, dtype=bool)
        self.item_active_: np.ndarray = np.zeros(0, dtype=bool)

    def fit(self, data: Dataset) -> AlsModel:
        x = _prepare(data.interactions, self.weighting)
        conf = x.copy()
        conf.data = np.float32(1.0) + np.float32(self.alpha) * conf.data
        conf_t = conf.T.tocsr()
        rng = np.random.default_rng(self.seed)
        scale = np.float32(0.01)
        users = (rng.standard_normal((x.shape[0], self.factors)) * scale).astype(np.float32)
        items = (rng.standard_normal((x.shape[1], self.factors)) * scale).astype(np.float32)
        for _ in range(self.iterations):
            cg_half_sweep(users, conf, items, self.regularization, self.cg_steps)
            cg_half_sweep(items, conf_t, users, self.regularization, self.cg_steps)
        self.user_factors_, self.item_factors_ = users, items
        self.user_active_ = np.diff(x.indptr) > 0
        self.item_active_ = np.diff(conf_t.indptr) > 0
        return self

    def score_block(self, users: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        factors = self.user_factors_[users]
        out = block_array((len(users), self.item_factors_.shape[0]))
        items_t = self.item_factors_.T
        inactive = np.flatnonzero(~self.item_active_)

        def chunk(a: int, b: int) -> None:  # product and mask while the rows are in cache
            np.matmul(factors[a:b], items_t, out=out[a:b])
            out[a:b, inactive] = NEG_INF  # never seen by anyone: no CF evidence

        parallel_chunks(chunk, len(users))
        out[~self.user_active_[users]] = NEG_INF
        return out


# ------------------------------------------------------------------------------------ item-kNN


def _item_blocks(costs: np.ndarray, max_rows: int, max_cost: float) -> list[tuple[int, int]]:
    """Contiguous ranges with ≤ max_rows entries and (when possible) ≤ max_cost total cost.

    Greedy over the cumulative cost: one Python step per *block*, not per item.
    """
    cum = np.concatenate([[0.0], np.cumsum(costs, dtype=np.float64)])
    n, bounds = len(costs), [0]
    while bounds[-1] < n:
        start = bounds[-1]
        by_cost = int(np.searchsorted(cum, cum[start] + max_cost, side="right")) - 1
        bounds.append(min(n, start + max_rows, max(by_cost, start + 1)))
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _co_min_sparse(xt_block: sp.csr_matrix, x: sp.csr_matrix) -> sp.csr_matrix:
    """Σ_u min(x_ui, x_uj) for items i in the block and all items j, co-interacted pairs only.

    Generates the (u, i, j) triples by vectorised CSR gathering and sums them per (i, j).
    """
    n_rows, n_items = xt_block.shape[0], x.shape[1]
    item_rows = np.repeat(np.arange(n_rows), np.diff(xt_block.indptr))
    pos, counts = _gather_nnz_rows(x, xt_block.indices.astype(np.int64))
    values = np.minimum(np.repeat(xt_block.data, counts), x.data[pos])
    coo = sp.coo_matrix(
        (values, (np.repeat(item_rows, counts), x.indices[pos])), shape=(n_rows, n_items)
    )
    return coo.tocsr()  # sums duplicate (i, j) entries


def item_norms(x: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per item (column): L1 norm and squared L2 norm, float64 (computed once per fit)."""
    l1 = np.asarray(abs(x).sum(axis=0), dtype=np.float64).ravel()
    sq = np.asarray(x.multiply(x).sum(axis=0), dtype=np.float64).ravel()
    return l1, sq


def similarity_rows(
    x: sp.csr_matrix, xt: sp.csr_matrix, rows: np.ndarray, similarity: Similarity,
    shrink: float = 0.0, asymmetric_alpha: float = 0.5,
    norms: tuple[np.ndarray, np.ndarray] | None = None,
) -> sp.csr_matrix:
    """Similarities from items `rows` to every item that shares at least one user with them.

    `x` is users × items (non-negative), `xt` its item-major copy, `norms` from `item_norms`.
    Distances d become 1/(1 + d). Pairs without a common user are left out (similarity 0) for
    every choice: there is no behavioural evidence for them, and keeping them would let
    distances pair up unrelated rare items. Sparse, so no dense items × items block exists.
    """
    l1, sq = norms if norms is not None else item_norms(x)
    block = xt[rows]
    co = _co_min_sparse(block, x) if similarity == "manhattan" else sp.csr_matrix(block @ x)
    co.sort_indices()
    r = rows[np.repeat(np.arange(len(rows)), np.diff(co.indptr))]
    c = co.indices
    v = co.data.astype(np.float64)
    if similarity == "manhattan":
        # for non-negative vectors: Σ|a − b| = Σa + Σb − 2 Σ min(a, b)
        sim = 1.0 / (1.0 + np.maximum(l1[r] + l1[c] - 2.0 * v, 0.0))
    elif similarity == "euclidean":
        sim = 1.0 / (1.0 + np.sqrt(np.maximum(sq[r] + sq[c] - 2.0 * v, 0.0)))
    else:
        a = 0.5 if similarity == "cosine" else asymmetric_alpha
        denom = np.power(sq[r], a) * np.power(sq[c], 1.0 - a) + shrink
        sim = np.divide(v, denom, out=np.zeros_like(v), where=denom > 0)
    return sp.csr_matrix((sim, co.indices, co.indptr), shape=co.shape)


def similarity_block(
    x: sp.csr_matrix, xt: sp.csr_matrix, rows: np.ndarray, similarity: Similarity,
    shrink: float = 0.0, asymmetric_alpha: float = 0.5,
) -> np.ndarray:
    """Dense view of `similarity_rows` (0 = no common user); for inspection and tests."""
    return similarity_rows(x, xt, rows, similarity, shrink, asymmetric_alpha).toarray()


def normalize_items(x: sp.csr_matrix, similarity: Similarity) -> sp.csr_matrix:
    """Scale every item column to unit length (L1 for Manhattan, L2 otherwise).

    Raw distances mostly measure popularity (two rare items are 'close'); on unit vectors they
    compare the *shape* of the audiences instead (Manhattan on L1-unit vectors = 2 × total
    variation distance; Euclidean on L2-unit vectors is monotone in cosine).
    """
    x = sp.csr_matrix(x, dtype=np.float32, copy=True)
    l1, sq = item_norms(x)
    norms = l1 if similarity == "manhattan" else np.sqrt(sq)
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    x.data *= scale[x.indices].astype(np.float32)
    return x


def top_k_per_row(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the k largest values per row of a COO triple list (ties → smaller column first)."""
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else rows
    first = np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
    keep = np.arange(len(rows)) - first < k
    return rows[keep], cols[keep], vals[keep]


def knn_similarity(
    x: sp.csr_matrix, neighbors: int, similarity: Similarity, shrink: float = 0.0,
    asymmetric_alpha: float = 0.5, normalize: bool = False, block_items: int = 1024,
    max_pairs: float = 5e6,
) -> sp.csr_matrix:
    """Sparse items × items matrix S: row i holds item i's top-`neighbors` most similar items.

    Self-similarity and non-positive similarities are excluded; only items sharing a user are
    candidates. Items are processed in blocks of ≤ block_items rows whose co-interaction count
    stays ≤ ~max_pairs, so memory is bounded whatever the catalog size.
    """
    x = normalize_items(x, similarity) if normalize else sp.csr_matrix(x, dtype=np.float32)
    xt = x.T.tocsr()
    n_items = x.shape[1]
    norms = item_norms(x)
    active_idx = np.flatnonzero(np.diff(xt.indptr) > 0)
    # cost of an item row = co-interaction triples it generates (bounds the block's nnz)
    costs = np.asarray(xt[active_idx] @ np.diff(x.indptr).astype(np.float64)).ravel()
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for lo, hi in _item_blocks(costs, block_items, max_pairs):
        rows = active_idx[lo:hi]
        sim = similarity_rows(x, xt, rows, similarity, shrink, asymmetric_alpha, norms).tocoo()
        r, c, v = rows[sim.row], sim.col, sim.data
        ok = (r != c) & (v > 0)
        parts.append(top_k_per_row(r[ok], c[ok], v[ok], neighbors))
    if not parts:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    r, c, v = (np.concatenate(p) for p in zip(*parts, strict=True))
    s = sp.csr_matrix((v.astype(np.float32), (r, c)), shape=(n_items, n_items))
    s.sort_indices()
    return s


class ItemKnnModel:
    """Item-kNN: score(u, j) = Σ_i x_ui S[i, j] over the user's items i; unreached items -inf."""

    name = "behavior"

    def __init__(self, neighbors: int = 800, similarity: Similarity = "cosine",
                 shrink: float = 2.0, asymmetric_alpha: float = 0.5, normalize: bool = False,
                 weighting: InputWeighting = "confidence") -> None:
        self.neighbors = neighbors
        self.normalize = normalize
        self.similarity: Similarity = similarity
        self.shrink = shrink
        self.asymmetric_alpha = asymmetric_alpha
        self.weighting = weighting
        self.similarity_: sp.csr_matrix = sp.csr_matrix((0, 0), dtype=np.float32)
        self.history_: sp.csr_matrix = sp.csr_matrix((0, 0), dtype=np.float32)

    def fit(self, data: Dataset) -> ItemKnnModel:
        self.history_ = _prepare(data.interactions, self.weighting)
        self.similarity_ = knn_similarity(
            self.history_, self.neighbors, self.similarity, self.shrink, self.asymmetric_alpha,
            self.normalize,
        )
        return self

    def score_block(self, users: np.ndarray) -> np.ndarray:
        hist = self.history_[np.asarray(users, dtype=np.int64)]
        out = _sparse_to_dense_neg_inf(sp.csr_matrix(hist @ self.similarity_))
        return _empty_rows_to_neg_inf(out, hist)


# ------------------------------------------------------------------------------------- factory


def choose_algorithm(data: Dataset, params: BehaviorParams) -> Literal["ease", "als", "itemknn"]:
    """Resolve 'auto': EASE if the (capped) catalog fits and keeps most interactions, else ALS."""
    if params.algorithm != "auto":
        return params.algorithm
    counts = np.diff(sp.csc_matrix(data.interactions).indptr)
    active = counts[counts > 0]
    if len(active) <= params.max_items_for_ease:
        return "ease"
    top = np.sort(active)[::-1][: params.max_items_for_ease]
    coverage = float(top.sum()) / float(active.sum())
    return "ease" if coverage >= params.ease_min_coverage else "als"


class AutoBehavior:
    """Defers the EASE-vs-ALS choice to fit time, when the catalog size is known."""

    name = "behavior"

    def __init__(self, params: BehaviorParams) -> None:
        self.params = params
        self.model_: Modality | None = None
        self.algorithm_: str | None = None

    def fit(self, data: Dataset) -> AutoBehavior:
        algorithm = choose_algorithm(data, self.params)
        self.algorithm_ = algorithm
        self.model_ = make_behavior(self.params.model_copy(update={"algorithm": algorithm}))
        self.model_.fit(data)
        return self

    def score_block(self, users: np.ndarray) -> np.ndarray:
        if self.model_ is None:
            raise RuntimeError("AutoBehavior.score_block called before fit")
        return self.model_.score_block(users)

    def scored_items(self) -> np.ndarray | None:
        return self.model_.scored_items() if isinstance(self.model_, SubsetScorer) else None

    def score_items(self, users: np.ndarray) -> np.ndarray:
        if not isinstance(self.model_, SubsetScorer):
            raise RuntimeError(f"the {self.algorithm_} model scores every item: use score_block")
        return self.model_.score_items(users)


def make_behavior(params: BehaviorParams | None = None) -> Modality:
    """Build the (unfitted) behavior modality described by `params`."""
    p = params or BehaviorParams()
    if p.algorithm == "ease":
        return EaseModel(l2=p.l2, max_items=p.max_items_for_ease, weighting=p.ease_input)
    if p.algorithm == "als":
        return AlsModel(factors=p.factors, iterations=p.iterations,
                        regularization=p.als_regularization, alpha=p.als_alpha,
                        weighting=p.als_input, cg_steps=p.cg_steps, seed=p.seed)
    if p.algorithm == "itemknn":
        return ItemKnnModel(neighbors=p.neighbors, similarity=p.similarity, shrink=p.shrink,
                            asymmetric_alpha=p.asymmetric_alpha, normalize=p.knn_normalize,
                            weighting=p.knn_input)
    return AutoBehavior(p)
