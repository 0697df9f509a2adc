"""How long ``steerlib --help`` (and each subcommand's) takes, against a bare interpreter.

    python -m benchmarks.cli_startup            # 5 repeats each, median seconds

Each command runs in a fresh interpreter (``python -m steerlib.app.cli ... --help``); the table shows
the median wall time, the median of ``python -c pass`` on the same machine, and whether torch was
imported (it must not be: the parsers import nothing heavy). No assertion: the target (0.5 s) is printed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ([], ["fit"], ["generate"], ["compare"], ["demo"], ["probe"], ["weights"], ["export"])
CHECK = ("import sys, runpy; sys.argv = ['steerlib', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('steerlib.app.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         "print('TORCH', 'torch' in sys.modules)")


def wall(argv: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    return time.perf_counter() - t, out.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    base = statistics.median(wall([sys.executable, "-c", "pass"])[0] for _ in range(args.repeats))
    print(f"python -c pass: {base:.3f} s (median of {args.repeats})")
    print("| command | median s | minus bare python | torch imported | target |")
    print("|---|---|---|---|---|")
    for cmd in COMMANDS:
        runs = [wall([sys.executable, "-c", CHECK, *cmd, "--help"]) for _ in range(args.repeats)]
        med = statistics.median(t for t, _ in runs)
        torch_in = any("TORCH True" in out for _, out in runs)
        print(f"| steerlib {' '.join(cmd + ['--help'])} | {med:.3f} | {med - base:.3f} | {torch_in} | < 0.5 s |")


if __name__ == "__main__":
    main()
