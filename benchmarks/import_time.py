"""Print the import time of edgegen's entry points, each in a fresh interpreter.

    python benchmarks/import_time.py [--repeat 7]

Reports the median wall time of `python -c "import X"` minus that of a bare `python -c
"pass"`, so interpreter start-up is not counted.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

MODULES = ["edgegen", "edgegen.runtimes", "edgegen.runtimes.artifact", "edgegen.cli", "onnxruntime"]


def wall(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    base = statistics.median(wall("pass") for _ in range(args.repeat))
    print(f"{'module':<28} {'import ms':>10}   (median of {args.repeat}, interpreter start-up {base * 1e3:.0f} ms subtracted)")
    for module in MODULES:
        t = statistics.median(wall(f"import {module}") for _ in range(args.repeat)) - base
        print(f"{module:<28} {t * 1e3:>10.1f}")


if __name__ == "__main__":
    main()
