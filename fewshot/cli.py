"""The `fewshot` command line (Typer). Errors are one line; exit codes per CONTRACT.md."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fewshot import __version__
from fewshot.errors import FewShotError, UsageError

app = typer.Typer(
    name="fewshot",
    help="Few-shot and meta-transfer learning for medical images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Check image folders; write the shipped sample.", no_args_is_help=True)
app.add_typer(data_app, name="data")

out = Console(highlight=False, soft_wrap=True)

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only results and errors.")]


def _version(value: bool) -> None:
    if value:
        print(f"fewshot {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Few-shot and meta-transfer learning for medical images."""


@data_app.command("check")
def data_check(
    folder: Annotated[Path, typer.Argument(metavar="DIR",
                                           help="Folder laid out as <class>/<images>.")],
    shots: Annotated[int, typer.Option(min=1, help="Support images per class.")] = 5,
    queries: Annotated[int, typer.Option(min=0, help="Query images per class.")] = 15,
    write_groups: Annotated[Path | None, typer.Option(
        "--write-groups", metavar="FILE",
        help="Write path,group CSV: source groups with near-duplicates merged.")] = None,
    group_key: Annotated[str | None, typer.Option(
        "--group-key", metavar="REGEX",
        help="Source group of a file name for --write-groups, e.g. '^(\\d+)_'; "
             "default: each file its own group.")] = None,
    near_duplicates: Annotated[bool, typer.Option(
        "--near-duplicates/--no-near-duplicates",
        help="Search for re-encoded or shifted copies.")] = True,
    max_shift: Annotated[int, typer.Option(
        min=0, max=24, help="Largest shift (px at 64 px) of a near-duplicate.")] = 8,
    quiet: Quiet = False,
) -> None:
    """Per-class table and every problem found: unreadable files, empty or small
    classes, byte-identical and near-duplicate images (across classes: label
    conflicts). Exit 1 if any."""
    from fewshot.data.check import check_folder, write_groups_for

    if group_key is not None:
        _check_regex(group_key)
    report = check_folder(folder, shots=shots, queries=queries,
                          near_duplicates=near_duplicates, max_shift=max_shift, quiet=quiet)
    if not quiet:
        table = Table(title=f"{folder}  ({len(report.classes)} classes)")
        for column in ("class", "images", "min size", "median size", "modes"):
            table.add_column(column, justify="right" if column == "images" else "left")
        for stat in report.classes:
            modes = ", ".join(f"{m}" for m, _ in stat.modes.most_common()) or "-"
            table.add_row(stat.name, str(stat.images), stat.min_size(), stat.median_size(), modes)
        out.print(table)
    for kind, path, reason in report.findings:
        out.print(f"{kind}: {path}: {reason}", markup=False)
    if write_groups is not None:
        count = write_groups_for(report, write_groups, group_key)
        out.print(f"wrote {count} groups for {len(report.paths)} images to {write_groups}",
                  markup=False)
    if report.findings:
        summary = ", ".join(f"{n} {kind}" for kind, n in sorted(report.kinds().items()))
        print(f"{len(report.findings)} problem(s): {summary}", file=sys.stderr)
        raise typer.Exit(1)
    out.print(f"ok: {sum(s.images for s in report.classes)} images in "
              f"{len(report.classes)} classes, no problems found")


def _check_regex(pattern: str) -> None:
    import re

    try:
        re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"invalid --group-key regex: {exc}", pattern,
                         "e.g. '^(\\d+)_' for the digits before the first underscore") from None


@data_app.command("sample")
def data_sample(
    folder: Annotated[Path, typer.Argument(metavar="DIR",
                                           help="Where to write <class>/<images>.")],
    force: Annotated[bool, typer.Option("--force",
                                        help="Write into a non-empty DIR.")] = False,
    quiet: Quiet = False,
) -> None:
    """Write the shipped sample's new (novel) classes as a folder to adapt to."""
    from fewshot.data.sample import write_sample

    written = write_sample(folder, force=force)
    if not quiet:
        for name, count in written.items():
            out.print(f"{folder / name}: {count} images", markup=False)
    out.print(f"wrote {sum(written.values())} images in {len(written)} classes to {folder}",
              markup=False)


def _click_error(exc: BaseException) -> int | None:
    """Exit code for the command-line parser's own exceptions (Typer vendors click, so
    they are matched by shape, not by class); None for anything else."""
    name = type(exc).__name__
    if name == "NoArgsIsHelpError":
        ctx = getattr(exc, "ctx", None)
        print(ctx.get_help() if ctx else "", file=sys.stderr)
        return 0
    if name == "Abort":
        return 130
    if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx else "fewshot"
        print(f"error: {exc.format_message()} ({command}): see '{command} --help'",
              file=sys.stderr)
        return int(exc.exit_code)
    return None


def main() -> None:
    """Console entry point: maps failures to one-line errors and CONTRACT.md exit codes."""
    debug = os.environ.get("FEWSHOT_DEBUG") == "1"
    try:
        code = app(standalone_mode=False)
    except FewShotError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        status = _click_error(exc)
        if status is None or debug:
            raise
        sys.exit(status)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
