"""The curation report: per step and source, documents, characters and tokens in and out, and what was removed.

Counts come from datatrove's per-task stats files (`<work>/stages/*/stats/*.json`), where `steps.Counted` and the
source reader record them under `label|source|metric` keys; the removed documents of each step are the rows its
`RemovalLog` wrote (`<work>/removed/<label>/`). Written as `report.json` and as the table `report.txt`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from olmo_jax import atomic
from olmo_jax.curate.shards import read_removals

REPORT_JSON = "report.json"
REPORT_TEXT = "report.txt"
# Removed-document rows kept in report.json per step (all of them are in <work>/removed/<step>/).
MAX_LISTED = 1000


def _total(value: Any) -> float:
    return value.get("total", 0) if isinstance(value, dict) else float(value or 0)


def collect_counts(stages: Path) -> dict[str, dict[str, dict[str, float]]]:
    """label -> source -> metric -> sum over every task of every stage."""
    counts: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(float)))
    for path in sorted(stages.glob("*/stats/*.json")):
        for step in json.loads(path.read_text()):
            for key, value in step.get("stats", {}).items():
                parts = key.split("|")
                if len(parts) == 3:
                    counts[parts[0]][parts[1]][parts[2]] += _total(value)
    return counts


def _percent(removed: float, total: float) -> float:
    return round(100.0 * removed / total, 3) if total else 0.0


def _row(metrics: dict[str, float]) -> dict[str, Any]:
    metric_names = ("docs_in", "docs_out", "chars_in", "chars_out", "tokens_in", "tokens_out")
    row = {k: int(metrics.get(k, 0)) for k in metric_names}
    row["docs_removed_percent"] = _percent(row["docs_in"] - row["docs_out"], row["docs_in"])
    row["tokens_removed_percent"] = _percent(row["tokens_in"] - row["tokens_out"], row["tokens_in"])
    row["chars_removed_percent"] = _percent(row["chars_in"] - row["chars_out"], row["chars_in"])
    for extra in ("changed", "emptied", "malformed", "empty"):
        if metrics.get(extra):
            row[extra] = int(metrics[extra])
    return row


def build_report(work: Path, manifest: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """The report as a JSON-serialisable dict (see the module docstring)."""
    counts = collect_counts(work / "stages")
    steps = []
    for step in [{"label": "read", "kind": "read", "params": {}}, *info["steps"]]:
        label = step["label"]
        per_source = {s: _row(counts[label][s]) for s in info["sources"] if s in counts.get(label, {})}
        total: dict[str, float] = defaultdict(float)
        for source in info["sources"]:
            for metric, value in counts.get(label, {}).get(source, {}).items():
                total[metric] += value
        removed = read_removals(work / "removed" / label)
        entry = {
            "step": label,
            "kind": step["kind"],
            "params": step["params"],
            "sources": per_source,
            "total": _row(total),
            "engine_stats": {k: int(v) for k, v in sorted(counts.get(label, {}).get("*", {}).items())},
            "removed_documents": len(removed),
            "removed": removed[:MAX_LISTED],
        }
        steps.append(entry)
    return {
        "fingerprint": info["fingerprint"],
        "sources": info["sources"],
        "steps": steps,
        "decontamination_index": info.get("decontamination_index"),
        "output": {
            "token_files": len(manifest["files"]),
            "documents": manifest["documents"],
            "tokens": manifest["tokens"],
            "dtype": manifest["dtype"],
        },
    }


def format_table(report: dict[str, Any]) -> str:
    """A readable table: one row per step and source, then the step's total."""
    header = (
        f"{'step':<20} {'source':<12} {'docs in':>10} {'docs out':>10} {'removed':>8} "
        f"{'tokens in':>12} {'tokens out':>12} {'removed':>8} {'changed':>8}"
    )
    lines = [header, "-" * len(header)]
    for step in report["steps"]:
        rows = list(step["sources"].items())
        if len(rows) > 1:
            rows.append(("(all)", step["total"]))
        for source, row in rows:
            lines.append(
                f"{step['step']:<20} {source:<12} {row['docs_in']:>10,} {row['docs_out']:>10,} "
                f"{row['docs_removed_percent']:>7.2f}% {row['tokens_in']:>12,} {row['tokens_out']:>12,} "
                f"{row['tokens_removed_percent']:>7.2f}% {row.get('changed', 0):>8,}"
            )
    out = report["output"]
    lines.append(f"output: {out['token_files']} token files, {out['documents']:,} documents, {out['tokens']:,} tokens")
    return "\n".join(lines)


def write_report(output: Path, manifest: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """Write `report.txt` then `report.json` into `output` (the JSON last: it marks the run as finished)."""
    report = build_report(Path(info["work"]), manifest, info)
    atomic.write_text(output / REPORT_TEXT, format_table(report) + "\n")
    atomic.write_json(output / REPORT_JSON, report, indent=1)
    return report
