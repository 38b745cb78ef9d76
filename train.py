"""Train DepthART: stage 1 the multi-scale VQ-VAE, stage 2 the transformer with the VQ-VAE frozen.

On a laptop CPU, with the built-in synthetic rooms (nothing to download):
    python train.py --data synthetic --preset tiny --stage vqvae --steps 3000 --batch-size 32 --lr 1e-3 --out runs/vqvae
    python train.py --data synthetic --stage transformer --objective var \
        --init-vae runs/vqvae/last.safetensors --steps 3000 --batch-size 32 --lr 1e-3 --out runs/var
Surface normals instead of depth (the synthetic world or HyperSim carry them; see README, Surface normals):
    python train.py --data world --target normals --stage vqvae --steps 1000 --lr 1e-3 --out runs/normals_vqvae
On HyperSim with the official VAR checkpoints, on N GPUs (the paper's optimizer and schedule are the defaults):
    torchrun --nproc_per_node N train.py --data hypersim --data-root /data/hypersim --preset d16 --workers 8 \
        --stage transformer --objective depthart --init-vae vae_ch160v4096z32.pth --init-var var_d16.pth --out runs/d16

A plain loop, readable in one sitting. The batch of step s is a pure function of (seed, s), so `--resume`
continues bit-exactly; checkpoints are safetensors (config in the metadata) written atomically, with the
optimizer, scheduler and step in a weights-only sidecar; Ctrl-C or SIGTERM saves, then exits 0 (a second
signal quits at once). `python train.py --benchmark` prints the samples/s of every stage.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import signal
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

import depthart as D
import download
import zoo as Z
from data import SyntheticScenes, atomic_write, make_dataset, writable_dir
from metrics import mean_normal_metrics, median_aligned_scores
from scenes import family_weights, photo_textures

matplotlib.use("Agg")  # curves are written to files; never open a window
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

CHECKPOINT = "last.safetensors"  # the whole DepthART state dict; config, run facts and settings in the metadata
STATE = "last.state.pt"          # optimizer, scheduler, step, RNG, codebook hits: torch.save, weights_only-loadable
# --resume restores every setting from the checkpoint; these alone may be given with another value
RESUME_MAY_CHANGE = ("steps", "threads", "workers", "log_every", "val_every", "val_samples", "save_every", "force_bf16")
NOT_SETTINGS = ("out", "resume", "benchmark", "stop_after", "explicit", "download")  # this invocation's, not the run's


# ---------------------------------------------------------------------------------------------
# Checkpoints (reading and writing them is zoo.py's: save_checkpoint, load, init_weights)
# ---------------------------------------------------------------------------------------------
def weights_digest(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode()), h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Data: the batch of step s is a pure function of (seed, s), whatever happened before
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()


def step_indices(seed: int, step: int, n: int, batch: int, rank: int = 0, world: int = 1) -> list[int]:
    """Step s reads positions [s*B*W, (s+1)*B*W) of an endless run of shuffled epochs; rank r its r-th B."""
    first = (step * world + rank) * batch
    return [epoch_order(seed, pos // n, n)[pos % n] for pos in range(first, first + batch)]


class StepBatches(torch.utils.data.Sampler):
    """Batch sampler for steps start..stop-1 of this rank (DistributedSampler's job, but resumable mid-epoch)."""

    def __init__(self, n, batch, seed, start, stop, rank=0, world=1):
        self.n, self.batch, self.seed, self.start, self.stop, self.rank, self.world = n, batch, seed, start, stop, rank, world

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield step_indices(self.seed, step, self.n, self.batch, self.rank, self.world)

    def __len__(self):
        return self.stop - self.start


def collate(items: list[dict], device="cpu") -> dict:
    keys = ("image", "depth", "valid") + (("normals",) if "normals" in items[0] else ())
    return {k: torch.stack([it[k] for it in items]).to(device) for k in keys}


def make_data(args, split: str, size: int):
    """synthetic: seeds of the split's range (val = held-out seeds); hypersim: the official split."""
    length = args.train_scenes if split == "train" else args.val_samples
    if args.data in ("synthetic", "world"):
        return SyntheticScenes(split, size=size, length=length, cache=args.cache_data or split == "val",
                               world=args.data == "world", disk_cache=args.disk_cache if split == "train" else None,
                               subjects=args.subjects, families=args.families, photos=args.textures)
    # make_dataset raises one clear error for unknown names, missing roots, empty splits
    return make_dataset(args.data, split=split, size=size, root=args.data_root, length=length, use_hdr=args.hdr,
                        normals=args.target == "normals")


# ---------------------------------------------------------------------------------------------
# Losses: one module whose forward does everything, so DistributedDataParallel sees one forward
# ---------------------------------------------------------------------------------------------
def vae_inputs(model: D.DepthART, image, target, valid) -> torch.Tensor:
    """Stage 1 trains one VQ-VAE on both modalities: images, and depth maps repeated to 3 channels (or
    normal maps, whose three components are the three channels)."""
    return torch.cat((D.normalize_image(image), Z.target_of(model.cfg).encode(target, valid)))


class StageLoss(torch.nn.Module):
    def __init__(self, model: D.DepthART, stage: str, objective: str, release_loss: bool = False):
        super().__init__()
        self.model, self.stage, self.objective, self.release_loss = model, stage, objective, release_loss

    def forward(self, image, target, valid):  # target: depth (B,1,H,W), or normals (B,3,H,W) for a normals model
        if self.stage == "transformer":  # DepthART.loss: frozen VQ-VAE, no-grad rollout, one parallel forward
            if self.release_loss:
                return Z.release_loss(self.model, image, target, self.objective, valid)
            return self.model.loss(image, target, self.objective, valid)
        # Stage 1: L1 reconstruction (sharper edges than MSE) + the VQ-VAE's codebook/commitment loss.
        x = vae_inputs(self.model, image, target, valid)
        rec, vq_loss, idx_list = Z.vqvae_stage1(self.model.vae, x)
        rec_loss = F.l1_loss(rec, x)
        loss = rec_loss + vq_loss
        return loss, {"loss": loss.detach(), "rec_l1": rec_loss.detach(), "vq": vq_loss.detach(), "idx": idx_list}


def set_modes(model: D.DepthART, stage: str):
    """The trained half in train mode, the frozen half in eval mode without gradients."""
    trained, frozen = (model.vae, model.var) if stage == "vqvae" else (model.var, model.vae)
    trained.train().requires_grad_(True)
    frozen.eval().requires_grad_(False)
    return trained


@torch.no_grad()
def restart_dead_codes(vae: D.VQVAE, hits_V: torch.Tensor, x: torch.Tensor, generator: torch.Generator) -> int:
    """Codes that no token picked since the last check move onto random encoder features of this batch
    (plus a little noise, so two restarted codes never coincide). Returns how many moved."""
    dead = (hits_V == 0).nonzero()[:, 0]
    if len(dead) == 0:
        return 0
    f_NC = vae.encode(x).permute(0, 2, 3, 1).reshape(-1, vae.cfg.z_channels).float()
    pick = torch.randint(0, len(f_NC), (len(dead),), generator=generator).to(f_NC.device)
    noise = torch.randn(len(dead), f_NC.shape[1], generator=generator).to(f_NC.device)
    emb = vae.quantize.embedding.weight
    emb[dead] = (f_NC[pick] + 0.01 * f_NC.std() * noise).to(emb.dtype)
    return len(dead)


# ---------------------------------------------------------------------------------------------
# Validation: AbsRel and delta1 after median-scale alignment, on the held-out split
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def validate(model: D.DepthART, val_set, stage: str, objective: str, batch_size: int, device) -> dict:
    """Stage 2: the model's predictions (and the validation loss). Stage 1: the target decoded from the
    VQ-VAE's own tokens of the true target, the ceiling any transformer on this VQ-VAE can reach
    (and the reconstruction L1 of images and targets). Depth: AbsRel and delta1 after median-scale
    alignment; normals: mean and median angular error and the fraction within 11.25 degrees."""
    model.eval()
    target = model.cfg.target
    scores, extra = [], {}
    for i in range(0, len(val_set), batch_size):
        b = collate([val_set[j] for j in range(i, min(i + batch_size, len(val_set)))], device)
        if stage == "transformer":
            pred = model.predict(b["image"])
            extra.setdefault("val_loss", []).append(model.loss(b["image"], b[target], objective, b["valid"])[0].item())
        else:
            x = vae_inputs(model, b["image"], b[target], b["valid"])
            rec = Z.vqvae_reconstruct(model.vae, x)
            n = len(b["image"])
            extra.setdefault("val_image_l1", []).append(F.l1_loss(rec[:n], x[:n]).item())
            extra.setdefault(f"val_{target}_l1", []).append(F.l1_loss(rec[n:], x[n:]).item())
            pred = Z.target_of(model.cfg).decode(rec[n:])
        valid = b["valid"][:, 0].cpu().numpy()
        if target == "normals":
            m = mean_normal_metrics(pred.double().cpu().numpy(), b["normals"].cpu().numpy(), valid)
            scores.append({k: m[k] for k in ("mean_angle", "median_angle", "within_11.25")} | {"n": len(valid)})
        else:
            r, d = median_aligned_scores(pred[:, 0].double().cpu().numpy(), b["depth"][:, 0].cpu().numpy(), valid)
            scores.append({"abs_rel": float(np.mean(r)), "delta1": float(np.mean(d)), "n": len(valid)})
    set_modes(model, stage)
    prefix = "val_" if stage == "transformer" else "val_vqvae_ceiling_"  # stage 1 scores a reconstruction
    total = sum(sc["n"] for sc in scores)
    return {prefix + k: sum(sc[k] * sc["n"] for sc in scores) / total for k in scores[0] if k != "n"} | \
        {k: float(np.mean(v)) for k, v in extra.items()}


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plot_curves(log_path: Path, png_path: Path):
    rows = read_log(log_path)
    train = [r for r in rows if "loss" in r]
    key = "val_" if any("val_loss" in r for r in rows) else "val_vqvae_ceiling_"
    names = ("mean_angle", "within_11.25") if any(key + "mean_angle" in r for r in rows) else ("abs_rel", "delta1")
    val = [r for r in rows if key + names[0] in r]
    what = "val" if key == "val_" else "VQ-VAE ceiling (true tokens)"
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, label="train loss")
    if any("val_loss" in r for r in val):
        axes[0].plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val loss")
    axes[0].set_xlabel("step"), axes[0].set_yscale("log"), axes[0].legend()
    for name, marker in zip(names, ("o-", "s-")):
        axes[1].plot([r["step"] for r in val], [r[key + name] for r in val], marker, label=f"{what} {name}")
    axes[1].set_xlabel("step"), axes[1].legend()
    fig.tight_layout()
    atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = build_parser()
    args = ap.parse_args(argv)
    # which flags the command line gave (whatever their value): --resume refuses those that contradict the run
    unset = object()
    ap.set_defaults(**{a.dest: unset for a in ap._actions if a.dest != "help"})
    args.explicit = {k for k, v in vars(ap.parse_args(argv)).items() if v is not unset}
    for name, role in (("init", "checkpoint"), ("init_vae", "vae"), ("init_var", "var")):  # release, var-d16
        setattr(args, name, download.resolve_arg(getattr(args, name), args.download, role, prog="train.py"))
        setattr(args, name, None if getattr(args, name) is None else str(getattr(args, name)))
    if args.out is None:
        args.out = "runs/" + ("vqvae" if args.stage == "vqvae" else args.objective)
    args.out = Path(args.out)
    return args


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="synthetic",
                    help="synthetic (built-in box rooms) | world (built-in richer world) | hypersim (needs --data-root)")
    ap.add_argument("--data-root", help="HyperSim root in its official layout")
    ap.add_argument("--hdr", action="store_true", help="HyperSim: tone-map color.hdf5 instead of reading tonemap.jpg")
    ap.add_argument("--train-scenes", type=int, default=None, help="size of the training set (default: all)")
    ap.add_argument("--cache-data", action="store_true", help="synthetic: keep rendered training scenes in memory")
    ap.add_argument("--disk-cache", help="synthetic/world: render the --train-scenes training scenes once into this "
                                         "folder (every core) and read them from there")
    ap.add_argument("--subjects", type=float, default=0.0,
                    help="world: this share of the scenes (training and validation) frame a person or an object near "
                         "the camera, as photographs do (default 0: the world's own mix)")
    ap.add_argument("--families", default=None,
                    help="world: draw the scene families with these weights, e.g. room=0.4,tabletop=0.3,corridor=0.05,"
                         "outdoor=0.1,box_room=0.15 (unnamed: 0; default the world's own mix)")
    ap.add_argument("--textures", default=None, metavar="DIR",
                    help="world: a folder of photographs that a share of the surfaces carry, in training and validation "
                         "scenes (python realset.py textures --out DIR --sources CLONES --clone builds one; default: "
                         "the 13 photographs scikit-image ships)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (HyperSim on GPUs: 8)")
    ap.add_argument("--preset", default=None, choices=["tiny", "small", "d16", "release"],
                    help="model size (default tiny); --resume and --init of ours take the checkpoint's config")
    ap.add_argument("--target", default=None, choices=tuple(Z.TARGETS),
                    help="what the model predicts: depth (default) or normals (camera-frame surface normals; needs "
                         "--data world or hypersim); --init and --resume of ours default to the checkpoint's")
    ap.add_argument("--depth-norm", default=None, choices=Z.DEPTH_NORMS,
                    help="how depth enters the VQ-VAE: q98 (the paper's d / q98, default), q98_shift, disparity or log "
                         "(zoo.DepthNormTarget); --init and --resume of ours default to the checkpoint's")
    ap.add_argument("--stage", default="transformer", choices=["vqvae", "transformer"])
    ap.add_argument("--objective", default="depthart", choices=["depthart", "var"], help="stage 2 only")
    ap.add_argument("--init", help="whole-model checkpoint to start from: ours (e.g. a var run) or the DepthART "
                                   "release's model.safetensors, or release after `python download.py release` "
                                   "(fine-tunes the paper's model)")
    ap.add_argument("--release-loss", action="store_true",
                    help="stage 2: the DepthART release's variant: cross-entropy on scales 1..K-1, and at the last "
                         "scale a soft Gumbel-softmax mixture pulled toward f_D by 10 x MSE (default off)")
    ap.add_argument("--init-vae", help="VQ-VAE weights: official vae_ch160v4096z32.pth (var-d16 after `python "
                                       "download.py var-d16`) or a checkpoint of ours")
    ap.add_argument("--init-var", help="transformer weights: official var_d16.pth (var-d16 after `python download.py "
                                       "var-d16`) or a checkpoint of ours")
    ap.add_argument("--download", action="store_true",
                    help="download a name given to --init / --init-vae / --init-var (release, var-d16) not here yet")
    ap.add_argument("--steps", type=int, default=1000, help="total optimizer steps of the run")
    ap.add_argument("--batch-size", type=int, default=16, help="per process")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--lr-step", type=int, default=5000, help="StepLR step size, in iterations")
    ap.add_argument("--lr-gamma", type=float, default=0.8)
    ap.add_argument("--clip", type=float, default=2.0, help="gradient-norm clipping")
    ap.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"],
                    help="auto: bf16 on GPUs that support it, and for stage 1 (--stage vqvae) on CPUs with native BF16 "
                         "(AVX512-BF16 or AMX); off otherwise (on a CPU, bf16 changes the rollout's greedy tokens, and "
                         "without native BF16 it is emulated, ~300x slower than FP32)")
    ap.add_argument("--force-bf16", action="store_true",
                    help="allow --amp bf16 on a CPU without native BF16 (emulated: very slow)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="run directory (default runs/vqvae, runs/var or runs/depthart)")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run in --out exactly where it stopped, with every setting it was started with "
                         "(only --steps, --threads, --workers, --log-every, --val-every, --val-samples, --save-every "
                         "and --stop-after may be given with other values)")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--val-every", type=int, default=500)
    ap.add_argument("--val-samples", type=int, default=64)
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--restart-every", type=int, default=200,
                    help="stage 1: every N steps, codes unused in those N steps restart on encoder features")
    ap.add_argument("--stop-after", type=int, default=None, help="save and stop after this many steps of this invocation")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: cores / processes)")
    ap.add_argument("--benchmark", action="store_true", help="print samples/s of every stage and objective, then exit")
    return ap


def settings(args) -> dict:
    """The run's settings as JSON values: what the checkpoint and args.json record."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in NOT_SETTINGS}


def restore_settings(args):
    """--resume: every setting comes from the checkpoint; a flag given with another value is a ValueError,
    except RESUME_MAY_CHANGE (how far, how fast, how often to validate, log and save), which it overrides."""
    path = args.out / CHECKPOINT
    saved = Z.checkpoint_meta(path).get("args")
    if saved is None:
        print(f"note: {path} records no settings (it predates them): resuming with the flags given", file=sys.stderr)
        return
    explicit = getattr(args, "explicit", set(vars(args)))
    for key, value in saved.items():
        if not hasattr(args, key) or (key in explicit and key in RESUME_MAY_CHANGE):
            continue
        given = getattr(args, key)
        given = str(given) if isinstance(given, Path) else given
        if key in explicit and given != value:
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"--resume: {args.out} was started with {flag} {value}, not {given}; drop {flag} to "
                             f"continue it, or start a new run from it with --init {path} (only "
                             + ", ".join("--" + k.replace("_", "-") for k in RESUME_MAY_CHANGE) + ", --stop-after may change)")
        setattr(args, key, value)


def check_args(args):
    """Mistakes found before any work starts, each a one-line ValueError."""
    if args.data not in ("synthetic", "world", "hypersim"):
        raise ValueError(f"unknown --data {args.data!r}: expected 'synthetic' or 'world' (built in) or 'hypersim' "
                         "(with --data-root)")
    if args.target == "normals" and args.data == "synthetic":
        raise ValueError("--target normals: the 'synthetic' box rooms have no normals; use --data world (the synthetic "
                         "world, exact normals) or --data hypersim (normal_cam.hdf5)")
    if args.families and args.data != "world":
        raise ValueError(f"--families {args.families}: a mix of the scenes of --data world")
    if args.families:
        family_weights(args.families)  # a bad spec fails here, in one line, before anything is built
    if args.textures and args.data != "world":
        raise ValueError(f"--textures {args.textures}: photographs for the scenes of --data world")
    if args.textures:
        try:
            photo_textures(args.textures)  # a missing, empty or altered folder fails here, in one line
        except ValueError as e:
            raise ValueError(f"--{e}") from None
    if args.subjects and (args.data != "world" or not 0.0 < args.subjects <= 1.0):
        raise ValueError(f"--subjects {args.subjects}: a share in (0, 1] of the scenes of --data world")
    if args.data == "hypersim" and not args.data_root:
        raise ValueError("--data hypersim needs --data-root: the directory holding metadata_images_split_scene_v1.csv "
                         "and the scene folders")
    if args.data == "hypersim" and not Path(args.data_root).is_dir():
        raise ValueError(f"--data-root {args.data_root}: no such directory")
    writable_dir(args.out)  # a file, /proc/x, a read-only folder: say so now, not at the first save
    for name in ("steps", "batch_size", "log_every", "val_every", "val_samples", "save_every", "restart_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.resume and not (args.out / CHECKPOINT).is_file():
        raise ValueError(f"--resume: {args.out / CHECKPOINT} does not exist")


def model_config(args) -> Z.Config:
    """The run's own config when resuming, an --init checkpoint's config, else the preset; --target, when
    given, sets what the model predicts (a depth model's weights can start a normals model: same shapes)."""
    path = args.out / CHECKPOINT if args.resume else args.init
    cfg = Z.checkpoint_config(path) if path else None
    if cfg is not None:
        if args.preset and dataclasses.replace(cfg, target="depth", depth_norm="q98") != Z.preset(args.preset):
            print(f"note: using the config of {path}, not preset {args.preset}", file=sys.stderr)
    else:
        cfg = Z.preset(args.preset or "tiny")
    if args.target is None:
        args.target = cfg.target  # recorded with the run's settings
    if args.depth_norm is None:
        args.depth_norm = cfg.depth_norm
    return dataclasses.replace(cfg, target=args.target, depth_norm=args.depth_norm)


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def setup_distributed():
    """torchrun sets RANK/WORLD_SIZE: NCCL on GPUs, Gloo on CPUs. Plain `python train.py`: one process."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        return dist.get_rank(), dist.get_world_size(), torch.device("cuda", local)
    dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def restore(args, model, opt, sched, hits_V, device) -> tuple[int, float]:
    """--resume: weights, optimizer, scheduler, code hits and RNG of the run in --out -> (step, elapsed)."""
    out = args.out
    meta = Z.checkpoint_meta(out / CHECKPOINT)
    state = torch.load(out / STATE, map_location="cpu", weights_only=True)
    if (meta.get("stage"), meta.get("objective")) != (args.stage, args.objective if args.stage == "transformer" else None):
        raise ValueError(f"--resume: {out} is a {meta.get('stage')} run (objective {meta.get('objective')}); pass the "
                         "same --stage/--objective, or start a new run from it with --init")
    recorded = (meta.get("textures") or {}).get("sha256")
    if recorded and photo_textures(args.textures).sha256 != recorded:
        raise ValueError(f"--resume: {out} was trained on the photographs with sha256 {recorded[:16]}..., and "
                         f"{args.textures} now holds another set; rebuild it as the checkpoint's textures record says")
    if meta.get("step") != state["step"]:
        raise ValueError(f"--resume: {out / CHECKPOINT} (step {meta.get('step')}) and {out / STATE} "
                         f"(step {state['step']}) disagree; the run stopped while saving")
    Z.load_weights(model, Z.read_state_dict(out / CHECKPOINT), str(out / CHECKPOINT))
    opt.load_state_dict(state["optimizer"]), sched.load_state_dict(state["scheduler"])
    hits_V.copy_(state["hits_V"])
    torch.set_rng_state(state["rng_cpu"])
    if device.type == "cuda" and "rng_cuda" in state:
        torch.cuda.set_rng_state(state["rng_cuda"], device)
    return int(state["step"]), float(state["elapsed"])


def save(args, model, opt, sched, hits_V, step: int, elapsed: float, device):
    """The checkpoint (weights + config) and the sidecar state that --resume needs, each written atomically."""
    meta = {"stage": args.stage, "objective": args.objective if args.stage == "transformer" else None, "target": args.target,
            "step": step, "data": args.data, "seed": args.seed, "args": settings(args)}
    if args.stage == "transformer" and args.release_loss:
        meta["release_loss"] = True
    if args.textures:  # which photographs the world wore: folder, count, sha256 of the set and of its manifest.json
        meta["textures"] = photo_textures(args.textures).describe()
    Z.save_checkpoint(args.out / CHECKPOINT, model, meta)
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step, "elapsed": elapsed,
             "hits_V": hits_V.cpu(), "rng_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(device)
    atomic_write(args.out / STATE, lambda tmp: torch.save(state, tmp))


def start_log(args, step: int) -> Path:
    """args.json and metrics.jsonl: a resumed log keeps what happened up to the checkpoint."""
    out, log_path = args.out, args.out / "metrics.jsonl"
    if not args.resume and (out / CHECKPOINT).exists():
        print(f"note: starting a new run in {out}, replacing the one there (--resume continues it)", file=sys.stderr)
    used = {**settings(args), "out": str(out), "resume": args.resume}  # after --resume restored the run's own
    atomic_write(out / "args.json", lambda tmp: tmp.write_text(json.dumps(used, indent=1)))
    kept = [r for r in read_log(log_path) if r["step"] <= step] if args.resume else []
    atomic_write(log_path, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in kept)))
    return log_path


def append_log(log_path: Path, row: dict):
    with open(log_path, "a") as f:
        f.write(json.dumps(row) + "\n")


def codebook_upkeep(args, model, stats: dict, hits_V, batch: dict, step: int, world: int):
    """Stage 1: count code hits; every --restart-every steps restart the codes nobody picked."""
    for idx in stats.pop("idx"):
        hits_V += torch.bincount(idx.flatten(), minlength=len(hits_V))
    if step % args.restart_every:
        return
    if world > 1:
        dist.all_reduce(hits_V)
    used = float((hits_V > 0).float().mean())
    gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
    restarted = restart_dead_codes(model.vae, hits_V, vae_inputs(model, batch["image"], batch[model.cfg.target],
                                                                 batch["valid"]), gen)
    if world > 1:  # every rank continues from rank 0's codebook
        dist.broadcast(model.vae.quantize.embedding.weight.data, 0)
    hits_V.zero_()
    stats.update(code_usage=torch.tensor(used), restarted=torch.tensor(float(restarted)))


class StopFlag:
    """Ctrl-C / SIGTERM: finish the step, save, exit 0; a second signal quits at once."""

    def __init__(self):
        self.signal = None
        self.old = signal.signal(signal.SIGINT, self.on_signal), signal.signal(signal.SIGTERM, self.on_signal)

    def on_signal(self, signum, _frame):
        self.signal = signal.Signals(signum).name
        print(f"\n{self.signal}: saving after this step (again to quit now)", file=sys.stderr, flush=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def any_rank(self, world: int, device) -> bool:
        flag = torch.tensor(float(self.signal is not None), device=device)
        if world > 1:  # every rank stops after the same step, or the others would wait forever in all-reduce
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag)

    def restore(self):
        signal.signal(signal.SIGINT, self.old[0]), signal.signal(signal.SIGTERM, self.old[1])


def train(args) -> Path:
    check_args(args)
    if args.resume:
        restore_settings(args)
        check_args(args)
    rank, world, device = setup_distributed()
    use_bf16 = use_bf16_autocast(args, device)  # refuses emulated BF16 before any work
    torch.set_num_threads(args.threads or max(1, cpu_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls outside autocast

    cfg = model_config(args)
    train_set = make_data(args, "train", cfg.image_size)
    val_set = make_data(args, "val", cfg.image_size) if rank == 0 else None
    torch.manual_seed(args.seed)
    model = Z.build(cfg)
    if not args.resume:
        Z.init_weights(model, args.init, args.init_vae, args.init_var)
        if args.stage == "transformer" and not (args.init or args.init_vae) and rank == 0:
            print("warning: training the transformer on an untrained VQ-VAE (pass --init-vae)", file=sys.stderr)
    model.to(device)
    trainable = set_modes(model, args.stage)
    opt = torch.optim.AdamW(trainable.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=args.lr_step, gamma=args.lr_gamma)
    hits_V = torch.zeros(cfg.vocab_size, device=device)  # stage 1: code hits since the last restart check
    step, elapsed = restore(args, model, opt, sched, hits_V, device) if args.resume else (0, 0.0)

    loss_module = StageLoss(model, args.stage, args.objective, args.release_loss)
    if world > 1:  # only the trained half has parameters that need gradients; DDP averages exactly those
        loss_module = torch.nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
    log_path = start_log(args, step) if rank == 0 else None

    loader = torch.utils.data.DataLoader(
        train_set, batch_sampler=StepBatches(len(train_set), args.batch_size, args.seed, step, args.steps, rank, world),
        num_workers=args.workers, collate_fn=collate, persistent_workers=False)
    batches = iter(loader)
    bar = tqdm(total=args.steps, initial=step, disable=rank != 0, dynamic_ncols=True)
    start_step, window_time, window_steps = step, 0.0, 0
    stop = StopFlag()
    try:
        while not (stop.any_rank(world, device) or step >= args.steps
                   or (args.stop_after is not None and step - start_step >= args.stop_after)):
            t0 = time.perf_counter()
            batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
            with autocast():
                loss, stats = loss_module(batch["image"], batch[cfg.target], batch["valid"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable.parameters(), args.clip)
            opt.step()
            sched.step()
            step += 1
            if args.stage == "vqvae":
                codebook_upkeep(args, model, stats, hits_V, batch, step, world)
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            elapsed, window_time, window_steps = elapsed + dt, window_time + dt, window_steps + 1
            bar.update(1)
            if rank == 0 and (step % args.log_every == 0 or step == args.steps or "code_usage" in stats):
                sps = window_steps * args.batch_size * world / window_time
                append_log(log_path, {"step": step, "epoch": step * args.batch_size * world / len(train_set),
                                      "lr": sched.get_last_lr()[0], "samples_per_s": sps, "elapsed": elapsed,
                                      "grad_norm": float(grad_norm), **{k: float(v) for k, v in stats.items()}})
                bar.set_postfix(loss=f"{float(stats['loss']):.4f}", sps=f"{sps:.1f}")
                window_time, window_steps = 0.0, 0
            if rank == 0 and (step % args.val_every == 0 or step == args.steps):
                row = {"step": step, **validate(model, val_set, args.stage, args.objective, args.batch_size, device)}
                append_log(log_path, row)
                bar.write(" ".join(f"{k} {v:.4g}" for k, v in row.items()))
                plot_curves(log_path, args.out / "curves.png")
            if rank == 0 and step % args.save_every == 0:
                save(args, model, opt, sched, hits_V, step, elapsed, device)
        if rank == 0:
            save(args, model, opt, sched, hits_V, step, elapsed, device)
    finally:
        bar.close()
        stop.restore()
    finish(args, model, step, stop.signal, rank, world)
    return args.out / CHECKPOINT


def finish(args, model, step: int, signal_name, rank: int, world: int):
    if rank == 0:
        why = f"stopped by {signal_name} at step {step}" if signal_name else f"step {step}/{args.steps}"
        print(f"{why}; saved {args.out / CHECKPOINT}" + (" (continue with --resume)" if step < args.steps else ""),
              flush=True)
    if world > 1:  # a record that every rank ends with the same weights
        digests = [None] * world
        dist.all_gather_object(digests, weights_digest(model))
        if rank == 0:
            (args.out / "ranks.json").write_text(json.dumps({"world": world, "weights_sha256": digests}))
        dist.barrier()  # no rank tears Gloo down while another still talks to it (seen: SIGABRT at exit)
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Precision: BF16 autocast only where the hardware has BF16
# ---------------------------------------------------------------------------------------------
def native_bf16(device: torch.device) -> bool:
    """BF16 matmuls in hardware: a CUDA GPU that has them, or a CPU with AVX512-BF16 or AMX. Elsewhere PyTorch
    emulates BF16 on the CPU (an AVX2 AMD Zen 3: 2048^2 matmul 0.26 GFLOP/s in BF16 against 81.6 in FP32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def use_bf16_autocast(args, device: torch.device) -> bool:
    """--amp as this machine can honour it; bf16 where it would be emulated is refused unless --force-bf16."""
    native = native_bf16(device)
    if args.amp == "bf16" and not native and not args.force_bf16:
        raise ValueError(f"--amp bf16: this {device.type} has no native BF16 "
                         f"({torch.backends.cpu.get_cpu_capability() if device.type == 'cpu' else 'GPU'}), so BF16 "
                         "would be emulated and run ~100x slower; use --amp auto, or --force-bf16 to insist")
    if args.amp == "auto":  # CPU: stage 1 only (1.9x faster steps measured; the rollout's tokens stay FP32)
        return native and (device.type == "cuda" or args.stage == "vqvae")
    return args.amp == "bf16"


# ----------------------------------------------------------------------------------------------
# Benchmark: training samples/s of each stage on this machine, and how close to its matmul rate
# ---------------------------------------------------------------------------------------------
def matmul_rate(dtype=torch.float32, n: int = 2048, reps: int = 7) -> float:
    """FLOP/s of one large square matmul (2 n^3 FLOPs), median of reps after 2 warm-up runs: the
    machine's practical ceiling, against which a training step's FLOP/s is read."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    times = []
    for _ in range(reps + 2):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times[2:])


def step_flops(loss_module, trainable, batch) -> int:
    """FLOPs of one training step (forward and backward, 2 per multiply-add), counted by PyTorch."""
    with FlopCounterMode(display=False) as counter:
        loss, _ = loss_module(batch["image"], batch["depth"], batch["valid"])
        loss.backward()
    for p in trainable.parameters():
        p.grad = None
    return counter.get_total_flops()


def benchmark(args, warmup: int = 2, timed: int = 5):
    """samples/s of every stage in FP32 and under BF16 autocast, FLOPs per step and the fraction of the
    measured matmul rate (FP32 or BF16) that the step achieves."""
    torch.set_num_threads(args.threads or cpu_cores())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = Z.preset(args.preset or "tiny")
    scenes = SyntheticScenes("train", size=cfg.image_size, length=args.batch_size, world=args.data == "world",
                             photos=args.textures if args.data == "world" else None)
    t = time.process_time()
    batch = collate([scenes[i] for i in range(len(scenes))], device)
    render = len(scenes) / (time.process_time() - t)
    native = native_bf16(device)
    precisions = ("fp32", "bf16") if native or args.force_bf16 else ("fp32",)
    rates = {p: matmul_rate(torch.float32 if p == "fp32" else torch.bfloat16) for p in precisions} \
        if device.type == "cpu" else {}
    print(f"preset {args.preset or 'tiny'}, --data {args.data}, batch {args.batch_size}, {device.type}, "
          f"{torch.get_num_threads()} thread(s), median of {timed} steps after {warmup} warm-up; scenes render at "
          f"{render:.0f}/s of one core's time; matmul 2048^2: "
          + ", ".join(f"{k.upper()} {v / 1e9:.0f} GFLOP/s" for k, v in rates.items())
          + "\n| stage | precision | samples/s | ms/step | GFLOP/step | of matmul rate |\n|---|---|---|---|---|---|"
          + ("" if native else f"\nno native BF16 on this {device.type} ({torch.backends.cpu.get_cpu_capability()}): "
             + ("BF16 rows are emulated" if args.force_bf16 else "BF16 not timed (emulated; --force-bf16 to time it)")))
    for stage, objective in (("vqvae", None), ("transformer", "var"), ("transformer", "depthart")):
        for precision in precisions:
            torch.manual_seed(0)
            model = Z.build(cfg).to(device)
            trainable = set_modes(model, stage)
            opt = torch.optim.AdamW(trainable.parameters(), lr=1e-4)
            loss_module, times = StageLoss(model, stage, objective), []
            autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
            with autocast:
                flops = step_flops(loss_module, trainable, batch)
            for _ in range(warmup + timed):
                t = time.perf_counter()
                with autocast:
                    loss, _ = loss_module(batch["image"], batch["depth"], batch["valid"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable.parameters(), 2.0)
                opt.step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            sec = float(np.median(times[warmup:]))
            name = "vqvae (image + depth)" if stage == "vqvae" else f"transformer {objective}"
            frac = f"{flops / sec / rates[precision]:.2f}" if rates else "-"
            label = precision if precision == "fp32" or native else "bf16 (emulated)"
            print(f"| {name} | {label} | {args.batch_size / sec:.1f} | {1000 * sec:.0f} | {flops / 1e9:.1f} | {frac} |",
                  flush=True)


def main(argv=None):
    args = parse_args(argv)
    threads = torch.get_num_threads()
    try:
        benchmark(args) if args.benchmark else train(args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        torch.set_num_threads(threads)  # for callers that run main() in-process (the tests)


if __name__ == "__main__":
    main()
