"""A report as JSON: the report's dict as it is (the same keys as the tools' --json)."""

from __future__ import annotations

import json


def write_json(handle, report: dict) -> None:
    json.dump(report, handle, indent=2, ensure_ascii=False)
    handle.write("\n")
