"""Rows printed for operators: one column table (upper-case headers, left-aligned, two spaces apart) or
JSON, for ``kr plugins`` and for the commands plugins add (``kr bgp peers``). Pure."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence


def column_table(rows: Sequence[Mapping[str, str]], columns: Sequence[str]) -> str:
    widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip()]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


def rows_text(rows: Sequence[Mapping[str, str]], columns: Sequence[str], as_json: bool) -> str:
    """``rows`` as JSON (every field) or as a table of ``columns``."""
    return json.dumps(list(rows), indent=2) if as_json else column_table(rows, columns)
