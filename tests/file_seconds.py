"""Seconds per test file, from the durations a full run prints, for conftest's longest-first
file order (tests/file_seconds.json):

    python -m pytest -q --durations=0 | tee run.log && python tests/file_seconds.py run.log

The workers take whole files (``--dist loadfile``), so a long file that starts last keeps one
core busy alone at the end; starting the longest files first leaves only short ones to end on.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

TABLE = Path(__file__).resolve().parent / "file_seconds.json"
# "12.34s call     tests/train/test_losses.py::test_x[case]"
DURATION = re.compile(r"^(\d+(?:\.\d+)?)s (?:setup|call|teardown) +(tests/[^:\s]+\.py)::")


def seconds_per_file(lines) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for line in lines:
        match = DURATION.match(line)
        if match:
            totals[match.group(2)] += float(match.group(1))
    return {path: round(total, 1) for path, total in sorted(totals.items(), key=lambda kv: -kv[1])}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    totals = seconds_per_file(Path(argv[0]).read_text(encoding="utf-8").splitlines())
    if not totals:
        print(f"{argv[0]}: no durations in it (run pytest with --durations=0)", file=sys.stderr)
        return 2
    TABLE.write_text(json.dumps(totals, indent=1) + "\n", encoding="utf-8")
    print(f"{TABLE}: {len(totals)} files, {sum(totals.values()):.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
