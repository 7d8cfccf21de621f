"""Quality on every shared split, run as a user runs the product; printed beside the peers.

For each `*-split` folder in ../shared/data (or --data): `recfusion run --source <split>/train`
into a fresh database (optionally `recfusion tune` first), then `recfusion evaluate --test
<split>/test.parquet --json`. Prints, per data set, the fused list and every source of the same
run, and the peer table of that split's README, with NDCG/Recall/Precision@10 and coverage.

    python benchmarks/quality.py [--data DIR] [--only NAME] [--tune TRIALS] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
METRICS = ("ndcg@10", "recall@10", "precision@10", "coverage@10")


def peers(readme: Path) -> list[dict[str, str]]:
    """The 'Well-known libraries' table of a split README: model, NDCG, Recall, Precision, cov."""
    rows, header = [], None
    in_section = False
    for line in readme.read_text().splitlines():
        if line.startswith("## "):
            in_section = "well-known" in line.lower()
            header = None
            continue
        if not in_section or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = [c.lower() for c in cells]
            continue
        if set("".join(cells)) <= set("-: "):
            continue
        row = dict(zip(header, cells, strict=False))
        rows.append({"list": row.get("model", ""), "ndcg@10": row.get("ndcg@10", ""),
                     "recall@10": row.get("recall@10", ""),
                     "precision@10": row.get("precision@10", ""),
                     "coverage@10": row.get("coverage", "")})
    return rows


def recfusion(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)


def run_split(split: Path, tune_trials: int, workdir: Path, env: dict[str, str]
              ) -> tuple[dict[str, dict[str, float]], float, str]:
    db = workdir / f"{split.name}.duckdb"
    source = str(split / "train")
    start = time.perf_counter()
    if tune_trials:
        # The tune flow reads the warehouse, so the data must be in it first: ingest, tune, run.
        done = recfusion("ingest", "--source", source, "--db", str(db), env=env)
        if done.returncode:
            raise RuntimeError(done.stderr.strip().splitlines()[-1])
        done = recfusion("tune", "--source", source, "--db", str(db), "--trials",
                         str(tune_trials), env=env)
        if done.returncode:
            raise RuntimeError(done.stderr.strip().splitlines()[-1])
    done = recfusion("run", "--source", source, "--db", str(db), env=env)
    seconds = time.perf_counter() - start
    last = (done.stdout.strip().splitlines() or [""])[-1]
    if done.returncode:
        raise RuntimeError((done.stderr.strip().splitlines() or ["?"])[-1])
    out = recfusion("evaluate", "--db", str(db), "--test", str(split / "test.parquet"),
                    "--json", env=env)
    if out.returncode:
        raise RuntimeError(out.stderr.strip())
    return json.loads(out.stdout), seconds, last


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def table(name: str, results: dict[str, dict[str, float]], peer_rows: list[dict[str, str]],
          seconds: float, plan: str) -> str:
    fused = results.get("fused", {})
    sources = {k: v for k, v in results.items() if k != "fused"}
    best_source = max(sources, key=lambda k: sources[k].get("ndcg@10", 0.0)) if sources else None
    best_peer = max((float(r["ndcg@10"]), r["list"]) for r in peer_rows
                    if re.fullmatch(r"[0-9.]+", r["ndcg@10"])) if peer_rows else None
    lines = [f"### {name}", "",
             f"run + evaluate: {seconds:.0f} s; {plan}", "",
             "| list | " + " | ".join(m.replace("@10", "@10") for m in METRICS) + " |",
             "|---|" + "---|" * len(METRICS)]
    for list_name, values in [("fused", fused), *sorted(sources.items())]:
        lines.append(f"| {list_name} | " + " | ".join(_fmt(values.get(m, "")) for m in METRICS)
                     + " |")
    for r in peer_rows:
        lines.append(f"| peer: {r['list']} | " + " | ".join(r[m] for m in METRICS) + " |")
    if best_source and fused:
        f = fused.get("ndcg@10", 0.0)
        b = sources[best_source].get("ndcg@10", 0.0)
        lines += ["", f"fused / best source ({best_source}): {f / b:.3f}" if b else ""]
        if best_peer:
            lines.append(f"fused / best peer ({best_peer[1]}): {f / best_peer[0]:.3f}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--only", help="run only the split whose name contains this")
    parser.add_argument("--tune", type=int, default=0, help="run `recfusion tune` with N trials")
    parser.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    args = parser.parse_args()
    splits = sorted(p for p in args.data.glob("*-split") if (p / "train").is_dir())
    if args.only:
        splits = [s for s in splits if args.only in s.name]
    env = dict(os.environ)
    env.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="recfusion-quality-prefect-"))
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    chunks = []
    with tempfile.TemporaryDirectory(prefix="recfusion-quality-") as tmp:
        for split in splits:
            try:
                results, seconds, last = run_split(split, args.tune, Path(tmp), env)
            except RuntimeError as exc:
                print(f"### {split.name}\n\nfailed: {exc}\n", flush=True)
                continue
            plan = last.split("(fusion ")[-1].split(";")[0] if "(fusion " in last else last
            chunk = table(split.name, results, peers(split / "README.md"), seconds,
                          f"fusion {plan}")
            print(chunk, flush=True)
            chunks.append(chunk)
    if args.out:
        args.out.write_text("\n".join(chunks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
