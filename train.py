"""Train DepthART: stage 1 the multi-scale VQ-VAE, stage 2 the transformer with the VQ-VAE frozen.

On a laptop CPU, with the built-in synthetic rooms (nothing to download):
    python train.py --data synthetic --preset tiny --stage vqvae --steps 3000 --batch-size 32 --lr 1e-3 --out runs/vqvae
    python train.py --data synthetic --preset tiny --stage transformer --objective var \
        --init runs/vqvae/last.safetensors --steps 3000 --batch-size 32 --lr 1e-3 --out runs/var
On HyperSim with the official VAR checkpoints, on N GPUs (the paper's optimizer and schedule are the defaults):
    torchrun --nproc_per_node N train.py --data hypersim --data-root /data/hypersim --preset d16 \
        --stage transformer --objective depthart --init-vae vae_ch160v4096z32.pth --init-var var_d16.pth --out runs/d16

A plain loop in one sitting: data for step s is a pure function of (seed, s), so `--resume` continues
bit-exactly; checkpoints are safetensors (config in the metadata) written atomically; Ctrl-C or
SIGTERM saves before exiting. `python train.py --benchmark` measures samples/s of every stage.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import depthart as D

CHECKPOINT = "last.safetensors"
STATE = "last.state.pt"


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
def atomic_write(path: Path, write):
    """write(tmp_path) then rename over path: a crash never leaves a half-written checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(path: Path, model: D.DepthART, meta: dict):
    from safetensors.torch import save_file
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"config": json.dumps(model.cfg.to_dict()), "meta": json.dumps(meta)}
    atomic_write(path, lambda tmp: save_file(sd, str(tmp), metadata=metadata))


def load_checkpoint(path, device="cpu"):
    """Our safetensors checkpoint -> (model in eval mode, config, meta dict)."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), "pt") as f:
            md = f.metadata() or {}
    except Exception as e:  # truncated files, not safetensors at all
        raise ValueError(f"{path}: cannot read as safetensors ({type(e).__name__}: {e})") from None
    if "config" not in md:
        raise ValueError(f"{path}: no config in the safetensors metadata; not a depthart checkpoint")
    cfg = D.Config.from_dict(json.loads(md["config"]))
    model = D.DepthART(cfg)
    D.load_weights(model, D.read_state_dict(path), str(path))
    return model.to(device).eval(), cfg, json.loads(md.get("meta", "{}"))


def init_weights(model: D.DepthART, init=None, init_vae=None, init_var=None):
    """--init: a whole model of ours; --init-vae / --init-var: official .pth or any checkpoint holding them."""
    if init:
        D.load_weights(model, D.read_state_dict(init), init)
    for part, path in (("vae", init_vae), ("var", init_var)):
        if path:
            sd = D.read_state_dict(path)
            if any(k.startswith(part + ".") for k in sd):  # a whole-model checkpoint of ours
                sd = {k[len(part) + 1:]: v for k, v in sd.items() if k.startswith(part + ".")}
            D.load_weights(getattr(model, part), sd, path)


# ---------------------------------------------------------------------------------------------
# Data: the batch of step s is a pure function of (seed, s, rank)
# ---------------------------------------------------------------------------------------------
def step_indices(seed: int, step: int, n: int, batch: int, rank: int, world: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    idx = torch.randint(0, n, (batch * world,), generator=g)
    return idx[rank * batch:(rank + 1) * batch].tolist()


def collate(items: list[dict], device) -> dict:
    return {k: torch.stack([it[k] for it in items]).to(device) for k in ("image", "depth", "valid")}


def make_data(args, split):
    from data import make_dataset
    size = D.Config.preset(args.preset).image_size
    length = args.train_scenes if split == "train" else args.val_samples
    if args.data == "synthetic":
        from data import SyntheticScenes
        return SyntheticScenes(split, size=size, length=length, cache=args.cache_data or split == "val")
    return make_dataset(args.data, split=split, size=size, root=args.data_root, use_hdr=args.hdr)


# ---------------------------------------------------------------------------------------------
# Losses (one module, so DistributedDataParallel sees one forward)
# ---------------------------------------------------------------------------------------------
class StageLoss(torch.nn.Module):
    def __init__(self, model: D.DepthART, stage: str, objective: str):
        super().__init__()
        self.model, self.stage, self.objective = model, stage, objective

    def forward(self, image, depth, valid):
        if self.stage == "transformer":
            return self.model.loss(image, depth, self.objective, valid)
        # Stage 1: one VQ-VAE for both modalities; L1 reconstruction (sharper than MSE) + VQ loss.
        x = torch.cat((D.normalize_image(image), D.normalize_depth(depth, valid)))
        rec, vq_loss, idx_list = self.model.vae(x)
        rec_loss = F.l1_loss(rec, x)
        return rec_loss + vq_loss, {"loss": (rec_loss + vq_loss).detach(), "rec_l1": rec_loss.detach(),
                                    "vq": vq_loss.detach(), "idx": idx_list}


@torch.no_grad()
def restart_dead_codes(vae: D.VQVAE, hits_V: torch.Tensor, image, depth, valid) -> int:
    """Codes no token picked since the last check get re-initialised to random encoder features."""
    dead = (hits_V == 0).nonzero()[:, 0]
    if len(dead) == 0:
        return 0
    x = torch.cat((D.normalize_image(image), D.normalize_depth(depth, valid)))
    f_NC = vae.encode(x).permute(0, 2, 3, 1).reshape(-1, vae.cfg.z_channels).float()
    pick = torch.randint(0, len(f_NC), (len(dead),), device=f_NC.device)
    vae.quantize.embedding.weight[dead] = f_NC[pick] + 0.01 * torch.randn_like(f_NC[pick])
    return len(dead)


# ---------------------------------------------------------------------------------------------
# Validation: AbsRel and delta1 after median-scale alignment
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def validate(model: D.DepthART, val_set, args, device) -> dict:
    from evaluate import abs_rel, align_median, delta_acc
    model.eval()
    rel, d1, losses = [], [], []
    for i in range(0, len(val_set), args.batch_size):
        b = collate([val_set[j] for j in range(i, min(i + args.batch_size, len(val_set)))], device)
        if args.stage == "transformer":
            pred = model.predict(b["image"])
            losses.append(model.loss(b["image"], b["depth"], args.objective, b["valid"])[0].item())
        else:  # the ceiling: decode the VQ-VAE's own tokens of the true depth
            f_D = model.vae.encode(D.normalize_depth(b["depth"], b["valid"]))
            pred = D.depth_from_decoder(model.vae.decode(model.vae.quantize(f_D)[1][-1]))
        for p, g, m in zip(pred[:, 0].double().cpu().numpy(), b["depth"][:, 0].cpu().numpy(), b["valid"][:, 0].cpu().numpy()):
            p = align_median(p, g, m)
            rel.append(abs_rel(p, g, m))
            d1.append(delta_acc(p, g, m, 1))
    model.train()
    if args.stage == "vqvae":
        model.vae.train()
    else:
        model.vae.eval()
    out = {"val_abs_rel": float(np.mean(rel)), "val_delta1": float(np.mean(d1))}
    if losses:
        out["val_loss"] = float(np.mean(losses))
    return out


def plot_curves(log_path: Path, png_path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_abs_rel" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, label="train loss")
    if any("val_loss" in r for r in val):
        axes[0].plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val loss")
    axes[0].set_xlabel("step"), axes[0].legend(), axes[0].set_yscale("log")
    axes[1].plot([r["step"] for r in val], [r["val_abs_rel"] for r in val], "o-", label="val AbsRel")
    axes[1].plot([r["step"] for r in val], [r["val_delta1"] for r in val], "s-", label="val delta1")
    axes[1].set_xlabel("step"), axes[1].legend()
    fig.tight_layout()
    atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="synthetic", help="synthetic | hypersim")
    ap.add_argument("--data-root", help="HyperSim root in its official layout")
    ap.add_argument("--hdr", action="store_true", help="HyperSim: tone-map color.hdf5 instead of tonemap.jpg")
    ap.add_argument("--train-scenes", type=int, default=None, help="synthetic: size of the training set")
    ap.add_argument("--cache-data", action="store_true", help="synthetic: keep rendered training scenes in memory")
    ap.add_argument("--preset", default="tiny", choices=["tiny", "d16"])
    ap.add_argument("--stage", default="transformer", choices=["vqvae", "transformer"])
    ap.add_argument("--objective", default="depthart", choices=["depthart", "var"])
    ap.add_argument("--init", help="whole-model checkpoint of ours to start from")
    ap.add_argument("--init-vae", help="VQ-VAE weights: official vae_ch160v4096z32.pth or a checkpoint of ours")
    ap.add_argument("--init-var", help="transformer weights: official var_d16.pth or a checkpoint of ours")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=16, help="per process")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--lr-step", type=int, default=5000, help="StepLR step size, in iterations")
    ap.add_argument("--lr-gamma", type=float, default=0.8)
    ap.add_argument("--clip", type=float, default=2.0, help="gradient-norm clipping")
    ap.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"],
                    help="auto: bf16 on GPUs that support it; off on CPUs, where bf16 changes greedy tokens")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="run directory (default runs/<stage>)")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--val-every", type=int, default=500)
    ap.add_argument("--val-samples", type=int, default=64)
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--restart-every", type=int, default=200, help="stage 1: dead-code restart interval")
    ap.add_argument("--stop-after", type=int, default=None, help="stop (and save) after this many steps of this invocation")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--benchmark", action="store_true", help="measure samples/s of every stage and exit")
    args = ap.parse_args(argv)
    if args.data not in ("synthetic", "hypersim"):
        ap.error(f"unknown --data {args.data!r}: expected 'synthetic' (built in) or 'hypersim' (with --data-root)")
    if args.data == "hypersim" and not args.data_root:
        ap.error("--data hypersim needs --data-root: the directory holding metadata_images_split_scene_v1.csv and the scenes")
    args.out = Path(args.out or f"runs/{args.stage}")
    return args


def setup_distributed():
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        return rank, world, torch.device("cuda")
    return rank, world, torch.device("cpu")


def train(args) -> Path:
    rank, world, device = setup_distributed()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_set, val_set = make_data(args, "train"), (make_data(args, "val") if rank == 0 else None)
    if len(train_set) == 0:
        raise ValueError(f"the {args.data} training split is empty")

    model = D.DepthART(D.Config.preset(args.preset))
    init_weights(model, args.init, args.init_vae, args.init_var)
    model.to(device).train()
    trainable = model.vae if args.stage == "vqvae" else model.var
    frozen = model.var if args.stage == "vqvae" else model.vae
    frozen.requires_grad_(False).eval()
    opt = torch.optim.AdamW(trainable.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=args.lr_step, gamma=args.lr_gamma)
    loss_module = StageLoss(model, args.stage, args.objective)
    if world > 1:
        loss_module = torch.nn.parallel.DistributedDataParallel(loss_module)
    use_bf16 = args.amp == "bf16" or (args.amp == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext

    out, step, elapsed = args.out, 0, 0.0
    if args.resume:
        state = torch.load(out / STATE, map_location="cpu", weights_only=True)
        D.load_weights(model, D.read_state_dict(out / CHECKPOINT), str(out / CHECKPOINT))
        opt.load_state_dict(state["optimizer"]), sched.load_state_dict(state["scheduler"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        torch.set_rng_state(state["rng"])
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1))

    def save():
        if rank != 0:
            return
        meta = {"stage": args.stage, "objective": args.objective, "step": step, "data": args.data}
        save_checkpoint(out / CHECKPOINT, model, meta)
        state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step,
                 "elapsed": elapsed, "rng": torch.get_rng_state()}
        atomic_write(out / STATE, lambda tmp: torch.save(state, tmp))

    stop = {"signal": None}
    def on_signal(signum, _frame):
        stop["signal"] = signal.Signals(signum).name
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    from tqdm import tqdm
    bar = tqdm(total=args.steps, initial=step, disable=rank != 0, dynamic_ncols=True)
    log = open(out / "metrics.jsonl", "a") if rank == 0 else None
    hits_V = torch.zeros(model.cfg.vocab_size, device=device)
    start_step, t_log, n_log = step, time.perf_counter(), 0
    while step < args.steps and stop["signal"] is None:
        t0 = time.perf_counter()
        batch = collate([train_set[i] for i in step_indices(args.seed, step, len(train_set), args.batch_size, rank, world)], device)
        with autocast():
            loss, stats = loss_module(batch["image"], batch["depth"], batch["valid"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable.parameters(), args.clip)
        opt.step()
        sched.step()
        step += 1
        if args.stage == "vqvae":
            for idx in stats.pop("idx"):
                hits_V += torch.bincount(idx.flatten(), minlength=model.cfg.vocab_size)
            if step % args.restart_every == 0:
                if world > 1:
                    dist.all_reduce(hits_V)
                used = float((hits_V > 0).float().mean())
                restarted = restart_dead_codes(model.vae, hits_V, batch["image"], batch["depth"], batch["valid"])
                if world > 1:  # every rank starts from rank 0's codebook
                    dist.broadcast(model.vae.quantize.embedding.weight.data, 0)
                hits_V.zero_()
                stats.update(code_usage=torch.tensor(used), restarted=torch.tensor(float(restarted)))
        dt = time.perf_counter() - t0
        elapsed += dt
        n_log += 1
        if rank == 0 and (step % args.log_every == 0 or "code_usage" in stats):
            sps = n_log * args.batch_size * world / (time.perf_counter() - t_log)
            row = {"step": step, "lr": sched.get_last_lr()[0], "samples_per_s": sps, "elapsed": elapsed,
                   "grad_norm": float(grad_norm), **{k: float(v) for k, v in stats.items()}}
            log.write(json.dumps(row) + "\n"), log.flush()
            bar.set_postfix(loss=f"{row['loss']:.3f}", sps=f"{sps:.1f}")
            t_log, n_log = time.perf_counter(), 0
        bar.update(1)
        if rank == 0 and (step % args.val_every == 0 or step == args.steps):
            log.write(json.dumps({"step": step, **validate(model, val_set, args, device)}) + "\n"), log.flush()
            plot_curves(out / "metrics.jsonl", out / "curves.png")
        if step % args.save_every == 0:
            save()
        if args.stop_after is not None and step - start_step >= args.stop_after:
            break
    save()
    bar.close()
    if rank == 0:
        log.close()
        why = f"stopped by {stop['signal']}" if stop["signal"] else f"step {step}/{args.steps}"
        print(f"{why}; saved {out / CHECKPOINT}" + (" (continue with --resume)" if step < args.steps else ""), flush=True)
    if world > 1:  # a record that every rank ends with the same weights
        digests = [None] * world
        dist.all_gather_object(digests, weights_digest(model))
        if rank == 0:
            (out / "ranks.json").write_text(json.dumps({"world": world, "weights_sha256": digests}))
        dist.destroy_process_group()
    return out / CHECKPOINT


def weights_digest(model) -> str:
    import hashlib
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode()), h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Benchmark: samples/s of each stage on this machine
# ---------------------------------------------------------------------------------------------
def benchmark(args):
    from data import SyntheticScenes
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = D.Config.preset(args.preset)
    scenes = SyntheticScenes("train", size=cfg.image_size, length=args.batch_size * 4)
    t = time.perf_counter()
    items = [scenes[i] for i in range(len(scenes))]
    render_sps = len(items) / (time.perf_counter() - t)
    batch = collate(items[:args.batch_size], "cpu")
    print(f"preset {args.preset}, batch {args.batch_size}, {torch.get_num_threads()} threads; "
          f"scene rendering: {render_sps:.0f} scenes/s")
    print("| stage | samples/s (median of 5 steps) |\n|---|---|")
    for stage, objective in (("vqvae", None), ("transformer", "var"), ("transformer", "depthart")):
        torch.manual_seed(0)
        model = D.DepthART(cfg).train()
        trainable = model.vae if stage == "vqvae" else model.var
        (model.var if stage == "vqvae" else model.vae).requires_grad_(False)
        opt = torch.optim.AdamW(trainable.parameters(), lr=1e-4)
        loss_module, times = StageLoss(model, stage, objective), []
        for i in range(7):
            t = time.perf_counter()
            loss, _ = loss_module(batch["image"], batch["depth"], batch["valid"])
            opt.zero_grad(), loss.backward(), opt.step()
            times.append(time.perf_counter() - t)
        name = stage if objective is None else f"{stage} --objective {objective}"
        print(f"| {name} | {args.batch_size / float(np.median(times[2:])):.1f} |", flush=True)


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.benchmark:
            benchmark(args)
        else:
            train(args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
