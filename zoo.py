"""Everything around the method of depthart.py: the variants' Config and the presets, which model a Config builds,
checkpoints in and out, the official weights' key names, and the DepthART release's attention, sampler and loss variant.

  0. Config        depthart.Config plus the fields of the variants beyond the paper (`Config`: target, depth_norm,
                   image_shortcut, attention, attn_tau), and the tools' presets (`preset(name)`: d16, release, and
                   the CPU models tiny and small)
  1. Targets       what the second modality is: the paper's depth (depthart.py's only one) or, an extension,
                   camera-frame surface normals or depth normalized otherwise, each a target object (`target_of`);
                   `build(cfg)` makes the model for a Config (`TargetART` for the extensions and for the
                   release's plain attention, `PlainAttention`); the VQ-VAE's stage-1 loss of the CPU presets
                   (`vqvae_stage1`)
  2. Checkpoints   ours (safetensors, config and run settings in the metadata), VAR's official .pth files,
                   and the authors' DepthART release (github bulatko/DepthART, model.safetensors), whose key
                   names map onto ours in one place at load (`from_release_keys`); `load(path)` is the one
                   loader of whole models, `init_weights` starts training from any of them
  3. The release's variants: its attention, its sampler (the mean of 5 filtered draws per token) and its
     training loss
  4. Anytime depth: the rollout stopped after its first k scales, and the partial sum decoded

The variants use depthart.py's extension points (the paper's model uses none): Config.variant names a subclass's
extra fields (depthart.DepthART refuses them); another target than depth overrides encode_depth, decode and
decode_scales (TargetART); `sequence` may add to the depth inputs (the image shortcut of the CPU presets);
normalize_qk and a rollout's `pick` take the release's attention and sampler (PlainAttention, release_sampler).

depthart.py never imports this file; every tool does. (Not "models.py": VAR's official code is a package `models`.)
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import safetensors
import safetensors.torch
import torch
import torch.nn as nn
import torch.nn.functional as F

import depthart as D
from data import atomic_write


# ----------------------------------------------------------------------------------------------
# 0. Config: depthart.Config plus the variants' fields; the presets
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Config(D.Config):
    """depthart.Config plus the fields of this repository's variants; every default is the paper's. Checkpoints
    store every field (save_checkpoint), so a Config loads back whole from any of ours (checkpoint_config)."""
    image_shortcut: bool = False  # the CPU presets: each depth input plus a projection of its image token
    target: str = "depth"         # the second modality: "depth", the paper's, or "normals" (TARGETS)
    depth_norm: str = "q98"       # depth into the VQ-VAE: "q98" is the paper's normalize_depth (DEPTH_NORMS)
    attention: str = "l2"         # "l2": VAR's SelfAttention; "plain": the release's PlainAttention (section 3)
    attn_tau: float = 4.0         # plain attention only: softmax(q k^T / sqrt(c) / tau)

    def __post_init__(self):
        super().__post_init__()
        if self.attention not in ("l2", "plain"):
            raise ValueError(f"attention must be 'l2' or 'plain', got {self.attention!r}")

    def variant(self) -> str:
        """"" for the paper's model, else the fields that make this one a variant (depthart.DepthART refuses it)."""
        if (self.target, self.depth_norm, self.image_shortcut, self.attention) == ("depth", "q98", False, "l2"):
            return ""
        return (f"target {self.target!r}, depth_norm {self.depth_norm!r}, image_shortcut {self.image_shortcut}, "
                f"attention {self.attention!r}")

    @classmethod
    def release(cls) -> "Config":
        """The authors' release (github bulatko/DepthART): d16 with plain attention (its cos_attn False), tau 4."""
        return cls(attention="plain")


def preset(name: str) -> Config:
    """The tools' --preset: the paper's d16, the release's, or a CPU model: tiny for a 2-core CPU (64x64, six
    scales of 130 tokens, 512 codes, 4 blocks of width 128: a 1.3M transformer), small the shipped one (128x128,
    16x16 pixels per token as d16, 1024 codes, 6 blocks of 192). Both CPU models add the image shortcut."""
    cpu = dict(patch_nums=(1, 2, 3, 4, 6, 8), vae_ch=16, vae_res_blocks=1, num_classes=0, image_shortcut=True)
    presets = {"d16": Config.d16, "release": Config.release,
               "tiny": lambda: Config(image_size=64, vocab_size=512, vae_ch_mult=(1, 2, 4, 4), depth=4, width=128,
                                      heads=4, **cpu),
               "small": lambda: Config(image_size=128, vocab_size=1024, vae_ch_mult=(1, 1, 2, 4, 4), depth=6,
                                       width=192, heads=6, **cpu)}
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(presets)}")
    return presets[name]()


# ----------------------------------------------------------------------------------------------
# 1. Targets: the paper's depth, and surface normals (an extension: only the normalization in and out changes)
# ----------------------------------------------------------------------------------------------
def normalize_normals(normals_B3HW: torch.Tensor, valid_B1HW: torch.Tensor | None = None) -> torch.Tensor:
    """Unit camera-frame normals (x right, y down, z forward; facing the camera) -> the VQ-VAE's input: already
    in [-1, 1], they go in as they are; invalid pixels become (0, 0, -1), facing the camera (a neutral fill)."""
    n_B3HW = normals_B3HW.float().clamp(-1, 1)
    facing = torch.tensor([0.0, 0.0, -1.0], device=n_B3HW.device).view(1, 3, 1, 1)
    return n_B3HW if valid_B1HW is None else torch.where(valid_B1HW, n_B3HW, facing)


def normals_from_decoder(x_B3HW: torch.Tensor) -> torch.Tensor:
    """Decoder output -> unit normals (B, 3, H, W): clamp to [-1, 1], then renormalize to unit length."""
    n_B3HW = x_B3HW.clamp(-1, 1)
    return n_B3HW / n_B3HW.norm(dim=1, keepdim=True).clamp_min(1e-6)


class DepthTarget:
    """The paper's depth as a target object: into the VQ-VAE (encode) and out of it (decode), one (B, T, H, W) map
    per scale (per_scale; T target channels: depth 1, normals 3)."""
    encode = staticmethod(D.normalize_depth)     # (depth_B1HW, valid_B1HW) -> VQ-VAE input (B, 3, H, W) in [-1, 1]
    decode = staticmethod(D.depth_from_decoder)  # decoder output (B, 3, H, W) -> relative depth (B, 1, H, W)

    @staticmethod
    def per_scale(y_BJTHW: torch.Tensor) -> torch.Tensor:
        """One map per scale, depth's one channel dropped: (B, J, H, W), as the export's outputs."""
        return y_BJTHW[:, :, 0]


class NormalsTarget:
    """Surface normals as the second modality (T = 3): DepthART's tokens, loss and rollout are unchanged."""
    encode = staticmethod(normalize_normals)
    decode = staticmethod(normals_from_decoder)

    @staticmethod
    def per_scale(y_BJTHW: torch.Tensor) -> torch.Tensor:
        """Every channel kept: (B, J, 3, H, W)."""
        return y_BJTHW


def _quantiles(v_B1HW: torch.Tensor, valid_B1HW: torch.Tensor | None, qs=(0.02, 0.98)) -> torch.Tensor:
    """Per-image quantiles of v over valid pixels -> (len(qs), B, 1, 1, 1); a one-line error where none is valid."""
    B = v_B1HW.shape[0]
    v_BP = v_B1HW.reshape(B, -1).float()
    if valid_B1HW is not None:
        v_BP = v_BP.masked_fill(~valid_B1HW.reshape(B, -1), float("nan"))
    q_QB = torch.nanquantile(v_BP, torch.tensor(qs, dtype=v_BP.dtype), dim=1)
    if not torch.isfinite(q_QB).all():
        raise ValueError("a depth map has no valid pixel: nothing to normalize")
    return q_QB.view(len(qs), B, 1, 1, 1)


class DepthNormTarget:
    """Depth normalized otherwise than the paper's d / q98 (Config.depth_norm), to measure which survives real
    photographs. Every variant decodes to relative depth p in (0, 1], larger = farther:
      q98_shift  (d - q02) / (q98 - q02): affine in depth (a per-image shift, as Marigold); decoded as
                 p = 0.1 + 0.9 x, i.e. assuming the 2nd percentile sits at a tenth of the 98th
      disparity  (1/d - u02) / (u98 - u02) with u the inverse depth's quantiles: affine in inverse depth (MiDaS);
                 decoded as p = 1 / (1 + 9 x), the same tenfold-range assumption, so 1/p is affine in x
      log        1 + log(d / q98) / log(64): scale-invariant like the paper's, but a 64x range spread evenly
                 over the codes (d / q98 = 1/64 -> 0), decoded as p = 64^(x - 1)
    x in [0, 1] is mapped to [-1, 1] and clipped, as the paper's."""
    per_scale = staticmethod(DepthTarget.per_scale)

    def __init__(self, norm: str):
        self.norm = norm

    def encode(self, depth_B1HW: torch.Tensor, valid_B1HW: torch.Tensor | None = None) -> torch.Tensor:
        if not torch.isfinite(depth_B1HW).all():
            raise ValueError("depth contains NaN or inf: fill invalid pixels and pass a `valid` mask instead")
        d_B1HW = depth_B1HW.float().clamp_min(1e-6)
        if self.norm == "q98_shift":
            q02, q98 = _quantiles(d_B1HW, valid_B1HW)
            x_B1HW = (d_B1HW - q02) / (q98 - q02).clamp_min(1e-6)
        elif self.norm == "disparity":
            u02, u98 = _quantiles(1 / d_B1HW, valid_B1HW)
            x_B1HW = (1 / d_B1HW - u02) / (u98 - u02).clamp_min(1e-9)
        else:  # log
            (q98,) = _quantiles(d_B1HW, valid_B1HW, (0.98,))
            x_B1HW = 1 + torch.log(d_B1HW / q98) / math.log(64)
        return (2 * x_B1HW - 1).clamp(-1, 1).expand(-1, 3, -1, -1)

    def decode(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        x_B1HW = D.depth_from_decoder(x_B3HW)  # in [0, 1]
        if self.norm == "q98_shift":
            return 0.1 + 0.9 * x_B1HW
        if self.norm == "disparity":
            return 1 / (1 + 9 * x_B1HW)
        return torch.exp((x_B1HW - 1) * math.log(64))


def alignment(cfg: Config) -> str:
    """How a depth model's relative output meets true or known depth: "scale" (the paper's q98, log),
    "affine" (q98_shift: scale and shift in depth) or "affine_inverse" (disparity: scale and shift in 1/depth)."""
    return {"q98_shift": "affine", "disparity": "affine_inverse"}.get(cfg.depth_norm, "scale")


TARGETS = {"depth": DepthTarget, "normals": NormalsTarget}  # Config.target -> its target class
DEPTH_NORMS = ("q98", "q98_shift", "disparity", "log")     # Config.depth_norm: q98 is the paper's


def last_scale(y_per_scale: torch.Tensor) -> torch.Tensor:
    """DepthART.decode_scales's stack -> the target after its last scale: depth (B, J, H, W) -> (B, 1, H, W),
    normals (B, J, T, H, W) -> (B, T, H, W)."""
    return y_per_scale[:, -1] if y_per_scale.ndim == 5 else y_per_scale[:, -1:]


def target_of(cfg: Config):
    """The target object of a Config: DepthTarget (the paper's), NormalsTarget or a DepthNormTarget."""
    if cfg.target not in TARGETS:
        raise ValueError(f"unknown target {cfg.target!r}; expected one of {', '.join(TARGETS)}")
    if cfg.depth_norm not in DEPTH_NORMS:
        raise ValueError(f"unknown depth_norm {cfg.depth_norm!r}; expected one of {', '.join(DEPTH_NORMS)}")
    if cfg.target == "depth" and cfg.depth_norm != "q98":
        return DepthNormTarget(cfg.depth_norm)
    return TARGETS[cfg.target]()


class TargetART(D.DepthART):
    """DepthART as the paper does not configure it: on another target than the paper's depth, with the release's
    plain attention (Config.attention "plain", section 3), with the CPU presets' image shortcut
    (Config.image_shortcut), or any of these together. The method of depthart.py is unchanged: only the target's way
    into the VQ-VAE (encode_depth) and out of it (decode, decode_scales) goes through its target object
    (DepthTarget's is the paper's), the blocks' attention is swapped after they are built, and the depth inputs
    gain the shortcut (sequence)."""

    def __init__(self, cfg: Config, target):
        super().__init__(cfg)
        self.target = target
        if cfg.image_shortcut:
            add_image_shortcut(self.var)
        if cfg.attention == "plain":
            use_plain_attention(self.var)

    def sequence(self, img_BLCv: torch.Tensor, f_BNCv: torch.Tensor | None, si0: int, si1: int) -> torch.Tensor:
        x_BNC = super().sequence(img_BLCv, f_BNCv, si0, si1)
        if not self.cfg.image_shortcut:
            return x_BNC
        # each depth token (from scale 0: after the prefix) plus a projection of the image token at its position
        shortcut_BNC = self.var.image_shortcut(img_BLCv[:, self.bounds[si0]:self.bounds[si1]])
        return x_BNC + shortcut_BNC if si0 else torch.cat((x_BNC[:, :self.L], x_BNC[:, self.L:] + shortcut_BNC), 1)

    def encode_depth(self, gt_BTHW: torch.Tensor, valid_B1HW: torch.Tensor | None = None) -> torch.Tensor:
        return self.vae.encode(self.target.encode(gt_BTHW, valid_B1HW))

    def decode(self, f_hat_BCvhw: torch.Tensor) -> torch.Tensor:
        return self.target.decode(self.vae.decode(f_hat_BCvhw))

    def decode_scales(self, f_hats: list) -> torch.Tensor:
        J, B = len(f_hats), f_hats[0].shape[0]
        return self.target.per_scale(self.decode(torch.cat(f_hats, 0)).unflatten(0, (J, B)).transpose(0, 1))


def add_image_shortcut(var: D.VAR):
    """Config.image_shortcut, an extension of the CPU presets (off in d16 and the release): a Linear (Cv -> C),
    var.image_shortcut, whose projection of the image prefix's token is added to the depth input at the same scale
    and position (TargetART.sequence), because a small transformer trained from scratch otherwise ignores the
    image for thousands of steps. Initialized as depthart.init_from_scratch initializes var's other Linears."""
    shortcut = nn.Linear(var.cfg.z_channels, var.cfg.width)
    nn.init.trunc_normal_(shortcut.weight, std=math.sqrt(1 / var.cfg.width / 3))
    nn.init.zeros_(shortcut.bias)
    var.image_shortcut = shortcut


def build(cfg: D.Config) -> D.DepthART:
    """The model a Config describes (random weights): depthart.DepthART for the paper's depth with VAR's attention
    and no image shortcut, else TargetART. A plain depthart.Config, the paper's, gains the variants' defaults."""
    cfg = cfg if isinstance(cfg, Config) else Config(**dataclasses.asdict(cfg))
    target = target_of(cfg)
    return TargetART(cfg, target) if cfg.variant() else D.DepthART(cfg)


@torch.no_grad()
def vqvae_ceiling(model: D.DepthART, gt_BTHW: torch.Tensor, valid_B1HW: torch.Tensor | None = None) -> torch.Tensor:
    """The target decoded from the VQ-VAE's own tokens of the true target: the best any transformer on this
    VQ-VAE can predict (stage 1's validation figure) -> (B, T, H, W)."""
    target = target_of(model.cfg)
    return target.decode(vqvae_reconstruct(model.vae, target.encode(gt_BTHW, valid_B1HW)))


def vqvae_reconstruct(vae: D.VQVAE, x_B3HW: torch.Tensor) -> torch.Tensor:
    """Encode, quantize at every scale, decode the full sum: what the VQ-VAE alone gives back."""
    return vae.decode(vae.quantize(vae.encode(x_B3HW))[1][-1])


def vqvae_stage1(vae: D.VQVAE, x_B3HW: torch.Tensor, beta: float = 0.25):
    """Stage 1 of the CPU presets (the paper keeps VAR's VQ-VAE frozen): reconstruction, VQ loss (codebook +
    beta * commitment), tokens. The decoder sees f_hat with a straight-through gradient to the encoder (VQ-VAE's
    estimator)."""
    f_BCvhw = vae.encode(x_B3HW)
    idx_list, f_hats = vae.quantize(f_BCvhw)
    vq_loss = sum(F.mse_loss(f_hat_BCvhw, f_BCvhw.detach()) + beta * F.mse_loss(f_hat_BCvhw.detach(), f_BCvhw)
                  for f_hat_BCvhw in f_hats)
    f_st_BCvhw = f_BCvhw + (f_hats[-1] - f_BCvhw).detach()
    return vae.decode(f_st_BCvhw), vq_loss / len(f_hats), idx_list


# ----------------------------------------------------------------------------------------------
# 2. Checkpoints: our safetensors (config in the metadata), official .pth (weights only), the DepthART
#    release, clear errors
# ----------------------------------------------------------------------------------------------
# The DepthART release keeps the transformer's keys at the top level and the VQ-VAE under `vae_proxy.`; its
# quantizer is registered twice (`vae_proxy.quantize.` and the alias `vae_quant_proxy.`, one set of tensors,
# saved under either name); `normalizer.alpha/beta` (2, -1: normalize_depth's constants) are never read at
# inference. A DDP-wrapped save would prefix every key with `module.`.
RELEASE_KEY = "vae_proxy.encoder.conv_in.weight"
PICKLES = (".pth", ".pt", ".bin")


def save_checkpoint(path, model: D.DepthART, meta: dict, dtype: torch.dtype | None = None):
    """dtype=torch.float16 stores the floating-point tensors in half precision (half the file, for shipping;
    loading casts them back to the model's float32)."""
    sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
          for k, v in model.state_dict().items()}
    metadata = {"config": json.dumps(dataclasses.asdict(model.cfg)), "meta": json.dumps(meta)}
    atomic_write(path, lambda tmp: safetensors.torch.save_file(sd, str(tmp), metadata=metadata))


def checkpoint_metadata(path) -> dict:
    """The safetensors metadata of one of our checkpoints ({} for PyTorch pickles such as the official .pth)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix in PICKLES:
        return {}
    try:
        with safetensors.safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except Exception as e:  # truncated files, not safetensors at all
        raise ValueError(f"{path}: cannot read as safetensors ({type(e).__name__}: {e})") from None


def checkpoint_config(path) -> Config | None:
    """The config a checkpoint carries: ours in its metadata; the DepthART release's read off its shapes
    (plain attention; VAR's heads are 64 wide at every size); None for bare weights such as VAR's .pth."""
    md = checkpoint_metadata(path)
    if "config" in md or Path(path).suffix in PICKLES:
        return Config(**json.loads(md["config"])) if "config" in md else None
    with safetensors.safe_open(str(path), "pt") as f:
        shape = {k.removeprefix("module."): f.get_slice(k).get_shape() for k in f.keys()}
    if RELEASE_KEY not in shape:
        return None
    try:
        (width, z), blocks = shape["word_embed.weight"], [int(k.split(".")[1]) for k in shape if k[:7] == "blocks."]
        cfg = Config(attention="plain", width=width, heads=width // 64, z_channels=z, depth=1 + max(blocks),
                       vae_ch=shape[RELEASE_KEY][0], vocab_size=shape["head.weight"][0],
                       num_classes=shape["class_emb.weight"][0] - 1)
        if shape["pos_1LC"][1] != cfg.tokens_per_modality:
            raise ValueError(f"pos_1LC holds {shape['pos_1LC'][1]} positions, not {cfg.tokens_per_modality}")
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: DepthART release keys, but no model we can build ({type(e).__name__}: {e})") from None
    return cfg


def checkpoint_meta(path) -> dict:
    """What train.py recorded about a checkpoint of ours: stage, objective, step, data, seed."""
    return json.loads(checkpoint_metadata(path).get("meta", "{}"))


def from_release_keys(sd: dict) -> dict:
    """The release's key names -> ours (`vae_proxy.` -> `vae.`, the rest -> `var.`), either quantizer alias."""
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    out = {}
    for k, v in sd.items():
        if k.startswith("normalizer."):
            continue
        if k.startswith("vae_quant_proxy."):
            k = "vae_proxy.quantize." + k.removeprefix("vae_quant_proxy.")
            if k in sd:  # both aliases stored: one tensor, twice
                continue
        out["vae." + k.removeprefix("vae_proxy.") if k.startswith("vae_proxy.") else "var." + k] = v
    return out


def read_state_dict(path) -> dict:
    """Read a state dict in our key names: .safetensors (ours, or the release's mapped by from_release_keys),
    or .pth with torch.load(weights_only=True)."""
    path = str(path)
    if path.endswith(".safetensors"):
        sd = safetensors.torch.load_file(path)
        return from_release_keys(sd) if {RELEASE_KEY, "module." + RELEASE_KEY} & set(sd) else sd
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickles with code in them, truncated files, non-checkpoints
        why = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"{path}: not a weights-only PyTorch checkpoint ({type(e).__name__}: {why})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a state dict (a dict of tensors), got {type(sd).__name__}")
    return sd


def load_weights(module: nn.Module, state_dict: dict, what: str = "checkpoint", ignore_unused: bool = False):
    """load_state_dict(strict=True), but naming every missing and unexpected key and shape mismatch.
    ignore_unused: unexpected keys are named in one line on stderr and skipped (the release's loader skips them)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    extra = sorted(set(state_dict) - set(own))
    if ignore_unused and extra:
        print(f"note: {what}: {len(extra)} keys not used: {', '.join(extra)}", file=sys.stderr)
        state_dict, extra = {k: v for k, v in state_dict.items() if k in own}, []
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    if missing or extra or shapes:
        def show(keys):
            return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")
        problems = [f"missing keys: {show(missing)}" if missing else "",
                    f"unexpected keys: {show(extra)}" if extra else "",
                    f"shape mismatches: {show(shapes)}" if shapes else ""]
        raise ValueError(f"{what} does not match the model; " + "; ".join(p for p in problems if p))
    module.load_state_dict(state_dict, strict=True)


def load_file(model: D.DepthART, path):
    """A whole-model checkpoint into model: ours strictly; the release's with unused keys named and skipped."""
    load_weights(model, read_state_dict(path), str(path), ignore_unused="config" not in checkpoint_metadata(path))


def load(path, device="cpu") -> D.DepthART:
    """A one-file checkpoint -> the model, in eval mode: ours (config in its metadata) or the authors'
    DepthART release (model.safetensors; recognised by its keys, config read off its shapes)."""
    cfg = checkpoint_config(path)
    if cfg is None:
        raise ValueError(f"{path}: neither a depthart checkpoint (no config in its metadata) nor the DepthART "
                         f"release (no {RELEASE_KEY}); VAR's .pth pair loads with --init-vae / --init-var")
    model = build(cfg)
    load_file(model, path)
    return model.to(device).eval()


def init_weights(model: D.DepthART, init=None, init_vae=None, init_var=None):
    """Start a model from checkpoints: `init` a whole model (ours, or the DepthART release's model.safetensors);
    `init_vae` / `init_var` the official vae_ch160v4096z32.pth / var_d16.pth (VAR's releases), or the `vae.` /
    `var.` half of one of ours."""
    if init:
        load_file(model, init)
    for part, path in (("vae", init_vae), ("var", init_var)):
        if path:
            sd = read_state_dict(path)
            if any(k.startswith(part + ".") for k in sd):
                sd = {k[len(part) + 1:]: v for k, v in sd.items() if k.startswith(part + ".")}
            load_weights(getattr(model, part), sd, str(path))


# ----------------------------------------------------------------------------------------------
# 3. The DepthART release's attention, sampler and training loss
# ----------------------------------------------------------------------------------------------
class PlainAttention(D.SelfAttention):
    """The release's attention (its cos_attn False): softmax(q k^T / sqrt(c) / tau) on q and k as they come, no
    learned temperature (its files hold no scale_mul_1H11). Everything else is depthart.SelfAttention's."""

    def __init__(self, width: int, heads: int, tau: float = 4.0):
        super().__init__(width, heads)
        del self.scale_mul_1H11
        self.scale = 1 / math.sqrt(width // heads) / tau

    def normalize_qk(self, q_BANc, k_BANc):
        return q_BANc, k_BANc


def use_plain_attention(var: D.VAR):
    """Config.attention "plain": every block's attention becomes a PlainAttention holding the very tensors it was
    built with (as init_from_scratch left them; a checkpoint overwrites them), and attn_bias_for_masking, which the
    release's files lack, is no longer saved."""
    for block in var.blocks:
        with torch.device("meta"):  # no weights of its own: no random draws, so later draws are unchanged
            plain = PlainAttention(var.cfg.width, var.cfg.heads, var.cfg.attn_tau)
        tensors = block.attn.state_dict(keep_vars=True)
        del tensors["scale_mul_1H11"]
        plain.load_state_dict(tensors, assign=True)
        block.attn = plain
    var.register_buffer("attn_bias_for_masking", var.attn_bias_for_masking, persistent=False)


SAMPLINGS = ("greedy", "release", "temperature")


def release_sample(logits_BlV, generator=None, top_k: int = 900, top_p: float = 0.9, n: int = 5) -> torch.Tensor:
    """The release's draws (its autoregressive_infer_cfg) -> n token indices per position (B, l, n): keep the
    top_k logits, then drop the least likely of those while their probability sums to at most 1 - top_p (the
    most likely always stays); draw n times with replacement."""
    B, l, V = logits_BlV.shape
    kth_Bl1 = logits_BlV.topk(min(top_k, V), -1, largest=True, sorted=False)[0].amin(-1, keepdim=True)
    logits_BlV = logits_BlV.masked_fill(logits_BlV < kth_Bl1, -torch.inf)
    sorted_BlV, order_BlV = logits_BlV.sort(-1)  # ascending
    drop_BlV = sorted_BlV.softmax(-1).cumsum(-1) <= 1 - top_p
    drop_BlV[..., -1] = False
    logits_BlV = logits_BlV.masked_fill(drop_BlV.scatter(-1, order_BlV, drop_BlV), -torch.inf)
    probs_PV = logits_BlV.softmax(-1).view(-1, V)
    return torch.multinomial(probs_PV, n, replacement=True, generator=generator).view(B, l, n)


def release_sampler(generator: torch.Generator | None = None):
    """The release's choice at each scale, for DepthART.rollout / predict: n draws per token, whose code
    vectors' *mean* (a continuous vector, not a code) builds f_hat -> pick(logits_BlV, code_VCv) returning
    (draws idx_Bln, code_BlCv). generator None: torch's global one, unseeded, as the release."""
    def pick(logits_BlV, code_VCv):
        draws_Bln = release_sample(logits_BlV, generator)
        return draws_Bln, code_VCv[draws_Bln].mean(2)
    return pick


def temperature_sampler(generator: torch.Generator | None = None, temperature: float = 1.0, top_k: int = 20):
    """One token per position from softmax(logits / temperature) over the top_k logits (ours, for ensembles:
    unlike the release's mean of 5 draws, each draw is a real code) -> pick returning (idx_Bl, code_BlCv)."""
    if not temperature > 0 or top_k < 1:
        raise ValueError(f"temperature {temperature} must be > 0 and top_k {top_k} at least 1")

    def pick(logits_BlV, code_VCv):
        B, l, V = logits_BlV.shape
        top_Blk, where_Blk = (logits_BlV / temperature).topk(min(top_k, V), -1)
        draw_P1 = torch.multinomial(top_Blk.softmax(-1).view(B * l, -1), 1, generator=generator)
        idx_Bl = where_Blk.view(B * l, -1).gather(1, draw_P1).view(B, l)
        return idx_Bl, code_VCv[idx_Bl]
    return pick


def sampler(sampling: str, generator: torch.Generator | None = None):
    """A rollout's pick by name: "greedy" (deterministic; what export unrolls), "release" (the release's mean
    of 5 filtered draws) or "temperature" (ours: one draw from the top 20 logits at temperature 1)."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"unknown sampling {sampling!r}: expected one of {', '.join(SAMPLINGS)}")
    if sampling == "temperature":
        return temperature_sampler(generator)
    return D.greedy if sampling == "greedy" else release_sampler(generator)


def release_loss(model: D.DepthART, image_B3HW, gt_BTHW, objective: str = "depthart", valid_B1HW=None):
    """The release's training loss (`rec_loss: True`, VARLoss(L=424) at d16): cross-entropy on scales 0..K-2
    only; at the last scale a soft Gumbel-softmax (tau 1) mixture of all codes completes the walk's f_hat,
    pulled toward f_D by 10 x MSE (as its code describes; as published, that term never reaches its
    optimizer) -> (loss, stats); token accuracy counts the scales the cross-entropy scores."""
    img_BLCv, targets, f_hats = model.walk_targets(image_B3HW, gt_BTHW, objective, valid_B1HW)
    with torch.no_grad():  # the latent the walk's targets came from (walk_targets does not return it)
        f_D = model.encode_depth(gt_BTHW, valid_B1HW)
    logits_BLV = model.parallel_logits(img_BLCv, model.vae.quantize.next_inputs(f_hats))  # as logits_and_targets
    target_BL = torch.cat(targets, 1)
    n, quant = model.bounds[-2], model.vae.quantize
    ce = F.cross_entropy(logits_BLV[:, :n].reshape(-1, logits_BLV.shape[-1]), target_BL[:, :n].reshape(-1))
    soft_BlCv = F.gumbel_softmax(logits_BLV[:, n:], tau=1.0, hard=False) @ quant.embedding.weight
    K = len(model.cfg.patch_nums)  # f_hats[K - 2]: the walk's sum before the last scale
    f_mse = F.mse_loss(f_hats[K - 2] + quant.eta(soft_BlCv, K - 1), f_D)
    loss = ce + 10 * f_mse
    token_acc = (logits_BLV[:, :n].detach().argmax(-1) == target_BL[:, :n]).float().mean()
    return loss, {"loss": loss.detach(), "token_acc": token_acc, "f_mse": f_mse.detach()}


# ----------------------------------------------------------------------------------------------
# 4. Anytime depth (--max-scale k): every partial sum decodes to a depth map (the paper's Fig. 7)
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def anytime_predict(model: D.DepthART, image_B3HW: torch.Tensor, max_scale: int | None = None,
                    all_scales: bool = False, pick=D.greedy) -> torch.Tensor:
    """model.predict from the partial sum after the first max_scale scales k (None: all K), decoded; all_scales:
    after each of the k scales, (B, k, H, W) for depth."""
    f_hats = model.rollout(model.encode_image(image_B3HW), pick, max_scale)[1]
    return model.decode_scales(f_hats) if all_scales else model.decode(f_hats[-1])
