"""Data-parallel ``compare`` under ``torchrun --nproc-per-node 2`` (gloo on CPU): the merged store
and table equal a one-process run exactly, a rank killed mid-run resumes with every key exactly
once, and a store written by two ranks is reused by one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import test_compare as tc  # noqa: E402
from test_compare import one_thread, sm  # noqa: E402,F401  (test_compare's fixtures: one thread, the tiny llama, its reference run)  (the tiny grid the resumability tests use)

from steerlib import SteerableModel  # noqa: E402
from steerlib.eval import load_result, markdown_table  # noqa: E402
from steerlib.eval.compare import CACHE_FILE, compare  # noqa: E402
from steerlib.eval.distributed import Ranks, ranks, shard  # noqa: E402
from steerlib.testing import build_tiny  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOTAL = tc.N_SPECS * len(tc.EVAL)
#: A second grid: length batches, P2S rows copied from the unsteered run.
LENGTH_GRID = {"methods": ["none", "p2s", "mean"], "alphas": [4.0], "layers": [tc.LAYER], "max_new_tokens": 4,
               "batch_size": 4, "batching": "length", "reuse_unsteered_rows": True, "progress": False}

SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    import steerlib.eval.store as store_mod
    from steerlib import SteerableModel
    from steerlib.testing import build_tiny
    import test_compare as tc

    out, report, kill_rank, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rank = int(os.environ["RANK"])
    real, calls = store_mod._append_text, [0]

    def dying(path, text):
        calls[0] += 1
        if rank == kill_rank and calls[0] == kill_at:
            with open(path, "a", encoding="utf-8") as f:
                f.write(text[: text.index("\\n") + 10])  # one whole line, then a cut one
                f.flush()
                os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        real(path, text)

    store_mod._append_text = dying
    from steerlib.steerers import P2SExtraction
    real_extract, extracted = P2SExtraction.extract, []

    def counting(self, model, items, *a, **k):
        extracted.append(len(items))
        return real_extract(self, model, items, *a, **k)

    P2SExtraction.extract = counting
    t = build_tiny("llama")
    res = tc.run_tiny(SteerableModel(t.model, t.processor), out)
    with open(os.path.join(report, f"rank{{rank}}.json"), "w") as f:
        json.dump({{"rows": res.rows, "n_generated": res.n_generated, "n_reused": res.n_reused,
                   "world_size": res.manifest["world_size"], "extracted": extracted}}, f)
    if len(sys.argv) > 5:  # a second grid in the same launch: length batches, rows copied from the unsteered run
        from steerlib.eval.compare import compare
        import test_distributed_compare as td
        res = compare(SteerableModel(t.model, t.processor), tc.TRAIN, tc.EVAL, **td.LENGTH_GRID, out_dir=sys.argv[5])
        with open(os.path.join(report, f"length{{rank}}.json"), "w") as f:
            json.dump({{"rows": res.rows, "n_copied": res.n_copied}}, f)
""")


def torchrun(tmp_path: Path, out: Path, *, nproc: int = 2, kill_rank: int = -1, kill_at: int = 0,
             tag: str = "run", second: Path | None = None) -> tuple[subprocess.CompletedProcess[str], Path]:
    script = tmp_path / "dist_compare.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    report = tmp_path / f"report-{tag}"
    report.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           str(script), str(out), str(report), str(kill_rank), str(kill_at), *([str(second)] if second else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT, check=False)
    return proc, report


@pytest.fixture(scope="module")
def single(sm, tmp_path_factory):
    """The one-process run every distributed run must equal."""
    return tc.run_tiny(sm, tmp_path_factory.mktemp("single"), distributed="off")


def records(out: Path) -> dict[tuple[str, str, str], dict]:
    lines = (out / CACHE_FILE).read_text(encoding="utf-8").splitlines()
    recs = [json.loads(x) for x in lines]
    keys = [(r["method"], r["config"], r["id"]) for r in recs]
    assert len(keys) == len(set(keys)), "a key is stored twice"
    return {k: r for k, r in zip(keys, recs)}


def test_shard_is_a_deterministic_partition():
    work = list(range(11))
    parts = [shard(work, r, 3) for r in range(3)]
    assert sorted(x for p in parts for x in p) == work and parts[1] == [1, 4, 7, 10]
    assert ranks("off") == Ranks() and not Ranks().distributed


def test_sharded_extraction_equals_one_extraction(sm):
    """Batch by batch (what each rank runs) equals the whole extraction exactly."""
    from steerlib.eval.distributed import sharded_extraction
    from steerlib.steerers import P2SExtraction

    ex = P2SExtraction(batch_size=2)
    whole = ex.extract(sm, tc.TRAIN, [0, 2], input_layers={2: 1}, progress=False)
    split = sharded_extraction(Ranks())(ex, sm, tc.TRAIN, [0, 2], input_layers={2: 1}, progress=False)
    for layer in (0, 2):
        assert torch.equal(whole[layer].z, split[layer].z)
    assert torch.equal(whole[2].h, split[2].h) and split[0].h is None


def test_two_ranks_equal_one_process_and_a_killed_rank_resumes(sm, single, tmp_path):
    # 1. two ranks, uninterrupted: the merged store and table are the one-process ones exactly
    out = tmp_path / "two"
    proc, report = torchrun(tmp_path, out, tag="full", second=tmp_path / "two-length")
    assert proc.returncode == 0, proc.stderr[-3000:]
    length = compare(sm, tc.TRAIN, tc.EVAL, **LENGTH_GRID, out_dir=tmp_path / "one-length", distributed="off")
    assert length.n_copied > 0
    for r in range(2):
        got = json.loads((report / f"length{r}.json").read_text())
        assert got["rows"] == json.loads(json.dumps(length.rows)) and got["n_copied"] == length.n_copied
    assert records(tmp_path / "two-length") == records(tmp_path / "one-length")
    per_rank = [json.loads((report / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(p["world_size"] == 2 for p in per_rank)
    # the shared P2S extraction (mean and L2S) was split: each rank ran its own batches of the training items
    assert all(p["extracted"] for p in per_rank)
    assert sum(sum(p["extracted"]) for p in per_rank) == len(tc.TRAIN)  # one extraction, each item once
    assert "uses rank 0's" not in proc.stderr  # every rank's own fit equalled rank 0's, bit for bit
    assert per_rank[0]["rows"] == per_rank[1]["rows"] == json.loads(json.dumps(single.rows))
    assert per_rank[0]["n_generated"] == TOTAL
    assert not list(out.glob("*.rank*.jsonl")), "rank parts left after the merge"
    two, one = records(out), records(single.out_dir)
    assert two == one  # same keys, texts, token ids, checksums
    assert load_result(out).rows == single.rows
    assert markdown_table(load_result(out).rows) == markdown_table(single.rows)
    # a store written by two ranks is reused as it is by one process
    again = tc.run_tiny(sm, out, distributed="off")
    assert again.n_generated == 0 and again.n_reused == TOTAL and again.rows == single.rows

    # 2. rank 1 SIGKILLed in the middle of writing its third batch; torchrun stops rank 0 too
    out = tmp_path / "killed"
    proc, _ = torchrun(tmp_path, out, kill_rank=1, kill_at=3, tag="killed")
    assert proc.returncode != 0
    part = out / "generations.rank1.jsonl"
    assert part.is_file() and not part.read_bytes().endswith(b"\n")  # its torn last line is there
    # 3a. resumed by one process (another world size) from a copy: its parts merged, the same table
    import shutil

    solo = tmp_path / "killed-solo"
    shutil.copytree(out, solo)
    by_one = tc.run_tiny(sm, solo, distributed="off")
    assert by_one.n_reused + by_one.n_generated == TOTAL and by_one.rows == single.rows
    assert records(solo) == one and not list(solo.glob("*.rank*.jsonl"))
    # 3b. rerun on two ranks: nothing lost, nothing duplicated, the same table
    proc, report = torchrun(tmp_path, out, tag="resumed")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads((report / "rank0.json").read_text())
    assert resumed["n_reused"] > 0 and resumed["n_reused"] + resumed["n_generated"] == TOTAL
    assert resumed["rows"] == json.loads(json.dumps(single.rows))
    assert records(out) == one and not list(out.glob("*.rank*.jsonl"))
    print(f"2 ranks vs 1 process: {len(two)} records equal; killed rank 1 at its 3rd batch, resumed: "
          f"{resumed['n_reused']} reused + {resumed['n_generated']} generated = {TOTAL}, every key once")
