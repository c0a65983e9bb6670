"""A report as one self-contained HTML page: what was asked at the top, then a grid of the images found.

Everything the page shows is inside the file: thumbnails as data: URIs, the style sheet inline, no script and no
link to anything, and a Content-Security-Policy that forbids the browser to load anything else, so the page opens
the same on an offline machine years later and reveals nothing to a network when opened. Every string from the
evidence (paths, EXIF text) is escaped: a file named `<script>.jpg` is shown as its name.
"""

from __future__ import annotations

from html import escape

from .thumbnails import Thumbnail, thumbnail

# Beyond this many images the cards have no thumbnail (each is ~8 KB inside the page and a few ms to make); the
# page says so, and the CSV and JSON list every image either way.
MAX_THUMBNAILS = 2000

_STYLE = """
:root { color-scheme: light; font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
body { margin: 0; padding: 24px; background: #f4f5f7; color: #1d2330; }
h1 { margin: 0 0 12px; font-size: 22px; }
h2 { margin: 28px 0 10px; font-size: 17px; }
.about { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0 0 16px;
  background: #fff; border: 1px solid #d9dce3; border-radius: 6px; padding: 12px 16px; }
.about dt { font-weight: 600; }
.about dd { margin: 0; overflow-wrap: anywhere; }
.query-image { display: flex; gap: 12px; align-items: flex-start; }
.note { color: #5a6170; font-size: 13px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 14px; }
.hit { margin: 0; background: #fff; border: 1px solid #d9dce3; border-radius: 6px; padding: 10px;
  display: flex; flex-direction: column; gap: 8px; }
.picture { display: flex; justify-content: center; align-items: center; min-height: 120px; background: #eceef2; }
.picture img { max-width: 100%; height: auto; display: block; }
.missing { padding: 24px 8px; color: #8a2b2b; font-size: 13px; text-align: center; }
.score { font-weight: 600; }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 8px; margin: 0; font-size: 12px; }
.facts dt { color: #5a6170; }
.facts dd { margin: 0; overflow-wrap: anywhere; white-space: pre-line; }
.hash { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 11px; }
"""

_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _text(value) -> str:
    return escape("" if value is None else str(value), quote=True)


def _picture(path: str, made: list[int]) -> str:
    """The card's picture: a thumbnail while fewer than MAX_THUMBNAILS were made, else a note."""
    if made[0] >= MAX_THUMBNAILS:
        return '<div class="missing">no thumbnail (see the note at the top)</div>'
    picture = thumbnail(path)
    if not isinstance(picture, Thumbnail):
        return f'<div class="missing">cannot show the picture now: {_text(picture)}</div>'
    made[0] += 1
    return (f'<img src="{picture.data_uri}" width="{picture.width}" height="{picture.height}" '
            f'alt="{_text(path)}">')


def _size(value) -> str | None:
    return None if value is None else f"{value:,} bytes"


def _facts(hit: dict) -> str:
    gps = hit.get("gps")
    date = hit.get("date_taken")
    if date and hit.get("date_source"):
        date = f"{date} ({'EXIF' if hit['date_source'] == 'exif' else 'file modified'})"
    pixels = f"{hit['width']} x {hit['height']}" if hit.get("width") and hit.get("height") else None
    rows = [
        ("Path", hit.get("path"), ""),
        ("SHA-256", hit.get("sha256"), "hash"),
        ("MD5", hit.get("md5"), "hash"),
        ("Size", _size(hit.get("size")), ""),
        ("Pixels", pixels, ""),
        ("Format", hit.get("format"), ""),
        ("Taken", date, ""),
        ("Camera", hit.get("camera"), ""),
        ("Lens", hit.get("lens"), ""),
        ("GPS", f"{gps['lat']:.6f}, {gps['lon']:.6f}" if gps else None, ""),
        ("Orientation", hit.get("orientation"), ""),
        ("Copies", "\n".join(hit.get("duplicates") or ()) or None, ""),
    ]
    cells = [f'<dt>{label}</dt><dd class="{css}">{_text(value)}</dd>' if css else f"<dt>{label}</dt><dd>{_text(value)}"
             "</dd>" for label, value, css in rows if value is not None]
    return f'<dl class="facts">{"".join(cells)}</dl>'


def _card(hit: dict, heading: str, made: list[int]) -> str:
    return (f'<figure class="hit"><div class="picture">{_picture(hit["path"], made)}</div>'
            f'<figcaption><div class="score">{_text(heading)}</div><div>{_text(hit.get("title"))}</div>'
            f"{_facts(hit)}</figcaption></figure>")


def _about(rows: list[tuple[str, str]]) -> str:
    """rows: (label, already-escaped HTML)."""
    return '<dl class="about">' + "".join(f"<dt>{label}</dt><dd>{html}</dd>" for label, html in rows) + "</dl>"


def _query(report: dict, made: list[int]) -> str:
    query = report["query"]
    if "text" in query:
        return f"&ldquo;{_text(query['text'])}&rdquo; (text)"
    return (f'<div class="query-image"><div class="picture">{_picture(query["image"], made)}</div><div>'
            f'{_text(query["image"])}<br><span class="hash">SHA-256 {_text(query.get("sha256"))}</span></div></div>')


def _search_body(report: dict, made: list[int]) -> tuple[str, str]:
    results = report["results"]
    about = _about([("Query", _query(report, made)), ("Dataset", _text(report["dataset"])),
                    ("Model", _text(report["model"])), ("Searched at", _text(report["searched_at"])),
                    ("Tool", _text(f"image-search {report['version']}")), ("Results", _text(len(results)))])
    cards = [_card(hit, f"#{rank} · score {hit['score']:.4f}", made) for rank, hit in enumerate(results, 1)]
    grid = f'<section class="grid">{"".join(cards)}</section>' if cards else "<p>No results.</p>"
    return f"Image search report: {report['dataset']}", about + grid


def _duplicates_body(report: dict, made: list[int]) -> tuple[str, str]:
    groups = [*report["exact_groups"], *report["near_groups"]]
    threshold = ("exact copies only" if report["threshold"] is None
                 else f"{report['threshold']:.2f} cosine similarity for near-copies")
    rows = [("Dataset", _text(f"{report['dataset']} ({report['images']:,} images)")),
            ("Model", _text(report["model"])), ("Threshold", _text(threshold)),
            ("Found at", _text(report["found_at"])), ("Tool", _text(f"image-search {report['version']}")),
            ("Groups", _text(f"{len(report['exact_groups'])} of exact copies, {len(report['near_groups'])} of "
                             "near-copies"))]
    if report.get("unhashed"):
        rows.append(("Not hashed", _text(f"{report['unhashed']:,} images ingested before hashes were captured "
                                         "are not in exact groups until the dataset is ingested again")))
    sections = []
    for number, group in enumerate(groups, 1):
        if group["kind"] == "exact":
            title = f"Group {number}: {group['size']} exact copies"
            extra = f' <span class="hash">SHA-256 {_text(group["sha256"])}</span>'
        else:
            title, extra = f"Group {number}: {group['size']} near-copies", ""
        cards = [_card(member, f"similarity {member['score']:.4f}", made) for member in group["members"]]
        sections.append(f"<section><h2>{_text(title)}{extra}</h2>"
                        f'<div class="grid">{"".join(cards)}</div></section>')
    body = "".join(sections) if sections else "<p>No duplicates found.</p>"
    return f"Duplicates report: {report['dataset']}", _about(rows) + body


def render_html(report: dict) -> str:
    made = [0]  # thumbnails made so far
    title, body = (_search_body if report["kind"] == "search" else _duplicates_body)(report, made)
    total = (1 if report.get("query", {}).get("image") else 0) + (
        len(report["results"]) if report["kind"] == "search"
        else sum(group["size"] for group in [*report["exact_groups"], *report["near_groups"]]))
    note = (f'<p class="note">Thumbnails are shown for the first {MAX_THUMBNAILS:,} of {total:,} images; the CSV and '
            "JSON reports list every image.</p>" if total > MAX_THUMBNAILS else "")
    return ("<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_text(title)}</title><style>{_STYLE}</style></head>"
            f"<body><header><h1>{_text(title)}</h1></header>{note}<main>{body}</main></body></html>\n")


def write_html(handle, report: dict) -> None:
    handle.write(render_html(report))
