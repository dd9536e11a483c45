"""The `sumie` command line.

User errors (SumieError) print one line to stderr and exit with code 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys

from .errors import SumieError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage errors: one line, exit 2
        print(f"sumie: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def cmd_schedulers(args) -> int:
    from .schedulers import describe
    for sampler_id, line in describe():
        print(f"{sampler_id:12} {line}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sumie", description="Stable Diffusion text-to-image, compact and readable.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("schedulers", help="list the sampler ids").set_defaults(func=cmd_schedulers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SumieError as e:
        print(f"sumie: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sumie: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
