"""The columns of a report's table (CSV), one row per image, from the dicts that SearchResult.to_dict() gives."""

from __future__ import annotations

# (column, how to read it from a result dict)
HIT_COLUMNS = (
    ("path", lambda r: r.get("path")),
    ("title", lambda r: r.get("title")),
    ("score", lambda r: r.get("score")),
    ("sha256", lambda r: r.get("sha256")),
    ("md5", lambda r: r.get("md5")),
    ("size_bytes", lambda r: r.get("size")),
    ("width", lambda r: r.get("width")),
    ("height", lambda r: r.get("height")),
    ("format", lambda r: r.get("format")),
    ("date_taken", lambda r: r.get("date_taken")),
    ("date_source", lambda r: r.get("date_source")),
    ("camera", lambda r: r.get("camera")),
    ("lens", lambda r: r.get("lens")),
    ("gps_lat", lambda r: (r.get("gps") or {}).get("lat")),
    ("gps_lon", lambda r: (r.get("gps") or {}).get("lon")),
    ("orientation", lambda r: r.get("orientation")),
    ("duplicate_count", lambda r: r.get("duplicate_count", 0)),
    ("duplicates", lambda r: "\n".join(r.get("duplicates") or ())),  # one path per line inside the cell
)


def rows_of(report: dict) -> tuple[list[str], list[list]]:
    """(header, rows) of a search report (a rank, then the hit's columns) or a duplicates report (the group's
    number, kind, size and SHA-256, then the member's columns)."""
    hit_header = [name for name, _ in HIT_COLUMNS]
    if report["kind"] == "search":
        return (["rank", *hit_header],
                [[rank, *(read(hit) for _, read in HIT_COLUMNS)] for rank, hit in enumerate(report["results"], 1)])
    rows = []
    for number, group in enumerate([*report["exact_groups"], *report["near_groups"]], 1):
        for member in group["members"]:
            rows.append([number, group["kind"], group["size"], group["sha256"],
                         *(read(member) for _, read in HIT_COLUMNS)])
    return ["group", "group_kind", "group_size", "group_sha256", *hit_header], rows
