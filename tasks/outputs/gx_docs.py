"""Great Expectations' Data Docs validation page, with its data asset named.

GX 1.x reads a page's "Data asset" from the result's batch spec, which a pandas dataframe asset
leaves without a name, so every page said "Data asset: None" (its site index already reads the
name from the batch definition instead). The file contexts in
`tasks.outputs.checks` name this renderer
in their site configuration; it is a module of its own because GX imports it by name.
"""

from __future__ import annotations

import copy
from typing import Any

from great_expectations.render.renderer import ValidationResultsPageRenderer


class AssetNamedValidationResultsPageRenderer(ValidationResultsPageRenderer):
    """GX's own page, given the asset name from the batch definition when the spec has none."""

    def render(self, validation_results: Any, suite_parameters: Any = None) -> Any:
        asset = validation_results.asset_name
        spec = dict(validation_results.meta.get("batch_spec") or {})
        if asset and not spec.get("data_asset_name"):
            validation_results = copy.copy(validation_results)
            validation_results.meta = {
                **validation_results.meta,
                "batch_spec": {**spec, "data_asset_name": asset},
            }
        return super().render(validation_results, suite_parameters)
