"""Regenerate docs/family-matrix.md: run the family matrix and write its table.

    HF_HUB_OFFLINE=1 python scripts/family_matrix.py            # writes docs/family-matrix.md
    HF_HUB_OFFLINE=1 python scripts/family_matrix.py --out -    # prints the page instead

Every family the installed transformers lists as a causal LM or image-text-to-text model (plus the
built-in families and a few encoder-decoders) is built tiny and offline by
``steerlib.testing.matrix`` and checked against raw forward hooks and HF hidden states. Exits 1 if
any family is silently wrong (a check that neither passes nor is refused with a SteerlibError).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers
from tqdm import tqdm

from steerlib.testing.matrix import CHECKS, MatrixRow, check_family, matrix_families

HEADER = """# Family matrix

Every decoder family the installed transformers ({version}) can build offline from a config, as a tiny
random-weight model (`steerlib.testing.matrix`), loaded with `SteerableModel` and checked against
independent references. Regenerate this page with one command:

```
HF_HUB_OFFLINE=1 python scripts/family_matrix.py
```

The same checks run in the test suite: a fast subset by default, the whole matrix with
`HF_HUB_OFFLINE=1 python -m pytest -q -m family_matrix tests/test_family_matrix.py`.

**How the adapter was found:** `registered` (a row of `steerlib/adapters/families.py`), `fallback`
(the finder searched, ranked and validated the model's block lists; the path is the one it chose),
`refused` (a `SteerlibError` at load that says why), `skipped` (the tiny model cannot be built
offline; the reason is recorded).

**Checks** (`pass`, `n/a`, or `refused` with the error): `steer_b1` / `steer_b2` steered greedy
generate (tokens and every step's logits) equals a raw forward hook, one prompt and a left-padded
batch of 2; `batch_invariance` each row of the padded batch equals the row alone; `read` per-token
reads equal HF `hidden_states` at the index the raw hooks identify (`i + 1` when HF lists the
embeddings first, `i + 0` when it does not); `image_mask` the batch's image mask equals the
processor's image token id; `image_generate` `positions="image"` steered generate equals a hook on
the image tokens only. A check that is neither would be **silently wrong**: there are none.

## Summary

{summary}

## Families

| model_type | class | kind | found | decoder stack | {checks} | reason |
|---|---|---|---|---|{dashes}|---|
"""


def _cell(v: str) -> str:
    if v.startswith("refused"):
        return "refused"
    return {"pass": "pass", "n/a": "n/a"}.get(v, v.replace("|", "/"))


def render(rows: list[MatrixRow]) -> str:
    counts = Counter(r.found for r in rows)
    wrong = [r.model_type for r in rows if r.silently_wrong or r.reason.startswith("FAIL")]
    partial = [r.model_type for r in rows if r.found in ("fallback", "registered")
               and any(v.startswith("refused") for v in r.checks.values())]
    summary = "\n".join([
        f"- families tried: **{len(rows)}**",
        f"- registered (built-in rows): **{counts['registered']}**",
        f"- found by the fallback: **{counts['fallback']}**",
        f"- refused at load, with a reason: **{counts['refused']}**",
        f"- accepted, with some checks refused (padded batches of models that ignore the attention mask): "
        f"**{len(partial)}** ({', '.join(partial) or 'none'})",
        f"- skipped (cannot be built offline, reason recorded): **{counts['skipped']}**",
        f"- silently wrong: **{len(wrong)}**{' (' + ', '.join(wrong) + ')' if wrong else ''}",
    ])
    out = [HEADER.rstrip("\n").format(version=transformers.__version__, summary=summary, checks=" | ".join(CHECKS),
                         dashes="|".join("---" for _ in CHECKS))]
    for r in rows:
        cells = [_cell(r.checks[c]) if c in r.checks else "" for c in CHECKS]
        refusals = "; ".join(f"{c}: {v[len('refused: '):][:90]}" for c, v in r.checks.items() if v.startswith("refused"))
        reason = (r.reason or refusals).replace("|", "/").replace("\n", " ")[:200]
        path = f"`{r.path}`" if r.path else ""
        out.append(f"| `{r.model_type}` | {r.model_class} | {r.kind} | {r.found} | {path} | {' | '.join(cells)} | {reason} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "family-matrix.md"),
                    help="where to write the page ('-' prints it)")
    ap.add_argument("families", nargs="*", help="only these model types (default: all)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    warnings.simplefilter("ignore")
    rows = [check_family(mt) for mt in tqdm(args.families or matrix_families(), desc="family matrix")]
    page = render(rows)
    if args.out == "-":
        sys.stdout.write(page)
    else:
        Path(args.out).write_text(page, encoding="utf-8")
        print(f"wrote {args.out}")
    return 1 if any(r.silently_wrong or r.reason.startswith("FAIL") for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
