"""Evaluation-only flow: score the published lists against a held-out file, as an artifact."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_table_artifact

from tasks.evaluation.published import evaluate_published, read_truth


@flow(name="recfusion-evaluate", log_prints=True)
def evaluate(
    db: str = "recfusion.duckdb", test_file: str = "test.parquet", k: int = 10
) -> dict[str, dict[str, float]]:
    """Metrics@k of `fused` and each modality of the latest published run on `test_file`."""
    results = evaluate_published(db, read_truth(Path(test_file)), k)
    create_table_artifact(
        key="recfusion-offline-evaluation",
        table=[
            {"list": name, **{m: round(v, 4) for m, v in values.items()}}
            for name, values in results.items()
        ],
        description=f"Published lists of {db} scored against {test_file} at k={k}",
    )
    for name, values in results.items():
        print(name, {m: round(v, 4) for m, v in values.items()})
    return results
