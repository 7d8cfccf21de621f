"""Behavior modality: collaborative filtering on the user×item interaction matrix.

Three model families, all behind the `Modality` protocol (`name = "behavior"`):

- `EaseModel` — closed-form linear item×item autoencoder (Steck 2019), the strongest model when
  the catalog is small enough for a dense item×item inverse; large catalogs are capped to the
  most-interacted items, the tail gets `-inf` (other modalities serve it).
- `AlsModel` — implicit-feedback matrix factorisation (Hu, Koren & Volinsky 2008) solved with a few
  conjugate-gradient steps per sweep, vectorised over all users/items; memory is O((users+items) ×
  factors), so it is the choice when EASE does not fit.
- `ItemKnnModel` — item-kNN with cosine / asymmetric cosine (with shrinkage), Euclidean or
  Manhattan similarity; only the top-k neighbours per item are kept (sparse), the dense similarity
  exists one block of items at a time.

`make_behavior(BehaviorParams())` picks one; defaults are the choices tuned on the Last.fm inner
split by `benchmarks/tune_behavior.py`. `score_block` is one dense (or sparse) matmul per block.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from pydantic import BaseModel, Field

from tasks.dataset import Dataset
from tasks.modalities.base import Modality

InputWeighting = Literal["binary", "confidence"]
Similarity = Literal["cosine", "asymmetric_cosine", "euclidean", "manhattan"]
Algorithm = Literal["auto", "ease", "als", "itemknn"]

NEG_INF = np.float32(-np.inf)


class BehaviorParams(BaseModel):
    """Hyperparameters of the behavior modality (defaults tuned on the Last.fm inner split)."""

    algorithm: Algorithm = Field(
        "auto",
        description="'auto' = EASE when the active catalog fits `max_items_for_ease` or the capped "
        "catalog still covers `ease_min_coverage` of interactions, ALS otherwise.",
    )
    # EASE
    l2: float = Field(100.0, gt=0, description="EASE ridge penalty λ on the item×item weights.")
    max_items_for_ease: int = Field(
        6000, gt=0, description="EASE models at most this many most-interacted items (dense m×m)."
    )
    ease_min_coverage: float = Field(
        0.8, ge=0, le=1,
        description="'auto' still uses capped EASE if its items carry this share of interactions.",
    )
    ease_input: InputWeighting = Field(
        "binary", description="EASE input: 0/1 interactions or the dataset's confidence values."
    )
    # ALS
    factors: int = Field(64, gt=0, description="ALS latent dimension.")
    iterations: int = Field(15, gt=0, description="ALS alternating sweeps.")
    als_regularization: float = Field(1.0, ge=0, description="ALS L2 penalty on factors.")
    als_alpha: float = Field(
        10.0, ge=0, description="ALS confidence c = 1 + alpha·r for observed interactions."
    )
    als_input: InputWeighting = Field(
        "confidence", description="ALS r: 0/1 interactions or the dataset's confidence values."
    )
    cg_steps: int = Field(3, gt=0, description="Conjugate-gradient steps per ALS half-sweep.")
    seed: int = Field(7, description="Random seed for ALS initialisation.")
    # item-kNN
    similarity: Similarity = Field(
        "cosine", description="item-kNN similarity; distances become 1/(1+d)."
    )
    neighbors: int = Field(200, gt=0, description="item-kNN: neighbours kept per item.")
    shrink: float = Field(
        10.0, ge=0, description="Shrinkage added to (asymmetric) cosine denominators."
    )
    asymmetric_alpha: float = Field(
        0.5, ge=0, le=1,
        description="Asymmetric cosine exponent: dot / (|i|^(2a) |j|^(2(1-a))); 0.5 = cosine.",
    )
    knn_input: InputWeighting = Field(
        "binary", description="item-kNN input: 0/1 interactions or confidence values."
    )


def _prepare(matrix: sp.csr_matrix, weighting: InputWeighting) -> sp.csr_matrix:
    """Interactions as float32 CSR, binarised if asked (stored entries are all interactions)."""
    x = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    x.sum_duplicates()
    x.sort_indices()
    if weighting == "binary":
        x.data = np.ones_like(x.data)
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


def ease_weights(gram: np.ndarray, l2: float) -> np.ndarray:
    """EASE closed form: B = I − P/diag(P) with P = (G + λI)⁻¹ (zero diagonal by construction).

    Cholesky-based inverse (G + λI is SPD), about twice as fast as a general inverse.
    """
    g = np.array(gram, dtype=np.float64, copy=True)
    g[np.diag_indices_from(g)] += l2
    factor, lower = sla.cho_factor(g, lower=False, overwrite_a=True, check_finite=False)
    p = sla.cho_solve((factor, lower), np.eye(len(g)), overwrite_b=True, check_finite=False)
    b = -p / np.diag(p)[None, :]
    b[np.diag_indices_from(b)] = 0.0
    return b


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
                 weighting: InputWeighting = "binary") -> None:
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
        gram = (sub.T @ sub).toarray().astype(np.float64)
        self.weights_ = ease_weights(gram, self.l2).astype(np.float32)
        self.history_ = sub
        self.n_items_ = data.n_items
        return self

    def score_block(self, users: np.ndarray) -> np.ndarray:
        hist = self.history_[np.asarray(users, dtype=np.int64)]
        out = np.full((hist.shape[0], self.n_items_), NEG_INF, dtype=np.float32)
        out[:, self.items_] = np.asarray(hist @ self.weights_, dtype=np.float32)
        return _empty_rows_to_neg_inf(out, hist)


# ---------------------------------------------------------------------------------------- ALS


def _row_chunks(indptr: np.ndarray, max_nnz: int) -> list[tuple[int, int]]:
    """Split CSR rows into contiguous ranges of at most ~max_nnz stored entries (bounded memory)."""
    n = len(indptr) - 1
    bounds = [0]
    cuts = np.searchsorted(indptr, np.arange(max_nnz, indptr[-1], max_nnz), side="right") - 1
    for c in cuts:
        if bounds[-1] < c < n:
            bounds.append(int(c))
    bounds.append(n)
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def als_half_sweep(
    x: np.ndarray, conf: sp.csr_matrix, y: np.ndarray, reg: float, steps: int,
    max_nnz: int = 2_000_000,
) -> None:
    """Update rows of `x` in place towards argmin Σ c (1 − xᵀy)² + reg|x|² with CG (warm start).

    Solves (YᵀY + Yᵀ(C_u − I)Y + reg·I) x_u = YᵀC_u 1 for every row u at once: each CG step is
    one gather + row-dot over the stored entries and one sparse @ dense product.
    """
    f = y.shape[1]
    yty = (y.T @ y + reg * np.eye(f, dtype=np.float32)).astype(np.float32)
    for start, stop in _row_chunks(conf.indptr, max_nnz):
        c = conf[start:stop]
        rows = np.repeat(np.arange(stop - start), np.diff(c.indptr))
        y_nz = y[c.indices]
        cm1 = c.data - np.float32(1.0)

        def apply(v: np.ndarray, c: sp.csr_matrix = c, rows: np.ndarray = rows,
                  y_nz: np.ndarray = y_nz, cm1: np.ndarray = cm1) -> np.ndarray:
            w = cm1 * np.einsum("nf,nf->n", v[rows], y_nz)
            weighted = sp.csr_matrix((w, c.indices, c.indptr), shape=c.shape)
            return v @ yty + np.asarray(weighted @ y, dtype=np.float32)

        xs = x[start:stop]
        xs[np.diff(c.indptr) == 0] = 0.0  # no interactions: the exact solution is 0
        b = np.asarray(c @ y, dtype=np.float32)
        r = b - apply(xs)
        p = r.copy()
        rs = np.einsum("nf,nf->n", r, r)
        for _ in range(steps):
            ap = apply(p)
            denom = np.einsum("nf,nf->n", p, ap)
            step = np.divide(rs, denom, out=np.zeros_like(rs), where=denom > 0)
            xs += step[:, None] * p
            r -= step[:, None] * ap
            rs_new = np.einsum("nf,nf->n", r, r)
            beta = np.divide(rs_new, rs, out=np.zeros_like(rs), where=rs > 0)
            p = r + beta[:, None] * p
            rs = rs_new
        x[start:stop] = xs


class AlsModel:
    """Implicit-feedback ALS (confidence 1 + alpha·r), NumPy/SciPy only; scores U[block] @ Vᵀ."""

    name = "behavior"

    def __init__(self, factors: int = 64, iterations: int = 15, regularization: float = 1.0,
                 alpha: float = 10.0, weighting: InputWeighting = "confidence",
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
            als_half_sweep(users, conf, items, self.regularization, self.cg_steps)
            als_half_sweep(items, conf_t, users, self.regularization, self.cg_steps)
        self.user_factors_, self.item_factors_ = users, items
        self.user_active_ = np.diff(x.indptr) > 0
        self.item_active_ = np.diff(conf_t.indptr) > 0
        return self

    def score_block(self, users: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        out = (self.user_factors_[users] @ self.item_factors_.T).astype(np.float32, copy=False)
        out[:, ~self.item_active_] = NEG_INF  # never seen by anyone: no CF evidence
        out[~self.user_active_[users]] = NEG_INF
        return out


# ------------------------------------------------------------------------------------ item-kNN


def _item_blocks(costs: np.ndarray, max_rows: int, max_cost: float) -> list[tuple[int, int]]:
    """Contiguous item ranges with ≤ max_rows items and (when possible) ≤ max_cost total cost."""
    bounds = [0]
    cum = 0.0
    for i, c in enumerate(costs.tolist()):
        if i > bounds[-1] and (i - bounds[-1] >= max_rows or cum + c > max_cost):
            bounds.append(i)
            cum = 0.0
        cum += c
    bounds.append(len(costs))
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _co_min_block(xt_block: sp.csr_matrix, x: sp.csr_matrix) -> np.ndarray:
    """Σ_u min(x_ui, x_uj) for items i in the block and all items j (dense block × n_items).

    Only co-interacted (u, i, j) triples are generated, via vectorised CSR gathering.
    """
    n_rows, n_items = xt_block.shape[0], x.shape[1]
    item_rows = np.repeat(np.arange(n_rows), np.diff(xt_block.indptr))
    pos, counts = _gather_nnz_rows(x, xt_block.indices.astype(np.int64))
    flat = np.repeat(item_rows.astype(np.int64), counts) * n_items + x.indices[pos]
    values = np.minimum(np.repeat(xt_block.data, counts), x.data[pos])
    return np.bincount(flat, weights=values, minlength=n_rows * n_items).reshape(n_rows, n_items)


def similarity_block(
    x: sp.csr_matrix, xt: sp.csr_matrix, start: int, stop: int, similarity: Similarity,
    shrink: float = 0.0, asymmetric_alpha: float = 0.5,
) -> np.ndarray:
    """Dense similarities from items start:stop (rows) to every item (columns), float64.

    `x` is users × items, `xt` its item-major copy. Distances d become 1/(1 + d).
    """
    block = xt[start:stop]
    if similarity == "manhattan":
        l1 = np.asarray(x.sum(axis=0)).ravel().astype(np.float64)
        # for non-negative vectors: Σ|a − b| = Σa + Σb − 2 Σ min(a, b)
        dist = l1[start:stop, None] + l1[None, :] - 2.0 * _co_min_block(block, x)
        return 1.0 / (1.0 + np.maximum(dist, 0.0))
    dots = (block @ x).toarray().astype(np.float64)
    sq = np.asarray(x.multiply(x).sum(axis=0)).ravel().astype(np.float64)
    if similarity == "euclidean":
        dist = np.sqrt(np.maximum(sq[start:stop, None] + sq[None, :] - 2.0 * dots, 0.0))
        return 1.0 / (1.0 + dist)
    a = 0.5 if similarity == "cosine" else asymmetric_alpha
    denom = np.power(sq[start:stop, None], a) * np.power(sq[None, :], 1.0 - a) + shrink
    return np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)


def knn_similarity(
    x: sp.csr_matrix, neighbors: int, similarity: Similarity, shrink: float = 0.0,
    asymmetric_alpha: float = 0.5, block_items: int = 512, max_pairs: float = 2e7,
) -> sp.csr_matrix:
    """Sparse items × items matrix S: row i holds item i's top-`neighbors` most similar items.

    Self-similarity, items nobody interacted with and non-positive similarities are excluded.
    Peak memory is one block_items × n_items dense similarity block.
    """
    x = sp.csr_matrix(x, dtype=np.float32)
    xt = x.T.tocsr()
    n_items = x.shape[1]
    active = np.diff(xt.indptr) > 0
    k = max(0, min(neighbors, int(active.sum()) - 1))
    # cost of a block row = co-interaction triples it generates (bounds Manhattan's gather)
    user_deg = np.diff(x.indptr).astype(np.float64)
    costs = np.asarray(xt @ user_deg).ravel() if similarity == "manhattan" else np.zeros(n_items)
    rows_out: list[np.ndarray] = []
    cols_out: list[np.ndarray] = []
    vals_out: list[np.ndarray] = []
    for start, stop in _item_blocks(costs, block_items, max_pairs):
        if k == 0:
            break
        sim = similarity_block(x, xt, start, stop, similarity, shrink, asymmetric_alpha)
        sim[:, ~active] = -np.inf
        local = np.arange(stop - start)
        sim[local, start + local] = -np.inf
        sim[~active[start:stop]] = -np.inf
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        top_sim = np.take_along_axis(sim, top, axis=1)
        keep = np.isfinite(top_sim) & (top_sim > 0)
        rows_out.append(np.broadcast_to(local[:, None] + start, top.shape)[keep])
        cols_out.append(top[keep])
        vals_out.append(top_sim[keep].astype(np.float32))
    if not rows_out:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    s = sp.csr_matrix(
        (np.concatenate(vals_out), (np.concatenate(rows_out), np.concatenate(cols_out))),
        shape=(n_items, n_items), dtype=np.float32,
    )
    s.sort_indices()
    return s


class ItemKnnModel:
    """Item-kNN: score(u, j) = Σ_i x_ui S[i, j] over the user's items i; unreached items -inf."""

    name = "behavior"

    def __init__(self, neighbors: int = 200, similarity: Similarity = "cosine",
                 shrink: float = 10.0, asymmetric_alpha: float = 0.5,
                 weighting: InputWeighting = "binary") -> None:
        self.neighbors = neighbors
        self.similarity: Similarity = similarity
        self.shrink = shrink
        self.asymmetric_alpha = asymmetric_alpha
        self.weighting = weighting
        self.similarity_: sp.csr_matrix = sp.csr_matrix((0, 0), dtype=np.float32)
        self.history_: sp.csr_matrix = sp.csr_matrix((0, 0), dtype=np.float32)

    def fit(self, data: Dataset) -> ItemKnnModel:
        self.history_ = _prepare(data.interactions, self.weighting)
        self.similarity_ = knn_similarity(
            self.history_, self.neighbors, self.similarity, self.shrink, self.asymmetric_alpha
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
                            asymmetric_alpha=p.asymmetric_alpha, weighting=p.knn_input)
    return AutoBehavior(p)
