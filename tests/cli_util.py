"""Running the `sumie` command in the test process."""

import contextlib
import io


def cli_in_process(*args) -> tuple[int, str, str]:
    """`sumie ARGS` run by `sumie.cli.main` in this process: (exit code, stdout, stderr). What the command does,
    without the 3-4 s of starting an interpreter and torch; each test that uses it also runs a real subprocess."""
    from sumie import cli
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()
