"""The measurements behind README's tables for anytime depth, ensembles and metric depth from known points.

    python studies.py anytime --out docs/studies     # AbsRel and latency per number of scales k
    python studies.py ensemble --out docs/studies    # sampled ensembles against greedy; does uncertainty rank errors
    python studies.py known --out docs/studies       # metric depth from 5, 20, 100 random known points

Each writes NAME.json (every figure) and NAME.md (the table README quotes) into --out, and prints the table.
Held-out world scenes are data.SyntheticScenes("val", size=128, world=True) (their own seed range); the real
set is realset.py's (--real, default /tmp/realset), its metric frames.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

import depthart as D
import zoo as Z
import export as E
import infer_trt as I
import metrics as M
from data import SyntheticScenes
from evaluate import read_real
from benchmark import time_interleaved

DEFAULT = I.DEFAULT_CHECKPOINT


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def world_scenes(n: int):
    ds = SyntheticScenes("val", size=128, length=n, world=True)
    items = [ds[i] for i in range(n)]
    return (torch.stack([it["image"] for it in items]), [it["depth"][0].numpy() for it in items],
            [it["valid"][0].numpy() for it in items])


def write(out: Path, name: str, result: dict, table: str):
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    (out / f"{name}.md").write_text(table + "\n")
    print(table)


# ----------------------------------------------------------------------------------------------
# Anytime depth: stop after k scales
# ----------------------------------------------------------------------------------------------
def anytime(args) -> dict:
    torch.set_num_threads(args.threads)
    model = Z.load(args.checkpoint).eval()
    K = len(model.cfg.patch_nums)
    images, depths, valids = world_scenes(args.scenes)
    with torch.no_grad():
        scales = torch.cat([model.predict(images[i:i + 16], all_scales=True) for i in range(0, len(images), 16)])
    rel = {k: float(np.mean(M.median_aligned_scores(list(scales[:, k - 1].numpy()), depths, valids)[0]))
           for k in range(1, K + 1)}
    one = images[:1]
    runs = {k: ((lambda i, k=k: model.predict(one, max_scale=k)), args.reps, 1) for k in range(1, K + 1)}
    eager = time_interleaved(runs)
    ort_times = {}
    if args.ort:
        import onnxruntime as ort
        sessions = {}
        for k in range(1, K + 1):
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            graph = I.cached_graph(args.checkpoint, max_scale=None if k == K else k, cache_dir=args.cache_dir)
            sessions[k] = ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"])
        x = one.numpy()
        ort_times = time_interleaved({k: ((lambda i, s=s: s.run(None, {"image": x})), args.reps, 1)
                                      for k, s in sessions.items()})
    d16 = {}
    if args.d16_reps:
        torch.manual_seed(0)
        big = E.lively(Z.build(D.Config.d16())).eval()
        x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            d16 = time_interleaved({k: ((lambda i, k=k: big.predict(x, max_scale=k)), args.d16_reps, 1)
                                    for k in range(1, len(big.cfg.patch_nums) + 1)})
        del big
    pn, pn16 = model.cfg.patch_nums, D.Config.d16().patch_nums
    result = {"checkpoint": str(args.checkpoint), "scenes": args.scenes, "cpu": cpu_name(), "threads": args.threads,
              "abs_rel": rel, "eager_s": eager, "ort_s": ort_times, "d16_eager_s": d16, "reps": args.reps,
              "d16_reps": args.d16_reps}
    lines = [f"| k | last scale | AbsRel ({args.scenes} world scenes) | eager s/image" + (" | ORT s/image" if ort_times else "")
             + " | d16 last scale | d16 eager s/image |", "|---" * (6 + bool(ort_times)) + "|"]
    for k in range(1, max(K, len(pn16) if d16 else 0) + 1):
        row = [str(k)]
        row += [f"{pn[k - 1]}x{pn[k - 1]}", f"{rel[k]:.3f}", f"{eager[k]:.4f}"] if k <= K else ["", "", ""]
        if ort_times:
            row.append(f"{ort_times[k]:.4f}" if k <= K else "")
        row += [f"{pn16[k - 1]}x{pn16[k - 1]}", f"{d16[k]:.2f}"] if d16 else ["", ""]
        lines.append("| " + " | ".join(row) + " |")
    write(Path(args.out), "anytime", result, "\n".join(lines))
    return result


def ensemble_study(args):
    raise NotImplementedError


def known_study(args):
    raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("study", choices=["anytime", "ensemble", "known"])
    p.add_argument("--checkpoint", default=str(DEFAULT))
    p.add_argument("--out", default="docs/studies")
    p.add_argument("--scenes", type=int, default=200, help="held-out world scenes (default 200)")
    p.add_argument("--real", default="/tmp/realset", help="the real validation set (realset.py's output)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=7, help="anytime: timed runs per k (medians)")
    p.add_argument("--d16-reps", type=int, default=2, help="anytime: timed d16 runs per k (0: no d16)")
    p.add_argument("--ort", action="store_true", help="anytime: also time the exported graph per k (exports once)")
    p.add_argument("--cache-dir", help="anytime --ort: where the graphs are cached")
    p.add_argument("--samples", type=int, default=8, help="ensemble: the largest N")
    p.add_argument("--seeds", type=int, default=5, help="known: random draws of the points per frame")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    {"anytime": anytime, "ensemble": ensemble_study, "known": known_study}[args.study](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
