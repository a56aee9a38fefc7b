"""Keep the rows of superseded weights when a model is retrained: mark them † with what they
were measured on, name the weights in their labels, and move them to retired groups, so
that `python experiments/run.py --only GROUP` scores the new weights beside them instead of
replacing them.

    python experiments/mark_earlier_rows.py --task blood-rare-rbc --tag "no mixup" \\
        --measured-on "the earlier blood-v1 (...)" --models blood-v1 blood-v1-metabaseline ...

A row is marked when its task matches, it is not marked already and its model is one of
--models. Its label gets the tag after the first `blood-v1` (`blood-v1 + SimpleShot` ->
`blood-v1 (no mixup) + SimpleShot`, `blood-v1 (output)` -> `blood-v1 (no mixup, output)`),
and so does every paired reference that names a marked row. Its group gets the suffix
`-` + the tag's words joined by `-` (`supervised` -> `supervised-no-mixup`). RESULTS.md is
rewritten from RESULTS.json.
"""

from __future__ import annotations

import argparse
import json
import re

import run
from rows import load_groups

NAME = re.compile(r"\bblood-v1(?![-\w])( \()?")


def tagged(label: str, tag: str) -> str:
    """The label with the tag after its first `blood-v1`, merged into a parenthesis there."""
    def put(match: re.Match) -> str:
        return f"blood-v1 ({tag}, " if match.group(1) else f"blood-v1 ({tag})"
    return NAME.sub(put, label, count=1)


def mark(rows: list[dict], task: str, models: set[str], tag: str, measured_on: str) -> int:
    chosen = [r for r in rows if r["task"] == task and not r.get("measured_on")
              and r["model"] in models]
    renamed = {r["label"]: tagged(r["label"], tag) for r in chosen}
    suffix = "-" + "-".join(tag.split())
    for r in chosen:
        r["label"] = renamed[r["label"]]
        r["group"] += suffix
        r["measured_on"] = measured_on
        for paired in [r["paired"], *r.get("paired_members", [])]:
            paired["reference"] = renamed.get(paired["reference"], paired["reference"])
    return len(chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--tag", required=True, help="what the labels call those weights")
    parser.add_argument("--measured-on", required=True, help="the † note's 'Measured on ...'")
    args = parser.parse_args()
    stored = json.loads(run.RESULTS_JSON.read_text())
    count = mark(stored["rows"], args.task, set(args.models), args.tag, args.measured_on)
    registered = load_groups()
    run.write(stored["rows"], run.unscored(stored["rows"], registered, stored["tier"]),
              stored["tier"], [g.name for g in registered])
    print(f"marked {count} rows of {args.task} as measured on {args.measured_on}")


if __name__ == "__main__":
    main()
