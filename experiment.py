"""Does DepthART beat teacher forcing? Evaluate trained runs scale by scale on held-out synthetic scenes.

    python experiment.py --group var=runs/var_s0,runs/var_s1 --group depthart=runs/da_s0,runs/da_s1 \
        --warm runs/warm --n-val 300 --out docs/experiment

For every run (its `last.safetensors`) it decodes the partial sum after each scale of the greedy
rollout and reports AbsRel and delta1 after median-scale alignment, and the mean entropy of the
predicted token distributions per scale. It also reports what any model must beat: three trivial
predictors (a constant depth, a ramp that grows with image height, the mean training depth map),
the VQ-VAE's own ceiling (decoding the true depth tokens), and whether the model uses the image at
all (teacher-forced loss and AbsRel with the right images and with shuffled ones).
Writes PREFIX.json, PREFIX.md (the README's table) and PREFIX_scales.png (error against scale).
It also measures exposure bias: token accuracy per scale with the true past against the model's
own greedy past. `--gallery CKPT --out docs/gallery.png` draws the README's picture instead.
A run directory keeps its scores (scores_N.json, for N held-out scenes): `--score RUN` measures them
alone when a run ends, and the experiment reads them back while the checkpoint has not moved on.

Normals models (train.py --target normals; the runs say so in their checkpoints) are scored the same way
on held-out scenes of the synthetic world (which has exact normals): mean angular error and the fraction
of pixels within 11.25 degrees in place of AbsRel and delta1 (no alignment), and the trivial predictors
are every pixel facing the camera and the mean training normal map.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib
import numpy as np
import torch
from skimage import data as skdata

import depthart as D
import zoo as Z
from data import SyntheticScenes, atomic_write, fit_square, package_file, read_image, resize_image
from evaluate import ORDINAL_PAIRS
from metrics import constant_depth, facing_camera, mean_normal_metrics, median_aligned_scores, ramp_depth
from train import read_log

matplotlib.use("Agg")  # figures go to files
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


# The two figures reported per target (error first, lower is better; then an accuracy, higher is better).
METRICS = {"depth": ("abs_rel", "delta1"), "normals": ("mean_angle", "within_11.25")}
LABELS = {"abs_rel": "AbsRel", "delta1": "delta1", "mean_angle": "mean angle (deg)", "within_11.25": "< 11.25 deg"}


def learned_world(checkpoint) -> bool:
    """Whether a checkpoint learned the synthetic world (--data world; every normals model) rather than the
    box rooms: its held-out scenes, baselines and pictures come from the same world."""
    meta = Z.checkpoint_meta(checkpoint)
    return meta.get("data") == "world" or Z.checkpoint_config(checkpoint).target == "normals"


def load_val(n: int, size: int, target: str = "depth", world: bool | None = None):
    """The held-out synthetic scenes (their own seed range) as stacked tensors: the box rooms, or the
    synthetic world (world=True; the default for normals, which only the world has)."""
    scenes = SyntheticScenes("val", size=size, length=n, world=target == "normals" if world is None else world)
    items = [scenes[i] for i in range(n)]
    keys = ("image", "depth", "valid") + (("normals",) if target == "normals" else ())  # world items carry both
    return {k: torch.stack([it[k] for it in items]) for k in keys}


def scores(pred: torch.Tensor, val) -> dict:
    """Depth (N, 1, H, W): AbsRel and delta1 after median-scale alignment; normals (N, 3, H, W): mean angle
    and the fraction within 11.25 degrees (no alignment); averaged over images."""
    if "normals" in val:
        m = mean_normal_metrics(pred.double().numpy(), val["normals"].numpy(), val["valid"][:, 0].numpy())
        return {k: m[k] for k in METRICS["normals"]}
    rel, d1 = median_aligned_scores(pred[:, 0].double().numpy(), val["depth"][:, 0].numpy(),
                                    val["valid"][:, 0].numpy())
    return {"abs_rel": float(np.mean(rel)), "delta1": float(np.mean(d1))}


def held_out(checkpoint, n: int):
    """(config, world?, held-out scenes) for a checkpoint: n scenes of what it learned, at its size and target."""
    cfg, world = Z.checkpoint_config(checkpoint), learned_world(checkpoint)
    return cfg, world, load_val(n, cfg.image_size, cfg.target, world)


def batches(val, bs: int):
    for i in range(0, len(val["image"]), bs):
        yield {k: v[i:i + bs] for k, v in val.items()}


@torch.no_grad()
def per_scale(model: D.DepthART, val, bs: int = 50) -> list[dict]:
    """Greedy rollout; after every scale: depth of the partial sum, its scores, token entropy, and the
    exposure bias: token accuracy with the true past (teacher forcing, targets = the VQ-VAE's tokens)
    against accuracy with the model's own greedy past (targets = DepthART's dynamic targets for that
    walk). Where the two are close there is little for DepthART to gain."""
    K, target = len(model.cfg.patch_nums), model.cfg.target
    depths, entropy = [[] for _ in range(K)], [[] for _ in range(K)]
    hits_tf, hits_own = torch.zeros(K), torch.zeros(K)
    for b in batches(val, bs):
        img_BLCv = model.encode_image(b["image"])
        own_z, f_hats, logits = model.rollout(img_BLCv)
        f_D = model.encode_depth(b[target], b["valid"])
        true_z, true_f_hats = model.vae.quantize(f_D)
        tf_BL = model.parallel_logits(img_BLCv, model.vae.quantize.next_inputs(true_f_hats)).argmax(-1)
        dyn_z, _ = D.dynamic_targets(model.vae.quantize, f_D, own_z)
        depths_BKHW = model.decode_scales(f_hats)  # (B, K, 3, H, W) for normals
        for k in range(K):
            depths[k].append(Z.last_scale(depths_BKHW[:, :k + 1]))
            logp = logits[k].log_softmax(-1)
            entropy[k].append(-(logp.exp() * logp).sum(-1).mean(1))
            hits_tf[k] += (tf_BL[:, model.bounds[k]:model.bounds[k + 1]] == true_z[k]).float().mean(1).sum()
            hits_own[k] += (own_z[k] == dyn_z[k]).float().mean(1).sum()
    n = len(val["image"])
    return [{"scale": model.cfg.patch_nums[k], **scores(torch.cat(depths[k]), val),
             "entropy": float(torch.cat(entropy[k]).mean()),
             "acc_teacher_forced": float(hits_tf[k] / n), "acc_own_rollout": float(hits_own[k] / n)}
            for k in range(K)]


@torch.no_grad()
def image_use(model: D.DepthART, val, bs: int = 50) -> dict:
    """Teacher-forced loss and final AbsRel with the right images and with shuffled ones."""
    out = {}
    n = len(val["image"])
    shuffled = dict(val, image=val["image"][torch.arange(n).roll(1)])  # every image paired with another scene
    for name, v in (("right", val), ("shuffled", shuffled)):
        losses = [model.loss(b["image"], b[model.cfg.target], "var", b["valid"])[0].item() * len(b["image"])
                  for b in batches(v, bs)]
        pred = torch.cat([model.predict(b["image"]) for b in batches(v, bs)])
        out[name] = {"var_loss": sum(losses) / n, **scores(pred, v)}
    return out


@torch.no_grad()
def vqvae_ceiling(model: D.DepthART, val, bs: int = 50) -> dict:
    """Decoding the VQ-VAE's own tokens of the true depth: the best any transformer on it can do."""
    return scores(torch.cat([Z.vqvae_ceiling(model, b[model.cfg.target], b["valid"]) for b in batches(val, bs)]), val)


def trivial_baselines(val, n_train: int, size: int, world: bool = False) -> dict:
    """Constant depth, a ramp growing with image height, and the mean (median-normalized) training depth;
    for normals: every pixel facing the camera, and the mean training normal map (renormalized)."""
    N = len(val["image"])
    if "normals" in val:
        train = SyntheticScenes("train", size=size, length=n_train, world=True)
        mean_n = sum(train[i]["normals"] for i in range(n_train))
        mean_n = mean_n / mean_n.norm(dim=0, keepdim=True).clamp_min(1e-6)
        return {"facing the camera": scores(torch.from_numpy(facing_camera(size, size)).expand(N, 3, size, size), val),
                "mean_train_normals": scores(mean_n.expand(N, 3, size, size), val)}
    same = lambda depth_map: torch.from_numpy(depth_map(size, size)).expand(N, 1, size, size)  # noqa: E731
    train = SyntheticScenes("train", size=size, length=n_train, world=world)
    mean_map = torch.zeros(1, size, size)
    for i in range(n_train):
        d = train[i]["depth"]
        mean_map += d / d.median()
    return {"constant": scores(same(constant_depth), val),
            "ramp": scores(same(ramp_depth), val),
            "mean_train_depth": scores((mean_map / n_train).expand(N, 1, size, size), val)}


def run_info(run: Path) -> dict:
    """Steps and wall-clock seconds of a run, read from its metrics log when it has one."""
    rows = read_log(run / "metrics.jsonl")
    info = {"steps": max(r["step"] for r in rows)} if rows else {}
    times = [r["elapsed"] for r in rows if "elapsed" in r]
    if times:
        info["train_seconds"] = max(times)
    return info


def checkpoint_of(run: Path) -> Path:
    return run / "last.safetensors" if run.is_dir() else run


def scores_file(run: Path, n_val: int) -> Path:
    return run / f"scores_{n_val}.json"


def scored(run: Path, n_val: int) -> dict | None:
    """The scores kept in a run directory (scores_N.json), if they are those of its checkpoint, or of a run that was
    parked without its weights (docs/train_world.sh --park keeps only finished, scored runs that way)."""
    record, ckpt = scores_file(run, n_val), checkpoint_of(run)
    if not run.is_dir() or not record.exists():
        return None
    kept = json.loads(record.read_text())
    return kept if not ckpt.exists() or kept["checkpoint"] == checkpoint_id(ckpt) else None


def checkpoint_id(ckpt: Path) -> str:
    """Which weights were scored: the training step, or the file's time for a checkpoint that has none."""
    step = Z.checkpoint_meta(ckpt).get("step")
    return f"step {step}" if step is not None else f"mtime_ns {ckpt.stat().st_mtime_ns}"


def evaluate_run(run: Path, val, n_val: int) -> dict:
    """A run's scores on the n_val held-out scenes, measured once per checkpoint step and kept beside it."""
    kept = scored(run, n_val)
    if kept is not None:
        return kept
    ckpt = checkpoint_of(run)
    if not ckpt.exists():
        raise SystemExit(f"experiment.py: {run} has neither a checkpoint nor scores on {n_val} scenes")
    model = Z.load(ckpt)
    r = {"run": str(run), **run_info(run if run.is_dir() else run.parent),
         "checkpoint": checkpoint_id(ckpt), "target": model.cfg.target,
         "scales": per_scale(model, val), "image_use": image_use(model, val)}
    if run.is_dir():
        atomic_write(scores_file(run, n_val), lambda tmp: tmp.write_text(json.dumps(r)))
    return r


def summarize(runs: list[dict]) -> dict:
    """Mean and spread (min, max) over the seeds of a group, per scale and at the last scale."""
    K = len(runs[0]["scales"])
    def stat(values):
        return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}
    keys = METRICS["normals" if "mean_angle" in runs[0]["scales"][0] else "depth"] + ("entropy",)
    return {"per_scale": [{key: stat([r["scales"][k][key] for r in runs]) for key in keys}
                          | {"scale": runs[0]["scales"][k]["scale"]} for k in range(K)],
            "train_seconds": stat([r.get("train_seconds", math.nan) for r in runs]),
            "steps": stat([r.get("steps", math.nan) for r in runs]),
            "n_runs": len(runs)}


def markdown(result: dict) -> str:
    err, acc = METRICS[result.get("target", "depth")]
    f = ".2f" if err == "mean_angle" else ".3f"
    lines = [f"| predictor | {LABELS[err]} | {LABELS[acc]} | steps | training time per run |", "|---|---|---|---|---|"]
    for name, s in result["baselines"].items():
        lines.append(f"| {name} | {s[err]:{f}} | {s[acc]:.3f} | | |")
    lines.append(f"| VQ-VAE ceiling (true tokens) | {result['ceiling'][err]:{f}} | "
                 f"{result['ceiling'][acc]:.3f} | | |")
    for name, g in result["groups"].items():
        last, t = g["summary"]["per_scale"][-1], g["summary"]["train_seconds"]
        lines.append(f"| {name} (mean of {g['summary']['n_runs']}; min-max) | {last[err]['mean']:{f}} "
                     f"({last[err]['min']:{f}}-{last[err]['max']:{f}}) | {last[acc]['mean']:.3f} "
                     f"({last[acc]['min']:.3f}-{last[acc]['max']:.3f}) | {g['summary']['steps']['mean']:.0f} | "
                     f"{t['mean'] / 60:.1f} min ({t['min'] / 60:.1f}-{t['max'] / 60:.1f}) |")
    lines += ["", f"{LABELS[err]} / {LABELS[acc]} / token entropy (nats) after each scale, mean over runs:", "",
              "| scale | " + " | ".join(result["groups"]) + " |", "|---" * (1 + len(result["groups"])) + "|"]
    K = len(next(iter(result["groups"].values()))["summary"]["per_scale"])
    for k in range(K):
        cells = []
        for g in result["groups"].values():
            s = g["summary"]["per_scale"][k]
            cells.append(f"{s[err]['mean']:{f}} / {s[acc]['mean']:.3f} / {s['entropy']['mean']:.2f}")
        lines.append(f"| {g['summary']['per_scale'][k]['scale']} | " + " | ".join(cells) + " |")
    lines += ["", "Token accuracy per scale, teacher-forced (true past) / own greedy rollout (dynamic targets), "
              "mean over runs:", "", "| scale | " + " | ".join(result["groups"]) + " |",
              "|---" * (1 + len(result["groups"])) + "|"]
    for k in range(K):
        cells = []
        for g in result["groups"].values():
            e = [r["scales"][k] for r in g["runs"]]
            cells.append(f"{np.mean([x['acc_teacher_forced'] for x in e]):.3f} / "
                         f"{np.mean([x['acc_own_rollout'] for x in e]):.3f}")
        lines.append(f"| {g['runs'][0]['scales'][k]['scale']} | " + " | ".join(cells) + " |")
    lines += ["", f"Image use (teacher-forced loss, {LABELS[err]}) with the right images vs shuffled images:", "",
              f"| run | loss right | loss shuffled | {LABELS[err]} right | {LABELS[err]} shuffled |", "|---|---|---|---|---|"]
    for g in result["groups"].values():
        for r in g["runs"]:
            u = r["image_use"]
            lines.append(f"| {r['run']} | {u['right']['var_loss']:.3f} | {u['shuffled']['var_loss']:.3f} | "
                         f"{u['right'][err]:{f}} | {u['shuffled'][err]:{f}} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path):
    err = METRICS[result.get("target", "depth")][0]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, g in result["groups"].items():
        ps = g["summary"]["per_scale"]
        x = [s["scale"] for s in ps]
        ax.plot(x, [s[err]["mean"] for s in ps], marker="o", label=name)
        ax.fill_between(x, [s[err]["min"] for s in ps], [s[err]["max"] for s in ps], alpha=0.2)
    for name, s in result["baselines"].items():
        ax.axhline(s[err], ls=":", lw=1, color="gray")
        ax.text(x[0], s[err], name, fontsize=7, color="gray", va="bottom")
    ax.axhline(result["ceiling"][err], ls="--", lw=1, color="k")
    ax.text(x[0], result["ceiling"][err], "VQ-VAE ceiling", fontsize=7, va="bottom")
    ax.set_xlabel("token map size after the scale (partial sum decoded)")
    ax.set_ylabel("AbsRel (median-aligned), held-out scenes" if err == "abs_rel" else
                  "mean angular error (degrees), held-out world scenes")
    ax.set_xticks(x)
    ax.legend()
    ax.set_title("Error against scale: min-max over seeds shaded")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def photographs(which: str, size: int) -> list:
    """(name, image (3, size, size)) of the gallery's photographs: three of scikit-image's, squashed to the
    square ("skimage"), or the ordinal check's ten, padded to the square as the check sees them ("ordinal")."""
    if which == "skimage":
        return [(name, resize_image(getattr(skdata, name)() / 255.0, size)) for name in ("astronaut", "coffee", "chelsea")]
    images = json.loads(ORDINAL_PAIRS.read_text())["images"]
    return [(Path(im["file"]).stem, torch.from_numpy(np.clip(fit_square(
        read_image(package_file(im["package"], im["file"])).transpose(2, 0, 1), size, "pad")[0], 0, 1)))
        for im in images]


@torch.no_grad()
def gallery(checkpoint, path: Path, n_synthetic: int = 1, photos: str = "skimage"):
    """The README's picture: photographs (see photographs()) and a held-out synthetic scene of the world
    the model learned; per row the input, the prediction after every scale (the partial sum decoded) and,
    where known, the truth."""
    model = Z.load(checkpoint)
    cfg = model.cfg
    normals = cfg.target == "normals"
    rows = [(name, image, None) for name, image in photographs(photos, cfg.image_size)]
    val = SyntheticScenes("val", size=cfg.image_size, length=n_synthetic, world=learned_world(checkpoint))
    rows += [(f"held-out scene {i}", val[i]["image"], val[i]["normals"] if normals else val[i]["depth"][0])
             for i in range(n_synthetic)]
    depth_BKHW = model.predict(torch.stack([r[1] for r in rows]), all_scales=True)
    K = depth_BKHW.shape[1]
    fig, axes = plt.subplots(len(rows), K + 2, figsize=(1.45 * (K + 2), 1.55 * len(rows)), squeeze=False)
    for i, (name, image_3HW, truth_HW) in enumerate(rows):
        axes[i, 0].imshow(image_3HW.permute(1, 2, 0).numpy())
        axes[i, 0].set_ylabel(name, fontsize=7)
        # every scale on the final prediction's colour range, so the refinement is visible as change
        lo, hi = depth_BKHW[i, -1].min().item(), depth_BKHW[i, -1].max().item()
        for k in range(K):
            if normals:  # RGB = (n + 1) / 2
                axes[i, k + 1].imshow(((depth_BKHW[i, k] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy())
            else:
                axes[i, k + 1].imshow(depth_BKHW[i, k].numpy(), cmap="magma_r", vmin=lo, vmax=hi)
            if i == 0:
                axes[i, k + 1].set_title(f"after {cfg.patch_nums[k]}x{cfg.patch_nums[k]}", fontsize=7)
        if truth_HW is not None:
            axes[i, -1].imshow(((truth_HW + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy() if normals else truth_HW.numpy(),
                               cmap=None if normals else "magma_r")
            axes[i, -1].set_title(f"true {cfg.target}", fontsize=7)
    axes[0, 0].set_title("input", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
        if not ax.images:
            ax.axis("off")
    fig.suptitle(f"{Path(checkpoint).name}: " + ("normals after each scale (RGB = (n + 1) / 2, camera frame x right, "
                 "y down, z forward)" if normals else "depth after each scale (near = light, far = dark)"), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", action="append", metavar="NAME=RUN[,RUN...]",
                    help="a named group of run directories (or checkpoints), e.g. one per objective")
    ap.add_argument("--n-val", type=int, default=300)
    ap.add_argument("--n-train-mean", type=int, default=500, help="training scenes for the mean depth map")
    ap.add_argument("--out", default="docs/experiment")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--gallery", metavar="CKPT", help="write only the picture of CKPT on photographs to --out")
    ap.add_argument("--photos", choices=["skimage", "ordinal"], default="skimage",
                    help="--gallery: three scikit-image photographs, or the ordinal check's ten")
    ap.add_argument("--score", nargs="+", metavar="RUN",
                    help="only score these run directories and keep the scores beside them (scores_N.json)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gallery:
        gallery(args.gallery, Path(f"{args.out}.png" if not args.out.endswith(".png") else args.out), photos=args.photos)
        return
    if args.score:  # what docs/train_world.sh runs after each training run: its scores, kept beside it
        for run in map(Path, args.score):
            ckpt = checkpoint_of(run)
            val = held_out(ckpt, args.n_val)[2] if scored(run, args.n_val) is None and ckpt.exists() else None
            r = evaluate_run(run, val, args.n_val)  # kept scores need no scenes; neither weights nor scores: an error
            err = METRICS[r["target"]][0]
            print(f"{run}: {r['checkpoint']}, {LABELS[err]} per scale", [round(x[err], 3) for x in r["scales"]])
        return
    if not args.group:
        ap.error("give --group NAME=RUN[,RUN...] (one per objective), or --gallery CKPT")
    groups = {}
    for spec in args.group:
        name, _, runs = spec.partition("=")
        if not runs:
            ap.error(f"--group {spec!r}: expected NAME=RUN[,RUN...]")
        groups[name] = [Path(r) for r in runs.split(",")]
    # The held-out scenes follow the first run that still has its checkpoint (size, target, world or box rooms).
    first = next((r for runs in groups.values() for r in runs if checkpoint_of(r).exists()), None)
    if first is None:
        ap.error("none of the runs has a checkpoint (last.safetensors): nothing tells the held-out scenes")
    cfg, world, val = held_out(checkpoint_of(first), args.n_val)
    result = {"groups": {}, "target": cfg.target, "scenes": "world" if world else "box rooms"}
    err = METRICS[cfg.target][0]
    for name, runs in groups.items():
        evaluated = []
        for run in runs:
            r = evaluate_run(run, val, args.n_val)
            if r["target"] != cfg.target:
                raise SystemExit(f"experiment.py: {run} predicts {r['target']}, {first} {cfg.target}")
            print(f"{name}: {run}: {LABELS[err]} per scale", [round(s[err], 3) for s in r["scales"]], flush=True)
            evaluated.append(r)
        result["groups"][name] = {"runs": evaluated, "summary": summarize(evaluated)}
    result["baselines"] = trivial_baselines(val, args.n_train_mean, cfg.image_size, world)
    result["ceiling"] = vqvae_ceiling(Z.load(checkpoint_of(first)), val)
    result["n_val"] = args.n_val
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(result, indent=1))
    Path(f"{out}.md").write_text(markdown(result))
    plot(result, Path(f"{out}_scales.png"))
    print(markdown(result))


if __name__ == "__main__":
    main()
