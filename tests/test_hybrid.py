"""Feature- and sample-level fusion models on hand-made data."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from tasks.data.dataset import build_dataset
from tasks.modalities.content import MissingModalityInput
from tasks.modalities.hybrid import FeatureFusionModel, HybridParams, SampleFusionModel

T = datetime(2024, 1, 1, tzinfo=UTC)


def events(pairs: list[tuple[str, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [u for u, _ in pairs],
            "item_id": [i for _, i in pairs],
            "event_type": ["view"] * len(pairs),
            "value": [1.0] * len(pairs),
            "ts": [T] * len(pairs),
        }
    )


# Items a and b co-occur a lot; c and d co-occur; "a2" shares a's tags but nobody pairs it with a.
PAIRS = (
    [(f"u{n}", i) for n in range(6) for i in ("a", "b")]
    + [(f"v{n}", i) for n in range(6) for i in ("c", "d")]
    + [("w0", "a2"), ("w0", "d"), ("solo", "a")]
)
ITEMS = pl.DataFrame(
    {
        "item_id": ["a", "a2", "b", "c", "d"],
        "tags": [["rock", "indie"], ["rock", "indie"], ["jazz"], ["pop"], ["rap"]],
    }
)


def scores(model, data, user: str) -> dict[str, float]:
    row = model.score_block(np.array([data.user_index([user])[0]]))[0]
    return {str(i): float(s) for i, s in zip(data.item_ids, row, strict=True)}


def test_feature_fusion_lets_content_similarity_into_the_item_model():
    data = build_dataset(events(PAIRS), items=ITEMS)
    plain = scores(
        FeatureFusionModel(HybridParams(feature_weight=0.0, features_l2=1.0)).fit(data),
        data,
        "solo",
    )
    fused = scores(
        FeatureFusionModel(HybridParams(feature_weight=5.0, features_l2=1.0)).fit(data),
        data,
        "solo",
    )
    # co-occurrence alone says b; only the content term connects a's fans to a2 (a's twin)
    assert plain["b"] > 0 and fused["b"] > 0
    assert plain["a2"] <= 0 < fused["a2"]
    assert fused["a2"] > fused["c"]


def test_sample_fusion_serves_users_through_their_friends():
    social = pl.DataFrame(
        {"user_id": ["newbie", "u0"], "friend_id": ["u0", "newbie"], "weight": [1.0, 1.0]}
    )
    data = build_dataset(events(PAIRS), social=social)
    model = SampleFusionModel(HybridParams(social_weight=0.5, samples_l2=1.0)).fit(data)
    got = scores(model, data, "newbie")  # no history of their own
    assert np.isfinite(got["c"]) and got["a"] > got["c"] and got["b"] > got["d"]
    nobody = data.user_index(["v0"])[0]
    assert np.isfinite(model.score_block(np.array([nobody]))[0]).all()
    with pytest.raises(MissingModalityInput):
        SampleFusionModel(HybridParams()).fit(build_dataset(events(PAIRS)))
