"""The run report: tables whose numbers do not mislead, in the HTML file and the Prefect UI.

Findings 4 ("reports are out of reach") and 6 ("numbers that mislead") of the operations issue,
each reproduced: the pure rendering on small frames, and the files and artifacts of real runs.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import polars as pl
from support import query, run_nightly

from tasks.outputs.report import ReportInput, lift_table, render_report

SOURCES = ("behavior", "content", "social", "popularity", "hybrid_features", "hybrid_samples")
OTHER_LISTS = ("rrf", "stacking", "popularity_baseline")


def metrics(
    ndcg: dict[str, float] | None = None,
    coverage: dict[str, float] | None = None,
    segment_users: dict[str, int] | None = None,
) -> pl.DataFrame:
    """A metrics frame in the evaluation's shape: per-user means with errors, counts, coverage."""
    ndcg = ndcg or {"fused": 0.25, **{m: 0.1 + i / 100 for i, m in enumerate(SOURCES)}}
    coverage = coverage or {m: 0.5 for m in ndcg}
    segment_users = segment_users or {"all": 2017, "cold": 311, "warm": 1706}
    rows: list[dict[str, Any]] = []
    for model, value in ndcg.items():
        for segment, users in segment_users.items():
            for metric, v, se in (
                ("ndcg", value, 0.0118),
                ("recall", value + 0.05, 0.0156),
                ("precision", value / 3, 0.004),
                ("n_users", float(users), None),
            ):
                rows.append(
                    {
                        "model": model,
                        "metric": metric,
                        "k": 10,
                        "segment": segment,
                        "value": v,
                        "std_error": se,
                    }
                )
        rows.append(
            {
                "model": model,
                "metric": "coverage",
                "k": 10,
                "segment": "all",
                "value": coverage[model],
                "std_error": None,
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "model": pl.String,
            "metric": pl.String,
            "k": pl.Int32,
            "segment": pl.String,
            "value": pl.Float64,
            "std_error": pl.Float64,
        },
    )


CHECKS = pl.DataFrame(
    {
        "suite": ["events_input", "recommendations_output", "evaluation"],
        "expectation": [
            "expect_column_values_to_not_be_null",
            "expect_column_values_to_be_between",
            "expect_evaluation_users_at_least",
        ],
        "column_name": ["user_id", "list_length", "n_users"],
        "success": [True, True, False],
        "observed_value": ["0 unexpected", "0 unexpected", "12 users (at least 50 needed)"],
    }
)


def report_input(m: pl.DataFrame, **extra: Any) -> ReportInput:
    return ReportInput(
        "run-1",
        "published",
        "",
        "auto",
        m,
        None,
        None,
        np.linspace(1.0, 0.0, 20),
        CHECKS,
        {"events_read": 1_234_567, "recommendations": 20_170},
        {"ingest": 1.5},
        **extra,
    )


def svg_labels(page: str) -> list[str]:
    """The row labels of the report's first bar chart (the lift over other lists)."""
    chart = re.search(r"<svg[^>]*>(.*?)</svg>", page, re.S)
    assert chart, "no chart"
    return re.findall(r'<text x="0"[^>]*>([^<]*)</text>', chart.group(1))


def html_cells(page: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td>(.*?)</td>", page)]


# --- finding 6: numbers that mislead -------------------------------------------------------


def test_counts_print_as_integers_not_as_decimals():
    """Finding 6: segment n_users printed as '2017.0000'."""
    page = render_report(report_input(metrics()))
    cells = html_cells(page)
    assert "2,017" in cells and "311" in cells and "1,706" in cells
    assert "1,234,567" in cells and "20,170" in cells  # row counts too
    assert not re.search(r"\b(2017|311|1706)\.0", page)


def test_lift_covers_every_evaluated_list_including_the_hybrids():
    """Finding 6: the lift chart omitted the hybrids (it had four names written in)."""
    ndcg = {"fused": 0.3, **{m: 0.2 for m in SOURCES + OTHER_LISTS}}
    page = render_report(report_input(metrics(ndcg)))
    labels = " ".join(svg_labels(page))
    for model in SOURCES + OTHER_LISTS:
        assert model in labels, model
    assert "fused" not in labels  # the lift of the fused list over itself is not a row


def test_coverage_is_a_labelled_share_and_an_impossible_value_is_flagged():
    """Finding 6: content coverage showed 1.0233, as if a share could be above 1."""
    m = metrics(coverage={"fused": 0.4, **{s: 0.3 for s in SOURCES}, "content": 1.0233})
    page = render_report(report_input(m))
    assert "coverage (share of recommendable items)" in page
    cells = html_cells(page)
    assert "1.0233" not in cells  # never shown bare, as if it were a share
    assert any(c.startswith("1.0233") and "outside [0, 1]" in c for c in cells)
    assert "0.4000" in cells  # a real share is shown as it is


def test_headline_metrics_carry_their_standard_errors():
    page = render_report(report_input(metrics()))
    assert "0.2500 ± 0.0118" in html_cells(page)  # fused ndcg ± its standard error


def test_comparison_is_made_only_between_runs_that_measured_the_same_thing():
    from tasks.outputs.report import (
        NO_PREVIOUS,
        NOT_COMPARABLE_DATA,
        NOT_COMPARABLE_K,
        NOT_COMPARABLE_PROTOCOL,
        comparability,
    )

    now, before = metrics(), metrics()
    same = {"data_fingerprint": "abc"}
    assert comparability(same, same, now, before) == ""
    assert comparability(same, {"data_fingerprint": "xyz"}, now, before) == NOT_COMPARABLE_DATA
    assert comparability(same, {"data_fingerprint": None}, now, before) == NOT_COMPARABLE_DATA
    assert comparability(same, None, now, before) == NO_PREVIOUS
    at_20 = before.with_columns(pl.lit(20, pl.Int32).alias("k"))
    assert comparability(same, same, now, at_20) == NOT_COMPARABLE_K
    # Where runs record their evaluation protocol, it must match too (an unrecorded one cannot).
    p1 = {"data_fingerprint": "abc", "evaluation_protocol": '{"k":10}'}
    p2 = {"data_fingerprint": "abc", "evaluation_protocol": '{"k":20}'}
    unrecorded = {"data_fingerprint": "abc", "evaluation_protocol": None}
    assert comparability(p1, dict(p1), now, before) == ""
    assert comparability(p1, p2, now, before) == NOT_COMPARABLE_PROTOCOL
    assert comparability(p1, unrecorded, now, before) == NOT_COMPARABLE_PROTOCOL

    table = lift_table(now, before, NOT_COMPARABLE_DATA)
    assert table["relative_lift"].null_count() == table.height
    assert set(table["comparison"]) == {NOT_COMPARABLE_DATA}
    assert lift_table(now, before, "")["relative_lift"].to_list() == [0.0] * table.height


def test_markdown_holds_every_table_and_says_where_the_files_are(tmp_path: Path):
    from tasks.outputs.report import DataDocs, render_markdown

    docs = DataDocs(tmp_path / "gx" / "index.html", {"events_input": tmp_path / "gx" / "e.html"})
    m = metrics(coverage={"fused": 0.4, **{s: 0.3 for s in SOURCES}, "content": 1.0233})
    text = render_markdown(
        report_input(m, data_docs=docs, not_comparable="not comparable: different data"),
        "worker-7",
        tmp_path / "report.html",
    )
    assert "`worker-7`" in text and f"`{tmp_path / 'report.html'}`" in text
    assert f"`{docs.index}`" in text and f"`{docs.pages['events_input']}`" in text
    for heading in ("Metrics", "Lift", "previous published run", "segment", "checks", "Row"):
        assert heading in text
    assert "| fused | published | 2,017 | 0.2500 ± 0.0118 |" in text
    assert "hybrid_samples" in text and "2017.0" not in text
    assert "**1.0233 (not a share: outside [0, 1])**" in text
    assert "**not comparable: different data**" in text
    assert "| evaluation | expect_evaluation_users_at_least | n_users | **FAIL** |" in text
    assert "| evaluation | 0 | 1 |" in text  # the suite summary: passed, failed


def test_checks_of_every_suite_are_shown_with_their_data_docs_page(tmp_path: Path):
    from tasks.outputs.report import DataDocs

    page_path = tmp_path / "gx" / "validations" / "events_input.html"
    docs = DataDocs(
        tmp_path / "gx" / "index.html",
        {"events_input": page_path},
        {"recommendations_output": "OSError: No space left on device"},
    )
    page = render_report(report_input(metrics(), data_docs=docs), base=tmp_path / "run")
    assert "no Data Docs page for this run: OSError: No space left on device" in page
    assert 'href="../gx/index.html"' in page
    assert 'href="../gx/validations/events_input.html"' in page
    assert re.search(r"<b>evaluation</b>: <span class=\"bad\">1 failed</span>", page)
    assert "no Data Docs page (checked by recfusion itself)" in page


# --- finding 4 and 6 on real runs ----------------------------------------------------------


def _artifacts(flow_run_id: str, key: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    async def read() -> list[Any]:
        async with get_client() as client:
            return list(
                await client.read_artifacts(
                    artifact_filter=ArtifactFilter(
                        key=ArtifactFilterKey(any_=[key]),
                        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                    )
                )
            )

    return asyncio.run(read())


def _run(db: Path, run_id: str | None = None) -> tuple[str, str]:
    """(run_id, flow_run_id) of the given run, or of the last one started."""
    rows = query(db, "SELECT run_id, flow_run_id FROM runs ORDER BY started_at DESC")
    row = next(r for r in rows if run_id in (None, r[0]))
    return str(row[0]), str(row[1])


def _local_links(page: Path) -> list[Path]:
    """The relative links (<a href>) and sources (src) of an HTML page, as paths.

    GX's favicon <link> on validation pages is one folder short (its template counts three
    levels under the site for a page four levels down): a missing icon, not a broken link.
    """
    text = page.read_text(encoding="utf-8")
    links = re.findall(r'<a [^>]*href="([^"#:]+)(?:#[^"]*)?"', text)
    links += re.findall(r'src="([^"#:]+)"', text)
    return [(page.parent / unquote(link)).resolve() for link in links]


def test_report_is_a_markdown_artifact_in_the_ui(published_db: Path):
    """Finding 4: the report artifact was only a file:// link to the worker's disk."""
    run_id, flow_run_id = _run(published_db)
    (artifact,) = _artifacts(flow_run_id, "recfusion-report")
    assert artifact.type == "markdown"
    text = str(artifact.data)
    assert run_id in text and f"`{socket.gethostname()}`" in text
    report = published_db.parent / "recfusion-reports" / run_id / "report.html"
    assert f"`{report}`" in text
    assert re.search(r"\| fused \| published \| [\d,]+ \| 0\.\d{4} ± 0\.\d{4} \|", text)
    assert "| events_input | 7 | 0 |" in text and "| recommendations_output | 6 | 0 |" in text
    assert "no previous published run" in text


def test_great_expectations_keeps_a_linked_data_docs_site_beside_the_database(
    published_db: Path,
):
    """Finding 4: GX ran in an ephemeral context; its copied pages said run name '__none__' and
    'Data asset: None', had broken links, and report.html did not link them."""
    run_id, _ = _run(published_db)
    root = published_db.parent / "recfusion-gx" / published_db.name
    assert (root / "great_expectations.yml").exists()
    for suite in ("events_input", "recommendations_output"):
        assert (root / "checkpoints" / f"{suite}.json").exists()
        assert (root / "expectations" / f"{suite}.json").exists()
    site = root / "uncommitted" / "data_docs" / "local_site"
    pages = {
        suite: next((site / "validations" / suite / run_id).glob("*/*.html"))
        for suite in ("events_input", "recommendations_output")
    }
    for suite, asset in (("events_input", "events"), ("recommendations_output", "recommendations")):
        text = pages[suite].read_text(encoding="utf-8")
        assert f"Data asset: {asset}" in text and "__none__" not in text
        assert run_id in text
        links = _local_links(pages[suite])
        assert (site / "index.html").resolve() in links
        assert links and all(p.exists() for p in links), [p for p in links if not p.exists()]
    assert run_id in (site / "index.html").read_text(encoding="utf-8")

    report = published_db.parent / "recfusion-reports" / run_id / "report.html"
    linked = _local_links(report)
    assert (site / "index.html").resolve() in linked
    assert {p.resolve() for p in pages.values()} <= set(linked)
    assert not list(report.parent.glob("gx_*.html"))  # no more unstyled copies


def test_previous_run_on_different_data_is_marked_not_comparable(
    published_db: Path, small_source: Path, tmp_path: Path
):
    """Finding 6: the previous-run comparison compared runs on different data without saying so."""
    db = tmp_path / "rf.duckdb"
    shutil.copy(published_db, db)  # one published run on the small source
    first, _ = _run(db)
    source = tmp_path / "source"
    shutil.copytree(small_source, source)
    events = pl.read_parquet(source / "events.parquet")
    later = events.head(300).with_columns(pl.col("ts") + timedelta(hours=1))  # new events
    if "event_id" in later.columns:
        later = later.with_columns(pl.col("event_id") + "-later")
    pl.concat([events, later]).write_parquet(source / "events.parquet")

    summary = run_nightly(source, db)
    assert summary.status == "published", summary.message
    second, flow_run_id = _run(db, summary.run_id)
    assert second != first
    page = (tmp_path / "recfusion-reports" / second / "report.html").read_text(encoding="utf-8")
    section = page.split("Change against the previous published run", 1)[1].split("<h2>", 1)[0]
    assert first in section and "not comparable: different data" in section
    assert "%" not in section  # no lift
    (markdown,) = _artifacts(flow_run_id, "recfusion-report")
    assert "**not comparable: different data**" in str(markdown.data)
    (lift,) = _artifacts(flow_run_id, "recfusion-lift")
    rows = lift.data if isinstance(lift.data, list) else json.loads(lift.data)
    assert rows and all(
        r["relative_lift"] is None and r["comparison"] == "not comparable: different data"
        for r in rows
    )


PLAN = {
    "default": {"recipe": "weighted", "fuser": "weighted", "normalisation": "minmax",
                "weights": {"behavior": 0.7, "social": 0.3}},
    "cold": {"recipe": "popularity", "fuser": "single"},
    "cold_max": 2,
    "selection": [
        {"role": "default", "recipe": "weighted", "ndcg": 0.31, "gain": 0.02, "std_error": 0.004,
         "vs": "behavior", "n_users": 900},
        {"role": "default", "recipe": "rrf", "ndcg": 0.29, "gain": 0.0, "std_error": 0.003,
         "vs": "behavior", "n_users": 900},
    ],
}


def test_the_plan_and_what_failed_are_in_the_markdown_with_examples() -> None:
    from tasks.outputs.report import render_markdown

    quarantine = pl.DataFrame({
        "table_name": ["events"], "source_file": ["/data/events.csv"],
        "reason": ["ts: not a time"], "rows": [3], "first_row": [17],
        "example": ['{"user_id": "u1", "ts": "yesterday"}'],
    })
    text = render_markdown(report_input(metrics(), plan=PLAN, quarantine=quarantine), "h", None)
    assert "| all | weighted | weighted | behavior 0.7, social 0.3 | minmax |" not in text
    assert "| more than 2 items | weighted | weighted | behavior 0.7, social 0.3 | minmax |" in text
    assert "| at most 2 items (cold) | popularity | single |" in text
    assert "| default | rrf | 0.2900 |" in text  # what it was chosen among
    assert "### Failed checks (1 of 3)" in text
    assert "| evaluation | expect_evaluation_users_at_least | n_users | 12 users (at least" in text
    assert "### Rows quarantined by this run (3; first example of each reason)" in text
    assert 'ts: not a time | 3 | 17 | {"user_id": "u1", "ts": "yesterday"} |' in text
    bare = render_markdown(report_input(metrics()), "h", None)
    assert "_the run did not evaluate" in bare and "quarantined by this run (0;" in bare


def test_the_ui_shows_the_plan_the_segments_and_what_failed_with_example_rows(
    prefect_harness: None, small_source: Path, tmp_path: Path
) -> None:
    """The finding: failed checks with examples, per-segment metrics and the plan were only in
    the HTML report and Data Docs, paths on the worker the UI cannot open."""
    source = tmp_path / "source"
    shutil.copytree(small_source, source)
    events = pl.read_parquet(source / "events.parquet")
    bad = events.head(2).with_columns(pl.lit(None, pl.String).alias("user_id"))
    pl.concat([events, bad]).write_parquet(source / "events.parquet")
    db = tmp_path / "q.duckdb"
    summary = run_nightly(source, db)
    run_id, flow_run_id = _run(db)
    [(strategy,)] = query(db, "SELECT fusion_strategy FROM runs")
    assert summary.status == "published"

    (plan,) = _artifacts(flow_run_id, "recfusion-plan")
    recipe = strategy.split(";")[0]
    assert f"| {recipe} |" in str(plan.data) and "Chosen on validation among" in str(plan.data)

    (segments,) = _artifacts(flow_run_id, "recfusion-segments")
    rows = json.loads(segments.data) if isinstance(segments.data, str) else segments.data
    assert rows[0]["segment"] == "all" and rows[0]["n_users"] > 0 and "ndcg_se" in rows[0]

    (failures,) = _artifacts(flow_run_id, "recfusion-failures")
    text = str(failures.data)
    assert "### Rows quarantined by this run (2;" in text
    [(reason,)] = query(db, "SELECT DISTINCT reason FROM raw.quarantine")
    example = str(bad["item_id"][0])
    assert f"| {reason} | 2 |" in text and example in text
