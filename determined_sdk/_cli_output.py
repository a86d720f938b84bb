"""How ``detsdk`` prints tables and records: rich tables on a terminal, plain untruncated
columns when piped, or ``--json`` / ``--csv`` for scripts.

A command describes what it shows with :meth:`Output.record` (one object's fields) and
:meth:`Output.table` (rows); :meth:`Output.flush` prints them in the chosen format. JSON keeps
values typed (numbers stay numbers); a list command prints a JSON array, a describe command one
object with each table under its own key. CSV prints a header row, then rows; a record is one
row; several sections are separated by a blank line.
"""

from __future__ import annotations

import csv
import datetime
import enum
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

F = TypeVar("F", bound=Callable[..., Any])


class Format(enum.Enum):
    RICH = "rich"
    PLAIN = "plain"
    JSON = "json"
    CSV = "csv"


def _text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return "" if v is None else str(v)


def _jsonable(v: Any) -> Any:
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, datetime.datetime):
        return v.isoformat()
    return v


@dataclass
class _Section:
    title: str | None
    columns: Sequence[str]
    rows: list[Sequence[Any]]
    record: bool = False


@dataclass
class Output:
    """What one command prints, gathered, then printed in one format."""

    format: Format
    sections: list[_Section] = field(default_factory=list)

    def record(self, pairs: Sequence[tuple[str, Any]]) -> None:
        """One object's fields (a two-column listing on a terminal)."""
        self.sections.append(
            _Section(None, [k for k, _ in pairs], [[v for _, v in pairs]], record=True)
        )

    def table(
        self, title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Rows under column names; ``title`` names the table inside a describe."""
        self.sections.append(_Section(title, columns, list(rows)))

    def flush(self) -> None:
        """Print everything gathered, then forget it."""
        sections, self.sections = self.sections, []
        if self.format is Format.JSON:
            click.echo(json.dumps(_as_json(sections), indent=2, default=str))
        elif self.format is Format.CSV:
            _print_csv(sections)
        else:
            for s in sections:
                _print_human(s, self.format)


def _objects(s: _Section) -> list[dict[str, Any]]:
    return [{c: _jsonable(v) for c, v in zip(s.columns, row, strict=True)} for row in s.rows]


def _as_json(sections: list[_Section]) -> Any:
    if len(sections) == 1 and not sections[0].record:
        return _objects(sections[0])
    out: dict[str, Any] = {}
    for s in sections:
        if s.record:
            out.update(_objects(s)[0])
        else:
            out[(s.title or "items").lower().replace(" ", "_")] = _objects(s)
    return out


def _print_csv(sections: list[_Section]) -> None:
    w = csv.writer(sys.stdout, lineterminator="\n")
    for i, s in enumerate(sections):
        if i:
            sys.stdout.write("\n")
        w.writerow(s.columns)
        for row in s.rows:
            w.writerow([_text(v) for v in row])
    sys.stdout.flush()


def _print_human(s: _Section, fmt: Format) -> None:
    if fmt is Format.RICH:
        console = Console(highlight=False, soft_wrap=True)
        if s.record:
            t = Table(show_header=False, box=None, pad_edge=False)
            t.add_column(style="bold")
            t.add_column()
            for k, v in zip(s.columns, s.rows[0], strict=True):
                t.add_row(k, escape(_text(v)))
        else:
            t = Table(title=s.title, show_lines=False, header_style="bold")
            for c in s.columns:
                t.add_column(c)
            for r in s.rows:
                t.add_row(*(escape(_text(x)) for x in r))
        console.print(t)
        return
    # Plain: every value whole, columns padded, nothing cut to a terminal's width.
    if s.record:
        width = max((len(k) for k in s.columns), default=0)
        for k, v in zip(s.columns, s.rows[0], strict=True):
            click.echo(f"{k:<{width}}  {_text(v)}".rstrip())
        return
    if s.title:
        click.echo(f"\n{s.title}")
    cells = [list(s.columns)] + [[_text(v) for v in r] for r in s.rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(s.columns))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def choose_format(as_json: bool, as_csv: bool) -> Format:
    """``--json``/``--csv`` if given; else rich on a terminal, plain when piped."""
    if as_json and as_csv:
        raise click.UsageError("give at most one of --json and --csv")
    if as_json:
        return Format.JSON
    if as_csv:
        return Format.CSV
    return Format.RICH if sys.stdout.isatty() else Format.PLAIN


def output_options(fn: F) -> F:
    """Add ``--json`` and ``--csv`` to a list or describe command."""
    fn = click.option("--csv", "as_csv", is_flag=True, help="Print CSV.")(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(fn)
    return fn
