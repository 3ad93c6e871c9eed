"""`python -m bench NAME`: benchmarks that end with one JSON line of ratios measured in one run."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("publisher", "projector", "api", "engine", "e2e")


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in BENCHMARKS:
        print(f"usage: python -m bench {{{','.join(BENCHMARKS)}}}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"bench.{argv[0]}")
    except ModuleNotFoundError:
        print(f"bench {argv[0]}: not written yet", file=sys.stderr)
        return 2
    return module.main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
