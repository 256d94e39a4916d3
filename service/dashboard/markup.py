"""Small HTML building blocks: every value is escaped unless it is `Safe` markup built here.

No template engine: the pages are a handful of tables and canvases, and one rule (escape what is not
`Safe`) keeps user-controlled text such as device and model names inert.
"""
from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from urllib.parse import quote

__all__ = [
    "Safe",
    "attrs",
    "esc",
    "fmt_count",
    "fmt_ms",
    "fmt_pct",
    "fmt_time",
    "join",
    "layout",
    "link",
    "table",
    "url_segment",
]

STATIC_PREFIX = "/static"
_DASH = "–"


class Safe(str):
    """Markup that is already escaped (built by this module's helpers)."""

    __slots__ = ()


def esc(value: object) -> Safe:
    """The value as HTML text: Safe markup passes, anything else is escaped (quotes included); None is a dash."""
    if isinstance(value, Safe):
        return value
    if value is None:
        return Safe(_DASH)
    return Safe(html.escape(str(value), quote=True))


def join(parts: Iterable[object], separator: str = "") -> Safe:
    return Safe(esc(separator).join(esc(part) for part in parts))


def attrs(values: Mapping[str, object]) -> Safe:
    """` name="value"` pairs, escaped; None values are left out."""
    return Safe("".join(f' {esc(name)}="{esc(value)}"' for name, value in values.items() if value is not None))


def url_segment(value: str) -> str:
    """A path segment that round-trips any name (slashes and all)."""
    return quote(value, safe="")


def link(href: str, text: object, **extra: object) -> Safe:
    return Safe(f"<a{attrs({'href': href, **extra})}>{esc(text)}</a>")


def table(headers: Sequence[object], rows: Iterable[Sequence[object]], table_id: str | None = None,
          empty: str = "nothing yet") -> Safe:
    """A table; cells are escaped unless Safe. An empty table says so in one spanning row."""
    head = "".join(f"<th>{esc(header)}</th>" for header in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        body = f'<tr class="empty"><td colspan="{len(headers)}">{esc(empty)}</td></tr>'
    return Safe(f"<table{attrs({'id': table_id})}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def fmt_ms(value: float | None) -> str:
    if value is None:
        return _DASH
    return f"{value:.3f} ms" if value < 100 else f"{value:.1f} ms"


def fmt_pct(share: float | None, signed: bool = False) -> str:
    if share is None:
        return _DASH
    return f"{share * 100:+.1f}%" if signed else f"{share * 100:.0f}%"


def fmt_count(value: float | None) -> str:
    if value is None:
        return _DASH
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}" if isinstance(value, float) and not value.is_integer() else str(int(value))


def fmt_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else _DASH


def layout(title: str, body: Safe, page: str, data: Mapping[str, object] | None = None,
           charts: bool = False) -> str:
    """A whole page: nav bar, body, and the scripts (Chart.js only on pages with charts)."""
    body_attrs = attrs({"data-page": page, **{f"data-{name}": value for name, value in (data or {}).items()}})

    def active(*pages: str) -> str:
        return ' class="active"' if page in pages else ""

    scripts = f'<script src="{STATIC_PREFIX}/vendor/chart.umd.js"></script>' if charts else ""
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · latpred</title>"
        # An empty icon: browsers would otherwise ask for /favicon.ico and log its 404 as an error.
        '<link rel="icon" href="data:,">'
        f'<link rel="stylesheet" href="{STATIC_PREFIX}/dashboard.css"></head>'
        f"<body{body_attrs}>"
        '<nav class="topnav"><a class="brand" href="/">latpred</a>'
        f'<a href="/"{active("devices", "device")}>Devices</a>'
        f'<a href="/models"{active("models")}>Models</a>'
        '<a href="/docs">API</a></nav>'
        f"<main>{body}</main>"
        f'{scripts}<script src="{STATIC_PREFIX}/dashboard.js"></script>'
        "</body></html>\n"
    )
