"""Label matchers added to every series selector of a PromQL expression.

The dashboards' queries are written once, without the selector of any one installation; the
mixin scopes each of them when it renders (`scope`). Only the service's own series are scoped:
its metrics (`delineate_*`), its recording rules (`delineate:*`) and `up`. A small scanner, not
a regular expression: label values hold braces (`route="/v1/download/stream/{job_id}"`).
"""

from __future__ import annotations

import re

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _string_end(expr: str, start: int) -> int:
    """The index just past the quoted string that opens at `start`."""
    quote, i = expr[start], start + 1
    while expr[i] != quote:
        i += 2 if expr[i] == "\\" else 1
    return i + 1


def _closing(expr: str, start: int, close: str) -> int:
    """The index of the `close` that ends the bracket opening at `start`, strings skipped."""
    i = start + 1
    while expr[i] != close:
        i = _string_end(expr, i) if expr[i] in "\"'`" else i + 1
    return i


def scope(expr: str, raw: list[str], recorded: list[str]) -> str:
    """`expr` with the matchers `raw` added to every `delineate_*` and `up` selector and
    `recorded` added to every `delineate:*` one (a recording rule keeps only the labels it
    groups by, so the scrape-job selector would match nothing there)."""
    out, i = [], 0
    while i < len(expr):
        char = expr[i]
        if char in "\"'`":
            end = _string_end(expr, i)
        elif char in "{[":
            end = _closing(expr, i, "}" if char == "{" else "]") + 1
        elif (name := NAME.match(expr, i)) and (i == 0 or not expr[i - 1].isalnum()):
            end = name.end()
            matchers = recorded if ":" in name.group() else raw
            ours = name.group().startswith("delineate") or name.group() == "up"
            if not matchers or not ours or expr[end:].lstrip().startswith("("):
                pass  # not a selector of the service's series (or a function call)
            elif expr[end : end + 1] == "{":
                close = _closing(expr, end, "}")
                inside = expr[end + 1 : close].strip()
                out.append(expr[i:end] + "{" + ", ".join([inside, *matchers] if inside else matchers) + "}")
                i = close + 1
                continue
            else:
                out.append(name.group() + "{" + ", ".join(matchers) + "}")
                i = end
                continue
        else:
            end = i + 1
        out.append(expr[i:end])
        i = end
    return "".join(out)
