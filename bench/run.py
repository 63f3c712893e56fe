"""Run one benchmark: `python bench/run.py NAME [ARGS...]` runs `bench/bench_NAME.py ARGS...`.

With no NAME it lists the benchmarks. Each benchmark prints ratios measured side by side in
one run and records its numbers in bench/README.md.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0])
        print("benchmarks: " + ", ".join(available()))
        return 0  # listing is what no NAME asks for (bench/README.md): it exited 2, as a usage error
    name, args = argv[0], argv[1:]
    script = BENCH_DIR / f"bench_{name}.py"
    if not script.is_file():
        print(f"unknown benchmark {name!r}; available: {', '.join(available())}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(BENCH_DIR.parent))
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
