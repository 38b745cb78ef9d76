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
from pathlib import Path

import numpy as np
import torch

import depthart as D
import zoo as Z
import export as E
import infer_trt as I
import metrics as M
from data import SyntheticScenes, fit_square, unfit_square
from evaluate import DEPTHART, read_real
from benchmark import cpu_name, time_interleaved

DEFAULT = I.DEFAULT_CHECKPOINT


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
    runs = {k: ((lambda i, k=k: Z.anytime_predict(model, one, k)), args.reps, 1) for k in range(1, K + 1)}
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
            d16 = time_interleaved({k: ((lambda i, k=k: Z.anytime_predict(big, x, k)), args.d16_reps, 1)
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


# ----------------------------------------------------------------------------------------------
# Ensembles of sampled rollouts, and their uncertainty
# ----------------------------------------------------------------------------------------------
def real_metric_frames(root):
    return [s for s in read_real(root) if "skip" not in s and s["kind"] == "metric" and s["valid"].any()]


def model_square(sample_image, size):
    """(H, W, 3) -> the fitted model input (1, 3, S, S) and its box (evaluate.py's pad fit for the real set)."""
    x, box = fit_square(sample_image.transpose(2, 0, 1), size, "pad", DEPTHART.image_resize)
    return np.clip(x, 0, 1)[None].astype(np.float32), box


def back(y_SS, box, H, W):
    return unfit_square(y_SS, box, H, W, "bilinear", DEPTHART.pred_align_corners)


def ensemble_study(args) -> dict:
    """Greedy against ensembles of N = 1, 4, 8 (the first N of the same 8 draws) per sampler, on held-out world
    scenes and the real set's metric frames: median-aligned AbsRel; and at N = 8, whether the uncertainty ranks
    the per-pixel errors (|aligned depth - truth| / truth): Spearman correlation and AUSE, per image, averaged;
    a random uncertainty's AUSE beside it."""
    torch.set_num_threads(args.threads)
    model = Z.load(args.checkpoint).eval()
    S = model.cfg.image_size
    Ns = [n for n in (1, 4, 8, 16) if n <= args.samples]
    images, depths, valids = world_scenes(args.scenes)
    sets = {"world": [(images[i:i + 1].numpy(), None, depths[i], valids[i]) for i in range(len(images))]}
    if Path(args.real).is_dir():
        sets["real"] = []
        for s in real_metric_frames(args.real):
            x, box = model_square(s["image"], S)
            sets["real"].append((x, box, s["target"], s["valid"]))
    rng = np.random.default_rng(0)
    result = {"checkpoint": str(args.checkpoint), "scenes": args.scenes, "samplers": {}, "greedy": {}}
    greedy = I.TorchBackend(model)
    for name, items in sets.items():
        rel = []
        for x, box, gt, valid in items:
            y = greedy.predict(x)[0, 0]
            y = y if box is None else back(y, box, *gt.shape)
            rel.append(M.abs_rel(M.align_median(y, gt, valid), gt, valid))
        result["greedy"][name] = {"abs_rel": float(np.mean(rel)), "n": len(rel)}
    for sampling in args.samplers:
        backend = I.TorchBackend(model, sampling=sampling, seed=0, samples=max(Ns))
        per = result["samplers"][sampling] = {}
        for name, items in sets.items():
            rel = {n: [] for n in Ns}
            rho, au, au_random = [], [], []
            for x, box, gt, valid in items:
                draws = backend.sample(x)[0]  # (N, S, S)
                for n in Ns:
                    d, u = M.ensemble(draws[:n], backend.mode)
                    if box is not None:
                        d, u = back(d, box, *gt.shape), back(u, box, *gt.shape)
                    aligned = M.align_median(d, gt, valid)
                    rel[n].append(M.abs_rel(aligned, gt, valid))
                    if n == max(Ns):
                        err = np.abs(aligned[valid] - gt[valid]) / gt[valid]
                        rho.append(M.spearman(u[valid], err))
                        au.append(M.ause(err, u[valid]))
                        au_random.append(M.ause(err, rng.random(err.size)))
            per[name] = {"abs_rel": {n: float(np.mean(v)) for n, v in rel.items()}, "n": len(items),
                         "spearman": float(np.nanmean(rho)), "ause": float(np.mean(au)),
                         "ause_random": float(np.mean(au_random))}
            print(sampling, name, per[name], flush=True)
    head = "| sampler | set | greedy AbsRel | " + " | ".join(f"N = {n} AbsRel" for n in Ns) + \
        f" | Spearman(unc, error), N = {max(Ns)} | AUSE (random) |"
    lines = [head, "|---" * (5 + len(Ns)) + "|"]
    for sampling, per in result["samplers"].items():
        for name, r in per.items():
            lines.append(f"| {sampling} | {name} ({r['n']}) | {result['greedy'][name]['abs_rel']:.3f} | "
                         + " | ".join(f"{r['abs_rel'][n]:.3f}" for n in Ns)
                         + f" | {r['spearman']:.3f} | {r['ause']:.3f} ({r['ause_random']:.3f}) |")
    write(Path(args.out), "ensemble", result, "\n".join(lines))
    return result


# ----------------------------------------------------------------------------------------------
# Metric depth from a few known points
# ----------------------------------------------------------------------------------------------
def known_study(args) -> dict:
    """The greedy prediction of every metric frame of the real set, fitted to N = 5, 20, 100 random valid pixels
    of its measured depth (seeds 0..S-1): AbsRel of the metric depth over all valid pixels, mean over frames and
    seeds; beside it, the same with one of the N points wrong (its depth x10), and a plain least-squares scale
    (not robust) on the same points, and the robust fit with an inlier refit; the oracle is the median scale over every valid pixel."""
    torch.set_num_threads(args.threads)
    model = Z.load(args.checkpoint).eval()
    backend, S = I.TorchBackend(model), model.cfg.image_size
    mode = "affine" if Z.alignment(model.cfg) == "affine" else "scale"
    frames = real_metric_frames(args.real)
    rows = {}
    for s in frames:
        x, box = model_square(s["image"], S)
        pred, gt, valid = back(backend.predict(x)[0, 0], box, *s["target"].shape), s["target"], s["valid"]
        r = rows.setdefault("oracle", {}).setdefault("all", [])
        r.append(M.abs_rel(M.align_median(pred, gt, valid), gt, valid))
        ys, xs = np.nonzero(valid)
        for n in (5, 20, 100):
            for seed in range(args.seeds):
                rng = np.random.default_rng(seed)
                pick = rng.choice(len(ys), n, replace=False)
                mask = np.zeros_like(valid)
                mask[ys[pick], xs[pick]] = True
                known = np.where(mask, gt, 0.0)
                wrong = known.copy()
                wrong[ys[pick[0]], xs[pick[0]]] *= 10
                for label, k in (("robust", known), ("robust, one wrong", wrong)):
                    for suffix, refit in (("", None), (", inlier refit 25%", 0.25)):
                        fitted, _ = M.fit_known(pred, k, mask, mode, refit=refit, seed=seed)
                        rows.setdefault(label + suffix, {}).setdefault(n, []).append(M.abs_rel(fitted, gt, valid))
                for label, k in (("least squares", known), ("least squares, one wrong", wrong)):
                    use = mask & (pred > 1e-6)
                    sc, t = M._lsq(pred[use].astype(np.float64), k[use].astype(np.float64), mode)
                    rows.setdefault(label, {}).setdefault(n, []).append(M.abs_rel(sc * pred + t, gt, valid))
    result = {"checkpoint": str(args.checkpoint), "frames": len(frames), "seeds": args.seeds, "mode": mode,
              "abs_rel": {label: {str(n): float(np.mean(v)) for n, v in r.items()} for label, r in rows.items()}}
    lines = ["| fit | 5 points | 20 points | 100 points |", "|---|---|---|---|"]
    for label in ("robust", "robust, one wrong", "robust, inlier refit 25%", "robust, one wrong, inlier refit 25%",
                  "least squares", "least squares, one wrong"):
        lines.append(f"| {label} | " + " | ".join(f"{result['abs_rel'][label][str(n)]:.3f}" for n in (5, 20, 100)) + " |")
    lines.append(f"| oracle: median scale over all valid pixels | {result['abs_rel']['oracle']['all']:.3f} | | |")
    write(Path(args.out), "known", result, "\n".join(lines))
    return result


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
    p.add_argument("--samplers", nargs="+", default=["release", "temperature"], choices=["release", "temperature"])
    p.add_argument("--seeds", type=int, default=5, help="known: random draws of the points per frame")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    {"anytime": anytime, "ensemble": ensemble_study, "known": known_study}[args.study](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
