"""Fusion below the model level: one model over evidence pooled from several modalities.

- Feature level (`hybrid_features`): EASE over an item×item Gram matrix that adds content
  similarity to co-occurrence, G = XᵀX + β·FFᵀ (F: L2-normalised item attribute vectors from the
  content modality). Equivalent to appending each attribute as a pseudo-user who "consumed" the
  items carrying it, so items with few interactions borrow strength from similar items.
- Sample level (`hybrid_samples`): each user's history is pooled with their friends' as weighted
  pseudo-interactions, X̃ = X + γ·D⁻¹SX, and EASE is fitted on the pooled samples and queried with
  them, so taste evidence from friends enters training, not just a late vote.

Both fall back gracefully: without items (or social) the extra evidence is simply absent and the
model is plain EASE, so a run never fails for lack of side data.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, Field

from tasks.data.dataset import Dataset
from tasks.kernels.blocks import block_array
from tasks.kernels.sparse import scores_on_columns, sparse_gram
from tasks.modalities.base import Modality
from tasks.modalities.behavior import ease_item_subset, ease_weights
from tasks.modalities.content import ContentParams, MissingModalityInput, item_features
from tasks.parameter_rules import PARAMETER_CONFIG

NEG_INF = np.float32(-np.inf)


class HybridParams(BaseModel):
    """Feature- and sample-level fusion models (closed-form EASE variants).

    Defaults measured on an inner split of Last.fm train (benchmarks/tune_hybrid.py).
    """

    model_config = PARAMETER_CONFIG

    max_items: int = Field(
        default=6000, gt=0, description="Most-interacted items modelled (the Gram is items²)."
    )
    feature_weight: float = Field(
        default=20.0, ge=0, description="β: weight of content similarity in the Gram matrix."
    )
    features_l2: float = Field(
        default=200.0, gt=0, description="EASE λ of the feature-level model."
    )
    social_weight: float = Field(
        default=0.1, ge=0, description="γ: weight of friends' mean history as pseudo-samples."
    )
    samples_l2: float = Field(default=100.0, gt=0, description="EASE λ of the sample-level model.")


def _binary(matrix: sp.csr_matrix) -> sp.csr_matrix:
    out = matrix.copy().tocsr()
    out.data = np.ones_like(out.data, dtype=np.float32)
    return out


class _Ease:
    """EASE weights over an item subset; scores every other item -inf."""

    name = "hybrid"

    def __init__(self, params: HybridParams) -> None:
        self.params = params
        self.items_ = np.array([], dtype=np.int64)
        self.weights_ = np.zeros((0, 0), dtype=np.float32)
        self.queries_ = sp.csr_matrix((0, 0), dtype=np.float32)
        self.n_items_ = 0

    def _fit_gram(self, samples: sp.csr_matrix, extra_gram: np.ndarray | None, l2: float) -> None:
        gram = sparse_gram(samples)
        if extra_gram is not None:
            gram += extra_gram
        self.weights_ = ease_weights(gram, l2, overwrite=True)

    def score_block(self, users: np.ndarray) -> np.ndarray:
        out = block_array((len(users), self.n_items_))
        if not self.items_.size:
            out[:] = NEG_INF
            return out
        return scores_on_columns(self.queries_[users], self.weights_, self.items_, out)

    def scored_items(self) -> np.ndarray:
        return self.items_

    def score_items(self, users: np.ndarray) -> np.ndarray:
        out = block_array((len(users), len(self.items_)))
        if not self.items_.size:
            return out
        return scores_on_columns(self.queries_[users], self.weights_, np.arange(len(self.items_)),
                                 out)


class FeatureFusionModel(_Ease):
    name = "hybrid_features"

    def __init__(self, params: HybridParams, content: ContentParams | None = None) -> None:
        super().__init__(params)
        self.content = content or ContentParams()  # the run's: the same attribute vectors

    def fit(self, data: Dataset) -> FeatureFusionModel:
        x = _binary(data.interactions)
        self.items_ = ease_item_subset(np.diff(x.tocsc().indptr), self.params.max_items)
        sub = x[:, self.items_].tocsr()
        extra = None
        if data.items is not None and self.params.feature_weight > 0:
            sparse_f, dense_f = item_features(data.items, self.content)
            f, d = sparse_f[self.items_], dense_f[self.items_]
            extra = self.params.feature_weight * (sparse_gram(f.T) + d @ d.T)
        self._fit_gram(sub, extra, self.params.features_l2)
        self.queries_ = sub
        self.n_items_ = data.n_items
        return self


class SampleFusionModel(_Ease):
    name = "hybrid_samples"

    def fit(self, data: Dataset) -> SampleFusionModel:
        if data.social is None or data.social.nnz == 0:
            raise MissingModalityInput("no social edges to pool friends' samples from")
        x = _binary(data.interactions)
        self.items_ = ease_item_subset(np.diff(x.tocsc().indptr), self.params.max_items)
        sub = x[:, self.items_].tocsr()
        ties = _binary(data.social)
        degree = np.asarray(ties.sum(axis=1)).ravel()
        mean_of_friends = sp.diags(1.0 / np.maximum(degree, 1.0)) @ ties @ sub
        # Weighed in place and freed once summed: users × their friends' items in float64 is
        # the largest matrix of the fit (0.2 GB at 100k users), and it existed three times.
        mean_of_friends.data *= self.params.social_weight
        pooled64 = sub + mean_of_friends
        del mean_of_friends
        pooled = sp.csr_matrix(pooled64, dtype=np.float32)
        del pooled64
        self._fit_gram(pooled, None, self.params.samples_l2)
        self.queries_ = pooled
        self.n_items_ = data.n_items
        return self


def make_feature_fusion(
    params: HybridParams | None = None, content: ContentParams | None = None
) -> Modality:
    return FeatureFusionModel(params or HybridParams(), content)


def make_sample_fusion(params: HybridParams | None = None) -> Modality:
    return SampleFusionModel(params or HybridParams())
