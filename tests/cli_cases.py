"""Many command lines of one ``python -m MODULE`` CLI in one interpreter: each case is
``MODULE.__main__.main(argv)`` with file descriptor 2 captured, as its own process would
report it (the exit status, everything written to stderr). An interpreter start with jax,
transformers and torch imported costs ~10 s of a loaded CI core; cases that fail before
training (bad inputs, refused resumes) need nothing else.

    python tests/cli_cases.py CASES.json RESULTS.json

CASES.json: {"module": "llm2vec_jax.train", "cases": {name: [arg, ...]}};
RESULTS.json: {name: {"returncode": int, "stderr": str}}.
"""

import importlib
import json
import os
import sys
import tempfile
import traceback


def run_case(main, argv: list[str]) -> tuple[int, str]:
    """(exit status, stderr) of ``main(argv)`` as a process: an uncaught exception prints its
    traceback and exits 1, ``SystemExit`` exits with its code."""
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            try:
                code = main(argv)
            except SystemExit as e:  # a message in place of a status: printed, exit 1
                code = e.code
                if code is not None and not isinstance(code, int):
                    print(code, file=sys.stderr)
                    code = 1
            except Exception:  # noqa: BLE001 - what the interpreter does with it
                traceback.print_exc()
                code = 1
            sys.stderr.flush()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        return int(code or 0), captured.read().decode("utf-8", "replace")


def main() -> None:
    spec = json.loads(open(sys.argv[1], encoding="utf-8").read())
    entry = importlib.import_module(spec["module"] + ".__main__").main
    results = {name: dict(zip(("returncode", "stderr"), run_case(entry, argv)))
               for name, argv in spec["cases"].items()}
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
