"""``steerlib view RUN_DIR``: one static HTML page over a ``compare`` or demo run folder.

The page is a single file with its CSS and JavaScript inline (no server, no network, no CDN) and
the run's PNG plots embedded as data URIs. For each comparison found (``RUN_DIR`` itself when it
holds a ``run.json``, else each sub-folder that does, e.g. the demo's ``test/`` and
``validation/``) it shows:

* the metric table of :func:`~steerlib.eval.report.markdown_table` (proportions with their Wilson
  95% interval), recomputed from the run's caches by :func:`~steerlib.eval.rows.load_result`;
* a prompt x method grid of the generations. Each steered answer shows its word-level difference
  from the unsteered answer of the same prompt (:mod:`difflib`: inserted words marked, removed
  words struck through) and badges for the keyword judges (refused, deferred) and for "changed";
* filters by behaviour, by judged outcome (refused / not refused) and by changed-vs-unsteered,
  tested on one method's column or on any steered column; a text search over the prompts.

Every text from the run is HTML-escaped; the script only toggles rows' visibility and never
inserts run data into the page. Nothing here imports torch at module level, so the CLI builds its
parser without the heavy imports.
"""

from __future__ import annotations

import argparse
import base64
import difflib
import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["GENERATOR", "RunView", "add_arguments", "build_page", "find_runs", "load_run", "run_from_args",
           "word_diff", "write_view"]

#: The ``<meta name="generator">`` of pages this module writes (an existing page with it may be replaced).
GENERATOR = "steerlib view"
#: PNG files embedded in the page at most this large each (bytes); larger ones are linked by name.
MAX_IMAGE_BYTES = 3_000_000
_WORD = re.compile(r"\s+|[^\s]+")


@dataclass
class Cell:
    """One generation of the grid."""

    text: str
    refused: bool
    deferred: bool
    changed: bool | None  # None: no unsteered answer to compare with (or this is the unsteered column)
    diff_html: str  # escaped HTML: the text, with the difference from the unsteered answer marked


@dataclass
class RunView:
    """What the page shows of one comparison folder."""

    name: str
    path: Path
    model: str
    table_head: list[str]
    table_rows: list[list[str]]
    columns: list[str]  # spec labels; the first is the unsteered reference when the run has one
    reference: int | None  # index of the reference column
    prompts: list[dict[str, Any]]  # {"id", "behavior", "prompt", "cells": list[Cell | None]}
    images: list[Path]


# ------------------------------------------------------------------------------------------- data ---

def find_runs(run_dir: str | Path) -> list[Path]:
    """The comparison folders of ``run_dir``: itself when it has a ``run.json``, else its sub-folders
    that have one (``test`` first, then by name).

    Raises:
        DataError: ``run_dir`` is not a folder, or holds no comparison.
    """
    from ..errors import DataError
    from ..eval.store import RUN_FILE

    root = Path(run_dir)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; give the output folder of steerlib compare or steerlib demo.")
    if (root / RUN_FILE).is_file():
        return [root]
    subs = sorted((p for p in root.iterdir() if (p / RUN_FILE).is_file()), key=lambda p: (p.name != "test", p.name))
    if not subs:
        raise DataError(f"{root} holds no {RUN_FILE} (nor does any sub-folder): it is not the output folder of "
                        "steerlib compare or steerlib demo. Run one of them first, or check the path.")
    return subs


def word_diff(old: str, new: str) -> str:
    """``new`` as escaped HTML, with the words not in ``old`` in ``<ins>`` and ``old``'s removed words
    in ``<del>`` (word-level :class:`difflib.SequenceMatcher`; whitespace kept as it is; changes
    separated only by whitespace are shown as one removed and one added run, which reads better
    than alternating single words).

    Without the ``<del>`` elements the text reads ``new``; without the ``<ins>`` elements, ``old``
    (a whitespace-only insertion is left unmarked, so that reading is ``old`` up to whitespace).
    """
    a, b = _WORD.findall(old), _WORD.findall(new)
    # (equal?, old text, new text); a run of changes separated only by whitespace reads as one change
    segs: list[list[Any]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        gone, added = "".join(a[i1:i2]), "".join(b[j1:j2])
        if op == "equal" and not (gone.isspace() and segs and not segs[-1][0]):
            segs.append([True, gone, added])
        elif segs and not segs[-1][0]:
            segs[-1][1] += gone
            segs[-1][2] += added
        else:
            segs.append([False, gone, added])
    out: list[str] = []
    for equal, gone, added in segs:
        if equal:
            out.append(html.escape(added))
            continue
        if gone:
            out.append(f"<del>{html.escape(gone)}</del>")
        if added.strip():
            out.append(f"<ins>{html.escape(added)}</ins>")
        elif added:
            out.append(html.escape(added))
    return "".join(out)


def _table(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The header and cells of the report's markdown table (same numbers and intervals)."""
    from ..eval.report import markdown_table

    lines = markdown_table(rows).strip().splitlines()
    split = [[c.strip() for c in ln.strip().strip("|").split(" | ")] for ln in lines]
    return split[0], split[2:]


def load_run(path: str | Path, name: str | None = None) -> RunView:
    """Read one comparison folder: its table, and the generations of every item under every spec."""
    from ..eval.metrics import is_deferral, is_refusal
    from ..eval.rows import RunSpec, load_result
    from ..eval.store import CACHE_FILE, GEN_KEY, JsonlCache

    path = Path(path)
    res = load_result(path)
    man = res.manifest
    records = JsonlCache(path / CACHE_FILE, GEN_KEY, repair=False).records
    ref = RunSpec.from_dict(man["reference"]) if man.get("reference") else None
    specs = list(res.specs)
    ref_idx: int | None = None
    if ref is not None:
        hit = [i for i, s in enumerate(specs) if (s.method, s.config) == (ref.method, ref.config)]
        if hit:
            specs.insert(0, specs.pop(hit[0]))
            ref_idx = 0
    head, cells = _table(res.rows)
    prompts: list[dict[str, Any]] = []
    for it in man.get("items", []):
        recs = [records.get((s.method, s.config, it["id"])) for s in specs]
        base = recs[ref_idx] if ref_idx is not None else None
        row: list[Cell | None] = []
        for j, r in enumerate(recs):
            if r is None:
                row.append(None)
                continue
            text = str(r.get("text", ""))
            if base is None or j == ref_idx:
                changed, diff = None, html.escape(text)
            else:
                b_ids, r_ids = base.get("token_ids"), r.get("token_ids")
                changed = (r_ids != b_ids) if b_ids is not None and r_ids is not None else text != base["text"]
                diff = word_diff(str(base.get("text", "")), text) if changed else html.escape(text)
            row.append(Cell(text=text, refused=is_refusal(text), deferred=is_deferral(text, strict=True),
                            changed=changed, diff_html=diff))
        prompt = next((str(r["prompt"]) for r in recs if r is not None and "prompt" in r), str(it["id"]))
        prompts.append({"id": str(it["id"]), "behavior": str(it.get("label") or it["behavior"]),
                        "prompt": prompt, "has_image": bool(it.get("has_image")), "cells": row})
    columns = [("unsteered (" + s.label + ")" if j == ref_idx else s.label) for j, s in enumerate(specs)]
    images = sorted(path.glob("*.png"))
    return RunView(name=name or path.name, path=path, model=str((man.get("model") or {}).get("name", "?")),
                   table_head=head, table_rows=cells, columns=columns, reference=ref_idx, prompts=prompts,
                   images=images)


# ------------------------------------------------------------------------------------------- page ---

_CSS = """
:root{--ins:#d6f5d6;--del:#f9d6d6;--line:#d0d7de;--muted:#57606a}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;padding:16px 24px;color:#1f2328}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:18px 0 6px}
.muted{color:var(--muted)}
table{border-collapse:collapse}
table.metrics td,table.metrics th{border:1px solid var(--line);padding:3px 8px;text-align:right;white-space:nowrap}
table.metrics td:first-child,table.metrics th:first-child{text-align:left}
.wrap{overflow-x:auto;max-width:100%}
.filters{display:flex;flex-wrap:wrap;gap:12px;align-items:center;background:#f6f8fa;border:1px solid var(--line);
 padding:8px 12px;border-radius:6px;position:sticky;top:0;z-index:2}
.filters label{display:flex;gap:4px;align-items:center}
table.grid{table-layout:fixed;width:100%}
table.grid th,table.grid td{border:1px solid var(--line);padding:6px;vertical-align:top;text-align:left;
 overflow-wrap:anywhere;white-space:pre-wrap}
table.grid th{background:#f6f8fa}
td.prompt{font-weight:500;background:#fbfbfc}
ins{background:var(--ins);text-decoration:none}
del{background:var(--del);color:#6e2b2b}
.badge{display:inline-block;font-size:11px;border-radius:8px;padding:0 6px;margin:0 3px 3px 0;border:1px solid}
.b-ref{border-color:#b08800;color:#7d5e00}.b-def{border-color:#1a7f37;color:#1a7f37}
.b-chg{border-color:#8250df;color:#8250df}.b-same{border-color:#8c959f;color:#57606a}
.b-beh{border-color:#0969da;color:#0969da}
td.missing{color:var(--muted);font-style:italic}
img.plot{max-width:100%;height:auto;border:1px solid var(--line);margin:6px 0}
"""

_JS = """
(function(){
  'use strict';
  function apply(run){
    var q=function(n){return run.querySelector('[data-filter="'+n+'"]').value;};
    var beh=q('behavior'), out=q('outcome'), chg=q('changed'), col=q('column');
    var text=run.querySelector('[data-filter="text"]').value.toLowerCase();
    var rows=run.querySelectorAll('tbody tr.item'), shown=0;
    rows.forEach(function(tr){
      var ok=(beh==='all'||tr.dataset.behavior===beh);
      if(ok&&text){ok=tr.querySelector('td.prompt').textContent.toLowerCase().indexOf(text)>=0;}
      if(ok&&(out!=='any'||chg!=='any')){
        var cells=tr.querySelectorAll('td.gen');
        ok=false;
        cells.forEach(function(td){
          if(col==='steered'&&td.dataset.ref==='1'){return;}
          if(col!=='steered'&&td.dataset.col!==col){return;}
          if(!td.dataset.refused){return;}
          var a=(out==='any'||(out==='refused')===(td.dataset.refused==='1'));
          var b=(chg==='any'||(td.dataset.changed!==''&&(chg==='changed')===(td.dataset.changed==='1')));
          if(a&&b){ok=true;}
        });
      }
      tr.hidden=!ok; if(ok){shown++;}
    });
    run.querySelector('.count').textContent=shown+' of '+rows.length+' prompts shown';
  }
  document.querySelectorAll('section.run').forEach(function(run){
    run.querySelectorAll('[data-filter]').forEach(function(el){
      el.addEventListener('input',function(){apply(run);});
      el.addEventListener('change',function(){apply(run);});
    });
    apply(run);
  });
})();
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _options(values: Sequence[tuple[str, str]]) -> str:
    return "".join(f'<option value="{_e(v)}">{_e(t)}</option>' for v, t in values)


def _image_html(p: Path) -> str:
    size = p.stat().st_size
    if size > MAX_IMAGE_BYTES:
        return f'<p class="muted">{_e(p.name)}: {size} bytes, not embedded (open it next to the page).</p>'
    data = base64.b64encode(p.read_bytes()).decode("ascii")
    return f'<figure><img class="plot" alt="{_e(p.stem)}" src="data:image/png;base64,{data}"><figcaption class="muted">' \
           f'{_e(p.name)}</figcaption></figure>'


def _run_html(run: RunView, k: int) -> str:
    behaviours = list(dict.fromkeys(p["behavior"] for p in run.prompts))
    parts = [f'<section class="run" id="run-{k}"><h2>{_e(run.name)} <span class="muted">({_e(run.model)}, '
             f'{len(run.prompts)} prompts x {len(run.columns)} configurations)</span></h2>',
             '<h3>Metrics (Wilson 95% intervals)</h3><div class="wrap"><table class="metrics"><thead><tr>',
             "".join(f"<th>{_e(h)}</th>" for h in run.table_head), "</tr></thead><tbody>"]
    parts += ["<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in run.table_rows]
    parts.append("</tbody></table></div>")
    if run.images:
        parts.append(f"<details><summary>plots ({len(run.images)})</summary>"
                     + "".join(_image_html(p) for p in run.images) + "</details>")
    cols = [("steered", "any steered column")] + [(str(j), c) for j, c in enumerate(run.columns)]
    parts.append(
        '<h3>Generations</h3><div class="filters">'
        f'<label>behaviour <select data-filter="behavior">{_options([("all", "all")] + [(b, b) for b in behaviours])}'
        '</select></label>'
        f'<label>judged <select data-filter="outcome">'
        f'{_options([("any", "any"), ("refused", "refused"), ("not", "not refused")])}</select></label>'
        f'<label>vs unsteered <select data-filter="changed">'
        f'{_options([("any", "any"), ("changed", "changed"), ("unchanged", "unchanged")])}</select></label>'
        f'<label>in <select data-filter="column">{_options(cols)}</select></label>'
        '<label>prompt contains <input type="search" data-filter="text" size="18"></label>'
        '<span class="count muted"></span></div>')
    width = max(10, 90 // max(1, len(run.columns)))
    parts.append('<table class="grid"><colgroup><col style="width:' + str(100 - width * len(run.columns))
                 + '%">' + "".join(f'<col style="width:{width}%">' for _ in run.columns) + "</colgroup><thead><tr>"
                 "<th>prompt</th>" + "".join(f"<th>{_e(c)}</th>" for c in run.columns) + "</tr></thead><tbody>")
    for p in run.prompts:
        img = ' <span class="badge b-beh">image</span>' if p["has_image"] else ""
        parts.append(f'<tr class="item" data-behavior="{_e(p["behavior"])}"><td class="prompt">'
                     f'<span class="badge b-beh">{_e(p["behavior"])}</span>{img}<br>{_e(p["prompt"])}</td>')
        for j, c in enumerate(p["cells"]):
            if c is None:
                parts.append(f'<td class="gen missing" data-col="{j}" data-ref="{int(j == run.reference)}">'
                             'not generated</td>')
                continue
            badges = []
            if c.refused:
                badges.append('<span class="badge b-ref">refused</span>')
            if c.deferred:
                badges.append('<span class="badge b-def">deferred</span>')
            if c.changed is True:
                badges.append('<span class="badge b-chg">changed</span>')
            elif c.changed is False:
                badges.append('<span class="badge b-same">= unsteered</span>')
            changed = "" if c.changed is None else str(int(c.changed))
            parts.append(f'<td class="gen" data-col="{j}" data-ref="{int(j == run.reference)}" '
                         f'data-refused="{int(c.refused)}" data-changed="{changed}">{"".join(badges)}'
                         f'<div class="text">{c.diff_html}</div></td>')
        parts.append("</tr>")
    parts.append("</tbody></table></section>")
    return "".join(parts)


def build_page(run_dir: str | Path) -> str:
    """The HTML page (a string) over the compare or demo run in ``run_dir``."""
    root = Path(run_dir)
    runs = [load_run(p, name=p.name if p != root else root.name) for p in find_runs(root)]
    title = f"steerlib results: {root.resolve().name}"
    extra = []
    summary = root / "results.md"
    if summary.is_file() and not (root / "run.json").is_file():
        extra.append(f"<h2>Summary (results.md)</h2><div class=\"wrap\"><pre>{_e(summary.read_text())}</pre></div>")
        pngs = sorted(root.glob("*.png"))
        if pngs:
            extra.append(f"<details><summary>plots ({len(pngs)})</summary>"
                         + "".join(_image_html(p) for p in pngs) + "</details>")
    nav = " · ".join(f'<a href="#run-{k}">{_e(r.name)}</a>' for k, r in enumerate(runs))
    body = "".join(_run_html(r, k) for k, r in enumerate(runs))
    legend = ("<p class=\"muted\">Each steered answer shows its difference from the unsteered answer to the same "
              "prompt: <ins>added words</ins>, <del>removed words</del>. Badges: <span class=\"badge b-ref\">refused"
              "</span> and <span class=\"badge b-def\">deferred</span> are the keyword judges (the metrics' own); "
              "<span class=\"badge b-chg\">changed</span> means the generated tokens differ from the unsteered ones."
              "</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"generator\" content=\"{GENERATOR}\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{_e(title)}</h1><p class=\"muted\">{_e(str(root))} · {nav}</p>{legend}"
            + "".join(extra) + body + f"<script>{_JS}</script></body></html>\n")


def write_view(run_dir: str | Path, out: str | Path | None = None, *, overwrite: bool = False) -> Path:
    """Write the page to ``out`` (default ``RUN_DIR/view.html``); returns its path.

    A file there is replaced only when it is a page this function wrote before, or with ``overwrite``.

    Raises:
        DataError: ``run_dir`` holds no compare or demo run.
        PersistenceError: ``out`` exists and is not a steerlib view page (pass ``overwrite=True``).
    """
    from ..errors import PersistenceError
    from ..persistence import write_text_atomic

    target = Path(out) if out is not None else Path(run_dir) / "view.html"
    page = build_page(run_dir)
    if target.exists() and not overwrite:
        head = target.read_text(errors="replace")[:600] if target.is_file() else ""
        if f'<meta name="generator" content="{GENERATOR}">' not in head:
            raise PersistenceError(f"{target} exists and is not a page written by steerlib view; pass --overwrite "
                                   "(overwrite=True) to replace it, or choose another --out.")
    write_text_atomic(target, page)
    return target


# -------------------------------------------------------------------------------------------- CLI ---

def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``steerlib view`` flags (imports nothing heavy)."""
    p.add_argument("run_dir", help="output folder of steerlib compare or steerlib demo")
    p.add_argument("--out", default=None, help="the .html file to write (default: RUN_DIR/view.html)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out that steerlib did not write")


def run_from_args(args: argparse.Namespace) -> int:
    path = write_view(args.run_dir, args.out, overwrite=args.overwrite)
    print(f"wrote {path} (open it in a browser; it needs no server or network)")
    return 0
