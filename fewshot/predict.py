"""`fewshot predict`: which files to read, and predictions as CSV or JSON rows.

Both formats carry the same columns: `path`, `prediction`, `probability` (calibrated),
then `top1`, `top1_probability`, ... with `--top-k`, one `p_<class>` column per class,
`ood_score` and `out_of_domain` (the image against the adapted classes' support images,
fewshot.ood), `in_support` (the file's content is one of the support images': its
prediction is no evidence), and `error` (empty unless the file could not be read).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from fewshot.errors import UsageError

TRUST_COLUMNS = ("ood_score", "out_of_domain", "in_support")


def flat_rows(records: list[dict[str, Any]], classes: list[str], top_k: int
              ) -> tuple[list[str], list[dict[str, Any]]]:
    """Column names and one flat row per record (the CSV and JSON layout)."""
    k = min(top_k, len(classes))
    columns = ["path", "prediction", "probability"]
    for i in range(1, k + 1):
        columns += [f"top{i}", f"top{i}_probability"]
    columns += [f"p_{name}" for name in classes] + list(TRUST_COLUMNS) + ["error"]
    rows = []
    for record in records:
        row: dict[str, Any] = {"path": record["path"], "prediction": record["prediction"],
                               "probability": record["probability"]}
        for i in range(1, k + 1):
            pair = record["top_k"][i - 1] if len(record["top_k"]) >= i else (None, None)
            row[f"top{i}"], row[f"top{i}_probability"] = pair
        for name in classes:
            row[f"p_{name}"] = record["probabilities"].get(name)
        for name in TRUST_COLUMNS:
            row[name] = record.get(name)
        row["error"] = record["error"]
        rows.append(row)
    return columns, rows


def render(records: list[dict[str, Any]], classes: list[str], fmt: str, top_k: int) -> str:
    columns, rows = flat_rows(records, classes, top_k)
    if fmt == "json":
        return json.dumps(rows, indent=2, ensure_ascii=False) + "\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([safe_cell(c) for c in columns])
    for row in rows:
        writer.writerow([cell(value) for value in (row[c] for c in columns)])
    return buffer.getvalue()


def cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:.6f}" if isinstance(value, float) else safe_cell(value)


def safe_cell(value: object) -> object:
    """A text cell a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR)
    gets a leading apostrophe; numbers and the JSON output are left as they are."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def transductive_note(model: Any, records: list[dict]) -> str:
    """What a transductive head did with this call's images: one joint problem, or (too
    few of them) each image on its own by the head's inductive rule."""
    from fewshot.methods.common import MIN_QUERIES_PER_CLASS

    method = model.method
    read = sum(r["error"] is None for r in records)
    images = f"{read} image{'s' if read != 1 else ''}"
    if not model.joint(read):
        return (f"{method} is transductive, but with {images} (fewer than "
                f"{MIN_QUERIES_PER_CLASS} a class) each was classified on its own by the "
                "head's inductive rule; predict a batch for the joint answer")
    return (f"{method} is transductive: the {images} were classified jointly, so each "
            "prediction depends on the others")


def predict_command(adapted_dir: Path, paths: list[Path], out: Path | None, fmt: str,
                    top_k: int | None, reject_below: float | None, quiet: bool) -> int:
    """`fewshot predict`: write the rows; returns how many files could not be read."""
    from fewshot.adapted import Adapted
    from fewshot.data.files import atomic_write

    if out is not None and out.is_dir():
        raise UsageError("--out names a folder", out, "pass a file name, e.g. predictions.csv")
    model = Adapted.load(adapted_dir)
    if reject_below is not None and "unknown" in model.classes:
        raise UsageError("a class is named 'unknown', the answer of --reject-below",
                         adapted_dir, "rename that class folder and adapt again")
    records = model.predict(paths, top_k=top_k, reject_below=reject_below, quiet=quiet)
    if model.transductive and not quiet:
        print(f"note: {transductive_note(model, records)}", file=sys.stderr)
    text = render(records, model.classes, fmt, top_k or 0)
    if out is None:
        sys.stdout.write(text)
    else:
        atomic_write(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    failed = [r for r in records if r["error"] is not None]
    for record in failed:
        print(f"error: {record['error']} ({record['path']})", file=sys.stderr)
    if not quiet or failed:
        print(f"{len(records) - len(failed)} predicted, {len(failed)} failed"
              + (f"; written to {out}" if out is not None else ""), file=sys.stderr)
    return len(failed)
