"""Run the bad-input catalogue (steerlib.testing.bad_inputs) and print counts by kind and outcome.

    python scripts/bad_inputs.py            # the table
    python scripts/bad_inputs.py -v         # and one line per case (outcome, kind, description, message)
    python scripts/bad_inputs.py --markdown # the table as Markdown (docs/reliability.md)

Exit status 1 when any case is not clean (a traceback, silently accepted, data lost, read outside,
read before check).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's steerlib, not an installed one

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from steerlib.testing.bad_inputs import KINDS, OUTCOMES, counts, run_catalogue  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per case")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = ap.parse_args(argv)
    results = run_catalogue()
    if args.verbose:
        for c, outcome, msg in results:
            print(f"{outcome:18} | {c.kind:28} | {c.description} | {msg[:160]}")
        print()
    table = counts(results)
    cols = [o for o in OUTCOMES]
    if args.markdown:
        print("| kind | cases | " + " | ".join(cols) + " |")
        print("|---|---:|" + "---:|" * len(cols))
        for k in KINDS:
            print(f"| {k} | {sum(table[k].values())} | " + " | ".join(str(table[k][o]) for o in cols) + " |")
        tot = sum(sum(t.values()) for t in table.values())
        print(f"| **all** | **{tot}** | " + " | ".join(str(sum(table[k][o] for k in KINDS)) for o in cols) + " |")
    else:
        w = max(len(k) for k in KINDS) + 2
        print(f"{'kind':{w}}{'cases':>6}  " + "  ".join(f"{o:>10}" for o in cols))
        for k in KINDS:
            print(f"{k:{w}}{sum(table[k].values()):>6}  " + "  ".join(f"{table[k][o]:>10}" for o in cols))
        tot = sum(sum(t.values()) for t in table.values())
        print(f"{'all':{w}}{tot:>6}  " + "  ".join(f"{sum(table[k][o] for k in KINDS):>10}" for o in cols))
    bad = [r for r in results if r[1] != "clean"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
