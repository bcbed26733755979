"""tests/file_seconds.py sums a run's durations per file (a hand-computed case), and the
table it keeps names only files that exist."""

from conftest import REPO
from file_seconds import TABLE, seconds_per_file


def test_durations_are_summed_per_file_longest_first():
    lines = ["============ slowest durations ============",
             "12.50s call     tests/train/test_a.py::test_x[case-1]",
             "0.25s setup    tests/train/test_a.py::test_x[case-1]",
             "30.00s setup    tests/test_b.py::test_y",
             "1.00s teardown tests/test_b.py::test_y",
             "(12 durations < 0.005s hidden.  Use -vv to show these durations.)",
             "827 passed in 1711.93s (0:28:31)"]
    assert list(seconds_per_file(lines).items()) == [("tests/test_b.py", 31.0),
                                                     ("tests/train/test_a.py", 12.8)]


def test_table_names_existing_test_files():
    import json
    table = json.loads(TABLE.read_text(encoding="utf-8"))
    assert len(table) > 10
    missing = [path for path in table if not (REPO / path).is_file()]
    assert not missing, f"{missing}: gone; rerun tests/file_seconds.py on a full run's log"
