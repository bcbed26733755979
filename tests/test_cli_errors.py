"""llm2vec_jax/cli_errors.py, the contract all four ``python -m`` entry points share: an input
error is one line and exit 2, a bug (here a plain ValueError, a KeyError) keeps its traceback,
and --debug keeps the traceback of an input error too."""

import errno

import pytest

from llm2vec_jax.cli_errors import run_cli
from llm2vec_jax.evaluation import STSFormatError


def failing(error):
    def body():
        raise error
    return body


@pytest.mark.parametrize("error, line", [
    (STSFormatError("dev.tsv:3: expected 4 tab-separated fields"),
     "data error: dev.tsv:3: expected 4 tab-separated fields"),
    (FileNotFoundError("text file not found: x.txt"), "file error: text file not found: x.txt"),
    (OSError(errno.ENOSPC, "No space left on device"),
     "disk error: [Errno 28] No space left on device"),
])
def test_input_error_is_one_line_and_exit_2(capsys, error, line):
    assert run_cli(failing(error), debug=False) == 2
    out = capsys.readouterr()
    assert out.err == line + "\n" and out.out == ""


@pytest.mark.parametrize("error", [ValueError("operands could not be broadcast"),
                                   KeyError("layers"), OSError(errno.EIO, "I/O error")])
def test_a_bug_keeps_its_traceback(error):
    with pytest.raises(type(error)):
        run_cli(failing(error), debug=False)


def test_debug_raises_input_errors_too():
    with pytest.raises(STSFormatError):
        run_cli(failing(STSFormatError("dev.tsv: empty file")), debug=True)


def test_success_passes_the_exit_status_through():
    assert run_cli(lambda: 0, debug=False) == 0
