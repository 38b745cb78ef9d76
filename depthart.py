"""DepthART in one file: monocular depth as autoregressive refinement on a VAR transformer.

Why this model trains the way it does. DepthART (Gabdullin et al., arXiv 2409.15010) predicts a depth
map the way VAR (Tian et al., arXiv 2404.02905) generates an image: as token maps from coarse (1x1) to
fine (16x16), each a *residual* on the sum of the coarser ones, here after a prefix of the RGB image's
tokens. VAR trains by teacher forcing: at scale k the transformer is shown the *true* coarser maps. At
inference it is shown its *own*, whose mistakes it never saw in training, so errors compound from scale
to scale: exposure bias. DepthART trains on what inference sees. The model rolls out its own greedy maps
z_1..z_{k-1}, and the target at scale k is recomputed from the true depth as the code that best repairs
what the model has built so far (a "dynamic target"); a rollout that matches the truth gets VAR's
targets back. Repairing only makes sense once the rollout is roughly right: from a random model the
targets chase garbage. So DepthART starts from a teacher-forced model: the paper fine-tunes VAR-d16,
and train.py runs `--objective var` first, then `--objective depthart --init` from it.

Read top to bottom:

  1. Config                      presets `d16` (the paper), `release` (the authors' weights), `tiny` (a CPU)
  2. Fixed resampling matrices   bicubic / area resizes as constant matrices, M @ x @ M.T
  3. Multi-scale residual VQ-VAE paper Sec. 3.1 and Fig. 2 (left); VAR's Algorithm 1 and 2
  4. VAR transformer             paper Sec. 3.2: AdaLN blocks, block-causal attention, KV cache
  5. DepthART                    paper Fig. 2 (right): image prefix; teacher_forcing_targets (Eq. 3) and
                                 dynamic_targets (Eq. 4-5); one rollout (greedy; or the release's sampler)
  6. Checkpoints                 ours (safetensors), VAR's official .pth files, the DepthART release

The objectives in one line each (f_D: continuous VQ-VAE feature of the depth map, Q: nearest code,
S_k: area resize to scale k, eta_i: Phi_i after bicubic upsampling of token map i):
  var:       inputs and targets from the VQ-VAE's own decomposition x_k = Q(S_k(f_D - sum_{i<k} eta_i(x_i)))
  depthart:  inputs from the model's greedy rollout z_k; targets t_k = Q(S_k(f_D - sum_{i<k} eta_i(z_i)))
When the model walks exactly the VQ-VAE's path (z = x), the two coincide: they differ only in who walks.

d16, one 256x256 image, shape by shape:
  image (B,3,256,256) in [-1,1] -> VQ-VAE encoder -> f (B,32,16,16) -> residual quantizer: 10 token maps,
      1x1, 2x2, ... 16x16 = 680 tokens; the prefix's map k is the image's sum after k scales, resized to k.
  transformer input (B, 680 + 680, 1024): [image prefix | depth start token, depth inputs of scales 2..10];
      block-causal: depth scale k sees the whole prefix and the depth scales up to k.
  logits (B, 680, 4096) for the depth tokens; scale k's argmax idx_Bl (B, k*k) -> eta_k -> f_hat += it.
  decoder: f_hat (B,32,16,16) -> (B,3,256,256) -> relative depth (B,1,256,256) in [0, 1].

Shape legend (names carry shapes, as in minVAR):
  B batch               C transformer width (1024)   Cv VQ-VAE latent channels (32)   V vocabulary (4096)
  H, W image size       h, w one token map's size    K scales (10)   L tokens of one modality (680)
  l tokens of one scale N tokens of several scales    A attention heads (16)   c channels per head (C/A)
  P pixels or positions flattened (H*W, or B*h*w)   i a resize's input side   (VAR's official names use S for K)
e.g. idx_Bl token indices of one scale, f_BCvhw a latent map, f_BNCv latents of several scales as a
sequence, x_BLC transformer activations, logits_BlV one scale's logits.

Constructs marked "official key" exist only so that VAR's released checkpoints load with strict key
matching (`VQVAE(Config.d16())` and `VAR(Config.d16())` have exactly their keys, shapes and dtypes), or
so that the authors' DepthART release (github bulatko/DepthART, `model.safetensors`) maps onto ours.

Extensions beyond the paper are config switches, all off in `d16`:
  image_shortcut  adds, at every depth position, a linear projection of the image token at the same
                  scale and position. A from-scratch tiny model otherwise learns the first token and then
                  predicts each scale from coarser depth alone, ignoring the image for thousands of steps;
                  the shortcut made the image matter ~15x sooner in a CPU prototype.
  target          "normals" predicts camera-frame surface normals instead of depth: only the normalization
                  in and out changes (normalize_normals, normals_from_decoder); "depth" below then reads "normals".

This module imports torch and safetensors and nothing of ours: every other file imports it.
"""
from __future__ import annotations

import math
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------
# 1. Config
# ----------------------------------------------------------------------------------------------
TARGETS = ("depth", "normals")  # what the second modality can be (normalizations in section 5)


@dataclass
class Config:
    image_size: int = 256
    patch_nums: tuple = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # token map sizes, coarse to fine
    vocab_size: int = 4096
    z_channels: int = 32           # Cv: latent channels of the VQ-VAE
    vae_ch: int = 160
    vae_ch_mult: tuple = (1, 1, 2, 2, 4)  # one level per entry; len-1 stride-2 downsamplings
    vae_res_blocks: int = 2        # per encoder level; the decoder has one more
    phi_count: int = 4             # four partially shared Phi convolutions
    phi_ratio: float = 0.5         # Phi(h) = (1 - r) h + r conv3x3(h)
    depth: int = 16                # transformer blocks
    width: int = 1024              # C
    heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000        # class_emb has num_classes + 1 rows; the last is the null class we use
    norm_eps: float = 1e-6
    image_shortcut: bool = False   # extension (see module docstring); off for the paper
    target: str = "depth"          # what the model predicts: "depth" (the paper) or "normals" (extension)
    attention: str = "l2"          # "l2": VAR's L2-normalized q, k, learned temperature; "plain": the release's
    attn_tau: float = 4.0          # plain attention only: softmax(q k^T / sqrt(head_dim) / tau)

    def __post_init__(self):
        self.patch_nums = tuple(self.patch_nums)
        self.vae_ch_mult = tuple(self.vae_ch_mult)
        down = 2 ** (len(self.vae_ch_mult) - 1)
        if self.image_size != self.patch_nums[-1] * down:
            raise ValueError(f"image_size {self.image_size} must equal last patch_num {self.patch_nums[-1]} "
                             f"x VQ-VAE downsampling {down}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}; expected one of {', '.join(TARGETS)}")
        if self.attention not in ("l2", "plain"):
            raise ValueError(f"attention must be 'l2' or 'plain', got {self.attention!r}")

    @property
    def tokens_per_modality(self) -> int:  # L
        return sum(pn * pn for pn in self.patch_nums)

    @classmethod
    def d16(cls) -> "Config":
        """The paper: VAR-d16 (310M) on vae_ch160v4096z32, 256x256 input, 680 tokens per modality."""
        return cls()

    @classmethod
    def release(cls) -> "Config":
        """The authors' released DepthART (github bulatko/DepthART, model.safetensors): d16 fine-tuned from
        var_d16.pth with plain attention (their config: cos_attn False, tau 4), the only change from d16."""
        return cls(attention="plain")

    @classmethod
    def tiny(cls) -> "Config":
        """Same structure, sized to train on a 2-core CPU in about two hours: 64x64 input, an 8x8 latent, six
        scales (130 tokens per modality, so a training sequence is 260 tokens; d16: 1360), 512 codes, a 4-block
        width-128 transformer (1.3M weights; VQ-VAE 1.1M) with `image_shortcut` (see the module docstring)."""
        return cls(image_size=64, patch_nums=(1, 2, 3, 4, 6, 8), vocab_size=512, z_channels=32,
                   vae_ch=16, vae_ch_mult=(1, 2, 4, 4), vae_res_blocks=1, depth=4, width=128, heads=4,
                   num_classes=0, image_shortcut=True)

    @classmethod
    def small(cls) -> "Config":
        """For real photographs on a CPU: 128x128 input, four downsamplings to an 8x8 latent (16 pixels per
        token, as d16), 1024 codes, a 6-block width-192 transformer (4.3M weights; VQ-VAE 1.2M)."""
        return cls(image_size=128, patch_nums=(1, 2, 3, 4, 6, 8), vocab_size=1024, z_channels=32,
                   vae_ch=16, vae_ch_mult=(1, 1, 2, 4, 4), vae_res_blocks=1, depth=6, width=192, heads=6,
                   num_classes=0, image_shortcut=True)

    @classmethod
    def preset(cls, name: str) -> "Config":
        presets = {"d16": cls.d16, "release": cls.release, "tiny": cls.tiny, "small": cls.small}
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(presets)}")
        return presets[name]()

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return cls(**d)


# ----------------------------------------------------------------------------------------------
# 2. Fixed resampling matrices
# ----------------------------------------------------------------------------------------------
def resize_matrix(src: int, dst: int, mode: str) -> torch.Tensor:
    """The (dst, src) matrix M with F.interpolate(x, (dst, dst), mode) == M @ x @ M.T.

    PyTorch's bicubic (a = -0.75, align_corners False, clamped borders) and area (adaptive average)
    resizes are separable and linear, so resizing the rows of an identity matrix reads M off directly.
    As a constant MatMul the resize exports to ONNX with any exporter and never needs a cubic Resize.
    """
    eye_11ii = torch.eye(src, dtype=torch.float64)[None, None]
    kwargs = {"align_corners": False} if mode == "bicubic" else {}
    return F.interpolate(eye_11ii, size=(dst, src), mode=mode, **kwargs)[0, 0].float()


class Resampler(nn.Module):
    """Every resize between the scales of a schedule, as non-persistent constant buffers."""

    def __init__(self, patch_nums):
        super().__init__()
        last = patch_nums[-1]
        for pn in patch_nums[:-1]:
            self.register_buffer(f"area_{last}_{pn}", resize_matrix(last, pn, "area"), persistent=False)
            self.register_buffer(f"bicubic_{pn}_{last}", resize_matrix(pn, last, "bicubic"), persistent=False)
            self.register_buffer(f"bicubic_{last}_{pn}", resize_matrix(last, pn, "bicubic"), persistent=False)

    def forward(self, f_BChw: torch.Tensor, size: int, mode: str) -> torch.Tensor:
        src = f_BChw.shape[-1]
        if src == size:
            return f_BChw
        M = getattr(self, f"{mode}_{src}_{size}")
        return M @ f_BChw @ M.T


# ----------------------------------------------------------------------------------------------
# 3. Multi-scale residual VQ-VAE (VAR's, with the official module names so checkpoints load)
# ----------------------------------------------------------------------------------------------
def _norm(ch: int) -> nn.GroupNorm:
    # VAR's 32 groups; the tiny preset's narrow layers (16 channels) keep at least 2 channels a group.
    return nn.GroupNorm(min(32, ch // 2), ch, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels of the lowest-resolution feature map."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = _norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x_BChw):
        B, C, h, w = x_BChw.shape
        q, k, v = self.qkv(self.norm(x_BChw)).reshape(B, 3, C, h * w).transpose(2, 3).unbind(1)  # B,hw,C
        o_BPC = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x_BChw + self.proj_out(o_BPC.transpose(1, 2).reshape(B, C, h, w))


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad, as the official VQ-VAE


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(blocks, attns, resample=None, resample_name="downsample") -> nn.Module:
    """A bare module holding one resolution level, only so the keys read `down.{i}.block.{j}...` as VAR's."""
    level = nn.Module()
    level.block, level.attn = nn.ModuleList(blocks), nn.ModuleList(attns)
    if resample is not None:
        setattr(level, resample_name, resample)
    return level


def _run_level(level: nn.Module, h: torch.Tensor, resample_name: str) -> torch.Tensor:
    """Res blocks (each followed by its attention block, at the lowest level), then the resample."""
    for j, block in enumerate(level.block):
        h = block(h)
        if len(level.attn):
            h = level.attn[j](h)
    return getattr(level, resample_name)(h) if hasattr(level, resample_name) else h


def _mid(ch: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1, mid.attn_1, mid.block_2 = ResnetBlock(ch, ch), AttnBlock(ch), ResnetBlock(ch, ch)
    return mid


class Encoder(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        ch, mult, n = cfg.vae_ch, cfg.vae_ch_mult, cfg.vae_res_blocks
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.down, cin = nn.ModuleList(), ch
        for i, m in enumerate(mult):
            last = i == len(mult) - 1
            blocks = [ResnetBlock(cin if j == 0 else ch * m, ch * m) for j in range(n)]
            self.down.append(_level(blocks, [AttnBlock(ch * m) for _ in range(n)] if last else [],
                                    None if last else Downsample(ch * m)))
            cin = ch * m
        self.mid = _mid(cin)
        self.norm_out, self.conv_out = _norm(cin), nn.Conv2d(cin, cfg.z_channels, 3, padding=1)

    def forward(self, x_B3HW):
        h = self.conv_in(x_B3HW)
        for level in self.down:
            h = _run_level(level, h, "downsample")
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        ch, mult, n = cfg.vae_ch, cfg.vae_ch_mult, cfg.vae_res_blocks + 1
        cin = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = _mid(cin)
        levels = []
        for i in reversed(range(len(mult))):  # built coarse to fine, stored fine to coarse (official order)
            blocks = [ResnetBlock(cin if j == 0 else ch * mult[i], ch * mult[i]) for j in range(n)]
            attns = [AttnBlock(ch * mult[i]) for _ in range(n)] if i == len(mult) - 1 else []
            levels.insert(0, _level(blocks, attns, Upsample(ch * mult[i]) if i else None, "upsample"))
            cin = ch * mult[i]
        self.up = nn.ModuleList(levels)
        self.norm_out, self.conv_out = _norm(cin), nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, f_BCvhw):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(f_BCvhw))))
        for level in reversed(self.up):
            h = _run_level(level, h, "upsample")
        return self.conv_out(F.silu(self.norm_out(h)))


class Phi(nn.Conv2d):
    """eta's learnable part: Phi(h) = (1 - r) h + r conv3x3(h), removing upsampling artefacts."""

    def __init__(self, ch: int, ratio: float):
        super().__init__(ch, ch, 3, padding=1)
        self.ratio = ratio

    def forward(self, h):
        return (1 - self.ratio) * h + self.ratio * super().forward(h)


def phi_schedule(num_scales: int, phi_count: int) -> list[int]:
    """Which Phi each scale uses: the tick nearest to the scale's position si/(K-1) in [0, 1].

    VAR places 4 ticks at linspace(1/12, 11/12); this float lookup ties at some scales, and what
    float64 argmin resolves them to is what the checkpoints were trained with: [0,0,1,1,1,2,2,3,3,3].
    """
    edge = 1 / 3 / phi_count if phi_count == 4 else 1 / 2 / phi_count
    ticks = torch.linspace(edge, 1 - edge, phi_count, dtype=torch.float64, device="cpu")
    return [int(torch.argmin((ticks - si / (num_scales - 1)).abs())) for si in range(num_scales)]


class PhiList(nn.Module):
    """Official key layout only: the Phi convolutions live at quantize.quant_resi.qresi_ls.{i}."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.qresi_ls = nn.ModuleList(Phi(cfg.z_channels, cfg.phi_ratio) for _ in range(cfg.phi_count))


class ResidualQuantizer(nn.Module):
    """VAR's multi-scale residual quantizer: one short loop over scales (VAR Algorithm 1)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.patch_nums = cfg.patch_nums
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.z_channels)
        self.quant_resi = PhiList(cfg)
        self.phi_of_scale = phi_schedule(len(cfg.patch_nums), cfg.phi_count)
        self.resample = Resampler(cfg.patch_nums)
        # Official key only: VAR's per-scale code-hit statistics (K, V). Nothing here reads it; stage 1
        # counts hits itself (train.py) to restart dead codes.
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(cfg.patch_nums), cfg.vocab_size))

    def nearest(self, f_BCvhw: torch.Tensor) -> torch.Tensor:
        """Q: index of the nearest code (L2) at every position -> idx_Bl."""
        B, Cv, h, w = f_BCvhw.shape
        f_PCv = f_BCvhw.permute(0, 2, 3, 1).reshape(-1, Cv)
        e_VCv = self.embedding.weight
        dist_PV = (f_PCv.square().sum(1, keepdim=True) + e_VCv.square().sum(1)) - 2 * f_PCv @ e_VCv.T
        return dist_PV.argmin(1).view(B, h * w)

    def eta(self, idx_Bl: torch.Tensor, si: int) -> torch.Tensor:
        """eta_si: code vectors of scale si, bicubic-upsampled to the full latent, then Phi -> f_BCvhw.
        idx_Bl are token indices, or already code vectors h_BlCv (the release's sampler averages codes)."""
        B, l = idx_Bl.shape[:2]
        pn, last = self.patch_nums[si], self.patch_nums[-1]
        h_BlCv = idx_Bl if idx_Bl.is_floating_point() else self.embedding(idx_Bl)
        h_BCvhw = h_BlCv.transpose(1, 2).reshape(B, -1, pn, pn)
        return self.quant_resi.qresi_ls[self.phi_of_scale[si]](self.resample(h_BCvhw, last, "bicubic"))

    def forward(self, f_BCvhw: torch.Tensor):
        """Decompose f into per-scale tokens: x_k = Q(S_k(f - sum_{i<k} eta_i(x_i))).

        Returns (idx_Bl per scale, cumulative f_hat per scale). Scale k quantizes what the coarser scales
        left unexplained, so the sum of all K etas approximates f ever more closely.
        """
        with torch.autocast(f_BCvhw.device.type, enabled=False):  # in the codebook's precision, not autocast's
            f_BCvhw = f_BCvhw.to(self.embedding.weight.dtype)
            rest, f_hat = f_BCvhw.detach(), torch.zeros_like(f_BCvhw)
            idx_list, f_hats = [], []
            for si, pn in enumerate(self.patch_nums):
                idx_Bl = self.nearest(self.resample(rest, pn, "area"))
                h_BCvhw = self.eta(idx_Bl, si)
                f_hat, rest = f_hat + h_BCvhw, rest - h_BCvhw.detach()
                idx_list.append(idx_Bl)
                f_hats.append(f_hat)
        return idx_list, f_hats

    def next_inputs(self, f_hats: list) -> list:
        """Transformer inputs of scales 2..K: the cumulative f_hat area-downsampled to the next size."""
        return [self.resample(f_hat, pn, "area") for f_hat, pn in zip(f_hats, self.patch_nums[1:])]


class VQVAE(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.quantize = ResidualQuantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, padding=1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, padding=1)

    def encode(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        """Image or 3-channel depth in [-1, 1] -> continuous latent f_BCvhw (never quantized)."""
        return self.quant_conv(self.encoder(x_B3HW))

    def decompose(self, f_BCvhw: torch.Tensor) -> list:
        """Continuous latent -> token indices per scale, [idx_Bl for each scale]."""
        return self.quantize(f_BCvhw)[0]

    def rebuild(self, idx_list: list) -> torch.Tensor:
        """Token indices of the first len(idx_list) scales -> their partial sum f_hat."""
        return sum(self.quantize.eta(idx_Bl, si) for si, idx_Bl in enumerate(idx_list))

    def decode(self, f_hat_BCvhw: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(f_hat_BCvhw))

    def reconstruct(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        """Encode, quantize at every scale, decode the full sum: what the VQ-VAE alone gives back."""
        return self.decode(self.quantize(self.encode(x_B3HW))[1][-1])

    def forward(self, x_B3HW: torch.Tensor, beta: float = 0.25):
        """Stage-1 training: reconstruction, VQ loss (codebook + beta * commitment), tokens.

        The decoder sees f_hat with a straight-through gradient to the encoder (VQ-VAE's estimator).
        """
        f = self.encode(x_B3HW)
        idx_list, f_hats = self.quantize(f)
        vq_loss = sum(F.mse_loss(fh, f.detach()) + beta * F.mse_loss(fh.detach(), f) for fh in f_hats)
        f_st = f + (f_hats[-1] - f).detach()
        return self.decode(f_st), vq_loss / len(f_hats), idx_list


# ----------------------------------------------------------------------------------------------
# 4. VAR transformer (VAR's module names, so var_d16.pth loads)
# ----------------------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    """Multi-head attention. l2 (VAR's): L2-normalized q, k, so q.k lies in [-1, 1], and a learnable per-head
    temperature exp(scale_mul) (at most 100); plain (the DepthART release's): softmax(q k^T / sqrt(c) / tau).
    An optional KV cache (a dict) lets inference feed one scale at a time."""

    def __init__(self, width: int, heads: int, attention: str = "l2", tau: float = 4.0):
        super().__init__()
        self.heads, self.l2 = heads, attention == "l2"
        self.scale = 1.0 if self.l2 else 1 / math.sqrt(width // heads) / tau
        if self.l2:
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, heads, 1, 1), 4.0).log())
        self.mat_qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(width)), nn.Parameter(torch.zeros(width))
        # VAR trains no k bias (the q and v biases suffice); the official checkpoint stores this zero
        # buffer, so it is kept for the key names. (With normalized k a bias would not cancel in softmax.)
        self.register_buffer("zero_k_bias", torch.zeros(width))
        self.proj = nn.Linear(width, width)

    def forward(self, x_BLC, attn_bias, cache: dict | None = None):
        B, L, C = x_BLC.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x_BLC, self.mat_qkv.weight, bias).view(B, L, 3, self.heads, C // self.heads)
        q_BALc, k_BALc, v_BALc = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.l2:
            q_BALc = F.normalize(q_BALc, dim=-1) * self.scale_mul_1H11.clamp(max=math.log(100)).exp()
            k_BALc = F.normalize(k_BALc, dim=-1)
        if cache is not None:  # append this step's keys and values to everything seen before
            if "k" in cache:
                k_BALc, v_BALc = torch.cat((cache["k"], k_BALc), 2), torch.cat((cache["v"], v_BALc), 2)
            cache["k"], cache["v"] = k_BALc, v_BALc
        mask = None if attn_bias is None else attn_bias.to(q_BALc.dtype)
        o_BALc = F.scaled_dot_product_attention(q_BALc, k_BALc, v_BALc, attn_mask=mask, scale=self.scale)
        return self.proj(o_BALc.transpose(1, 2).reshape(B, L, C))


class FFN(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class AdaLNBlock(nn.Module):
    """x += attn(LN(x)(1+scale1)+shift1) gamma1; x += ffn(LN(x)(1+scale2)+shift2) gamma2."""

    def __init__(self, cfg: Config):
        super().__init__()
        C = cfg.width
        self.attn = SelfAttention(C, cfg.heads, cfg.attention, cfg.attn_tau)
        self.ffn = FFN(C, round(C * cfg.mlp_ratio))
        self.ln = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

    def forward(self, x_BLC, cond_BC, attn_bias, cache=None):
        # The modulation depends only on the constant condition: a cached rollout computes it once, not per
        # scale (ada_lin is a third of a block's weights, which every small scale would otherwise re-read).
        ada = cache.get("ada") if cache is not None else None
        if ada is None:
            ada = self.ada_lin(cond_BC).view(-1, 1, 6, x_BLC.shape[-1])
            if cache is not None:
                cache["ada"] = ada
        gamma1, gamma2, scale1, scale2, shift1, shift2 = ada.unbind(2)
        x_BLC = x_BLC + self.attn(self.ln(x_BLC) * (1 + scale1) + shift1, attn_bias, cache) * gamma1
        return x_BLC + self.ffn(self.ln(x_BLC) * (1 + scale2) + shift2) * gamma2


class AdaLNHead(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.ln = nn.LayerNorm(cfg.width, eps=cfg.norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cfg.width, 2 * cfg.width))

    def forward(self, x_BLC, cond_BC):
        scale, shift = self.ada_lin(cond_BC).view(-1, 1, 2, x_BLC.shape[-1]).unbind(2)
        return self.ln(x_BLC) * (1 + scale) + shift


def levels_of(patch_nums) -> torch.Tensor:
    """The scale index of each token of one modality, e.g. [0, 1,1,1,1, 2,...] -> (L,)."""
    return torch.cat([torch.full((pn * pn,), si) for si, pn in enumerate(patch_nums)])


def block_causal_bias(levels_L: torch.Tensor) -> torch.Tensor:
    """Additive mask: a token sees every token of its own or a coarser level -> (1, 1, L, L)."""
    return torch.where(levels_L[None, :] <= levels_L[:, None], 0.0, -torch.inf)[None, None]


class VAR(nn.Module):
    """The next-scale transformer: embeddings, AdaLN blocks and the head. It knows nothing of images
    or depth: DepthART below decides what the tokens are. `forward` is the only code path; training,
    the rollout and inference all run through it.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg, C, L = cfg, cfg.width, cfg.tokens_per_modality
        self.word_embed = nn.Linear(cfg.z_channels, C)
        # Official key: VAR's 1000 ImageNet classes + the null class; DepthART only uses the null row.
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)
        self.pos_start = nn.Parameter(torch.empty(1, 1, C))
        self.pos_1LC = nn.Parameter(torch.empty(1, L, C))
        self.lvl_embed = nn.Embedding(len(cfg.patch_nums), C)
        self.blocks = nn.ModuleList(AdaLNBlock(cfg) for _ in range(cfg.depth))
        self.head_nm = AdaLNHead(cfg)
        self.head = nn.Linear(C, cfg.vocab_size)
        if cfg.image_shortcut:  # extension: image token -> same-position depth token
            self.image_shortcut = nn.Linear(cfg.z_channels, C)
        # Official keys: VAR's levels of one modality (lvl_1L, read by lvl_pos) and its depth-only mask
        # (attn_bias_for_masking, never read here: the prefix mask below replaces it; the release deletes it).
        self.register_buffer("lvl_1L", levels_of(cfg.patch_nums)[None])
        self.register_buffer("attn_bias_for_masking", block_causal_bias(self.lvl_1L[0]),
                             persistent=cfg.attention == "l2")
        # With the image prefix, image tokens and the depth start token form level 0 (they all see each
        # other); depth scale k is level k. Sequence: [image L tokens | depth start | depth scales 2..K].
        prefix_levels = torch.cat((torch.zeros(L + 1, dtype=torch.long), self.lvl_1L[0, 1:]))
        self.register_buffer("prefix_attn_bias", block_causal_bias(prefix_levels), persistent=False)
        self._init_weights()

    def _init_weights(self, init_std=None, adaln=0.5, adaln_gamma=1e-5, head=0.02):
        """VAR's initialization: small residual branches (gamma ~ 1e-5) so a deep stack starts as identity."""
        std = init_std or math.sqrt(1 / self.cfg.width / 3)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_start, std=std)
        nn.init.trunc_normal_(self.pos_1LC, std=std)
        with torch.no_grad():
            self.head.weight.mul_(head)
            self.head_nm.ada_lin[-1].weight.mul_(adaln)
            for b in self.blocks:
                b.attn.proj.weight.div_(math.sqrt(2 * self.cfg.depth))
                b.ffn.fc2.weight.div_(math.sqrt(2 * self.cfg.depth))
                w = b.ada_lin[-1].weight
                w[2 * self.cfg.width:].mul_(adaln)
                w[: 2 * self.cfg.width].mul_(adaln_gamma)

    def cond(self, B: int) -> torch.Tensor:
        """AdaLN's condition: the learned null-class embedding (constant; no guidance) -> (B, C)."""
        null = torch.full((B,), self.cfg.num_classes, dtype=torch.long, device=self.pos_start.device)
        return self.class_emb(null)

    def lvl_pos(self, begin: int, end: int) -> torch.Tensor:
        """Scale and position embedding of tokens begin..end-1 of a modality -> (1, l, C)."""
        return self.lvl_embed(self.lvl_1L[:, begin:end]) + self.pos_1LC[:, begin:end]

    def embed(self, f_BNCv: torch.Tensor, begin: int, end: int) -> torch.Tensor:
        """Latents of tokens begin..end-1 of a modality -> their embedded inputs x_BNC."""
        return self.word_embed(f_BNCv) + self.lvl_pos(begin, end)

    def start_token(self, B: int) -> torch.Tensor:
        return (self.cond(B)[:, None] + self.pos_start + self.lvl_pos(0, 1)).expand(B, -1, -1)

    def forward(self, x_BLC, attn_bias=None, caches=None) -> torch.Tensor:
        """Blocks then head: embedded tokens -> logits_BLV. One call per training step, or one per scale
        with `caches` (a list of dicts, one per block) holding the keys and values of earlier calls."""
        cond_BC = self.cond(x_BLC.shape[0])
        for i, block in enumerate(self.blocks):
            x_BLC = block(x_BLC, cond_BC, attn_bias, None if caches is None else caches[i])
        return self.head(self.head_nm(x_BLC, cond_BC)).float()


# ----------------------------------------------------------------------------------------------
# 5. DepthART: image prefix, the two objectives' targets, one rollout (greedy or sampled), inference
# ----------------------------------------------------------------------------------------------
def normalize_image(image_B3HW: torch.Tensor) -> torch.Tensor:
    return image_B3HW * 2 - 1  # [0, 1] -> [-1, 1], the VQ-VAE's input range


def normalize_depth(depth_B1HW: torch.Tensor, valid_B1HW: torch.Tensor | None = None) -> torch.Tensor:
    """Depth -> the VQ-VAE's 3-channel input: d_n = 2 d / quantile(d, 0.98) - 1, clipped to [-1, 1].

    Scale only (no shift, no log), as the paper; the quantile runs over valid pixels of each image.
    """
    if not torch.isfinite(depth_B1HW).all():
        raise ValueError("depth contains NaN or inf: fill invalid pixels and pass a `valid` mask instead")
    B = depth_B1HW.shape[0]
    d_BP = depth_B1HW.reshape(B, -1).float()
    if valid_B1HW is not None:
        d_BP = d_BP.masked_fill(~valid_B1HW.reshape(B, -1), float("nan"))
    q_B = torch.nanquantile(d_BP, 0.98, dim=1)
    if not (torch.isfinite(q_B) & (q_B > 0)).all():
        bad = [i for i in range(B) if not (torch.isfinite(q_B[i]) and q_B[i] > 0)]
        raise ValueError(f"depth maps {bad} are all zero, negative or have no valid pixel: nothing to normalize")
    d_n = (2 * depth_B1HW / q_B.view(B, 1, 1, 1) - 1).clamp(-1, 1)
    return d_n.expand(-1, 3, -1, -1)


def depth_from_decoder(x_B3HW: torch.Tensor) -> torch.Tensor:
    """Decoder output -> relative depth in [0, 1]: clamp to [-1, 1], map to [0, 1], mean over channels."""
    return ((x_B3HW.clamp(-1, 1) + 1) / 2).mean(1, keepdim=True)


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


def release_sample(logits_BlV, generator=None, top_k: int = 900, top_p: float = 0.9, n: int = 5) -> torch.Tensor:
    """The DepthART release's sampler (its autoregressive_infer_cfg) -> n draws per token (B, l, n): keep the
    top_k logits, then drop the least likely of those while their probability sums to at most 1 - top_p (the
    most likely always stays); draw n times with replacement."""
    B, l, V = logits_BlV.shape
    kth_Bl1 = logits_BlV.topk(min(top_k, V), -1, largest=True, sorted=False)[0].amin(-1, keepdim=True)
    logits_BlV = logits_BlV.masked_fill(logits_BlV < kth_Bl1, -torch.inf)
    sorted_BlV, order_BlV = logits_BlV.sort(-1)  # ascending
    drop_BlV = sorted_BlV.softmax(-1).cumsum(-1) <= 1 - top_p
    drop_BlV[..., -1] = False
    logits_BlV = logits_BlV.masked_fill(drop_BlV.scatter(-1, order_BlV, drop_BlV), -torch.inf)
    probs_NV = logits_BlV.softmax(-1).view(-1, V)
    return torch.multinomial(probs_NV, n, replacement=True, generator=generator).view(B, l, n)


def teacher_forcing_targets(quant: ResidualQuantizer, f_D: torch.Tensor) -> tuple[list, list]:
    """VAR's objective (paper Eq. 3): targets x_k are the VQ-VAE's own decomposition of the depth latent
    f_D, and the inputs are built from the same x_k -> (idx_Bl per scale, cumulative f_hat per scale)."""
    return quant(f_D)


def dynamic_targets(quant: ResidualQuantizer, f_D: torch.Tensor, z: list) -> tuple[list, list]:
    """DepthART's objective (paper Eq. 4-5): the model walked z_1..z_K (its own greedy tokens); the target
    at scale k is the code that best repairs what that walk left unexplained,
        t_k = Q(S_k(f_D - sum_{i<k} eta_i(z_i))),
    and the inputs are built from the walk -> (t_Bl per scale, the walk's cumulative f_hat per scale).
    If z equals the VQ-VAE's decomposition, these are exactly the teacher-forcing targets."""
    with torch.autocast(f_D.device.type, enabled=False):  # the codebook's precision, as the quantizer
        rest = f_D.detach().to(quant.embedding.weight.dtype)
        f_hat, targets, f_hats = torch.zeros_like(rest), [], []
        for si, pn in enumerate(quant.patch_nums):
            targets.append(quant.nearest(quant.resample(rest, pn, "area")))
            h_BCvhw = quant.eta(z[si], si)
            f_hat, rest = f_hat + h_BCvhw, rest - h_BCvhw
            f_hats.append(f_hat)
    return targets, f_hats


class DepthART(nn.Module):
    """A frozen VQ-VAE and a VAR transformer that predicts depth tokens after the image's tokens."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.vae, self.var = VQVAE(cfg), VAR(cfg)
        self.L = cfg.tokens_per_modality
        self.bounds = [0]  # token k of a modality belongs to scale si when bounds[si] <= k < bounds[si + 1]
        for pn in cfg.patch_nums:
            self.bounds.append(self.bounds[-1] + pn * pn)

    @classmethod
    def from_checkpoint(cls, path, device="cpu") -> "DepthART":
        """A one-file checkpoint -> the model, in eval mode: ours (config in its metadata) or the authors'
        DepthART release (model.safetensors; recognised by its keys, config read off its shapes)."""
        cfg = checkpoint_config(path)
        if cfg is None:
            raise ValueError(f"{path}: neither a depthart checkpoint (no config in its metadata) nor the DepthART "
                             f"release (no {RELEASE_KEY}); VAR's .pth pair loads with --init-vae / --init-var")
        model = cls(cfg)
        load_file(model, path)
        return model.to(device).eval()

    def check_image(self, image_B3HW: torch.Tensor):
        S = self.cfg.image_size
        if image_B3HW.ndim != 4 or tuple(image_B3HW.shape[1:]) != (3, S, S):
            raise ValueError(f"expected images of shape (B, 3, {S}, {S}) in [0, 1] for this preset, "
                             f"got {tuple(image_B3HW.shape)}; resize first (data.resize_image)")

    def encode_image(self, image_B3HW: torch.Tensor) -> torch.Tensor:
        """Image prefix (paper Sec. 3.2): token map k is the image's cumulative quantized reconstruction
        after k scales, bicubic-resized to scale k -> latents f_BLCv for all L prefix positions."""
        self.check_image(image_B3HW)
        _, f_hats = self.vae.quantize(self.vae.encode(normalize_image(image_B3HW)))
        rs = self.vae.quantize.resample
        return torch.cat([rs(f, pn, "bicubic").flatten(2).transpose(1, 2)
                          for f, pn in zip(f_hats, self.cfg.patch_nums)], 1)

    def depth_tokens(self, f_BNCv: torch.Tensor | None, img_BLCv: torch.Tensor, si0: int, si1: int) -> torch.Tensor:
        """Embedded depth inputs of scales si0..si1-1 (scale 0's input is the start token) -> x_BNC."""
        begin, end = self.bounds[si0], self.bounds[si1]
        parts = []
        if si0 == 0:
            parts.append(self.var.start_token(img_BLCv.shape[0]))
            begin += 1
        if end > begin:
            parts.append(self.var.embed(f_BNCv, begin, end))
        x_BNC = torch.cat(parts, 1)
        if self.cfg.image_shortcut:
            x_BNC = x_BNC + self.var.image_shortcut(img_BLCv[:, self.bounds[si0]:end])
        return x_BNC

    def parallel_logits(self, img_BLCv: torch.Tensor, inputs: list) -> torch.Tensor:
        """One block-causal forward over [image prefix | depth inputs] -> depth logits_BLV.

        `inputs` are the latents that feed scales 2..K (from the VQ-VAE's path or from the rollout).
        """
        f_BNCv = torch.cat([f.flatten(2).transpose(1, 2) for f in inputs], 1)
        x_BNC = torch.cat((self.var.embed(img_BLCv, 0, self.L),
                           self.depth_tokens(f_BNCv, img_BLCv, 0, len(self.cfg.patch_nums))), 1)
        return self.var(x_BNC, self.var.prefix_attn_bias)[:, self.L:]

    def rollout(self, img_BLCv: torch.Tensor, return_logits: bool = False, cache: bool = True,
                sampling: str = "greedy", generator: torch.Generator | None = None):
        """Generation, one scale per transformer call (VAR's Algorithm 2): greedy argmax by default, or
        sampling="release": the release's sampler (release_sample), whose token map is the mean of 5 drawn code
        vectors; z then holds the draws (B, l, 5) and `generator` (None: torch's global one) the randomness.

        The first call runs the image prefix and the depth start token together (level 0 sees all of
        level 0); every later call adds one scale. With the KV cache (inference, training, export) a call
        feeds only the new scale; cache=False reruns the whole sequence so far under the block-causal mask
        each time (what inference costs without a cache: same tokens up to float rounding, the benchmark's
        reference). Returns (z: idx_Bl per scale, f_hats: cumulative latent after each scale[, logits]).
        """
        caches = [dict() for _ in self.var.blocks] if cache else None
        quant, patch_nums = self.vae.quantize, self.cfg.patch_nums
        x_BNC = torch.cat((self.var.embed(img_BLCv, 0, self.L), self.depth_tokens(None, img_BLCv, 0, 1)), 1)
        z, f_hats, logits = [], [], []
        f_hat = 0
        for si, pn in enumerate(patch_nums):
            n = x_BNC.shape[1]
            bias = None if cache else self.var.prefix_attn_bias[..., :n, :n]
            logits_BlV = self.var(x_BNC, bias, caches)[:, -pn * pn:]
            idx_Bl = logits_BlV.argmax(-1) if sampling == "greedy" else release_sample(logits_BlV, generator)
            f_hat = f_hat + quant.eta(idx_Bl if idx_Bl.ndim == 2 else quant.embedding(idx_Bl).mean(2), si)
            z.append(idx_Bl), f_hats.append(f_hat), logits.append(logits_BlV)
            if si + 1 < len(patch_nums):  # the next input: the sum so far, area-resized to the next scale
                nxt_BlCv = quant.resample(f_hat, patch_nums[si + 1], "area").flatten(2).transpose(1, 2)
                x_BlC = self.depth_tokens(nxt_BlCv, img_BLCv, si + 1, si + 2)
                x_BNC = x_BlC if cache else torch.cat((x_BNC, x_BlC), 1)
        return (z, f_hats, logits) if return_logits else (z, f_hats)

    def loss(self, image_B3HW, depth_B1HW, objective: str = "depthart", valid_B1HW=None, release_loss=False):
        """Cross-entropy of the depth tokens under one of the two objectives -> (loss, stats dict).

        var:       teacher forcing: targets and inputs from the VQ-VAE's decomposition of f_D.
        depthart:  a no-grad cached greedy rollout walks z (exactly as inference does); dynamic targets
                   and inputs come from that walk. One block-causal forward over those inputs then gives
                   the logits the sequential cached rollout computed, now with gradients.
        release_loss: the DepthART release's variant: cross-entropy on scales 1..K-1 only; at the last scale
                   a soft Gumbel-softmax (tau 1) mixture of all codes completes f_hat, pulled toward f_D by
                   10 x MSE (as its code describes; as published, that term never reaches its optimizer).
        """
        if objective not in ("var", "depthart"):
            raise ValueError(f"unknown objective {objective!r}: expected 'var' or 'depthart'")
        with torch.no_grad():
            img_BLCv = self.encode_image(image_B3HW)
            f_D = self.vae.encode(self.normalize_target(depth_B1HW, valid_B1HW))  # depth_B1HW: (B,3,H,W) normals
            if objective == "var":
                targets, f_hats = teacher_forcing_targets(self.vae.quantize, f_D)
            else:
                targets, f_hats = dynamic_targets(self.vae.quantize, f_D, self.rollout(img_BLCv)[0])
            inputs = self.vae.quantize.next_inputs(f_hats)
        logits_BLV = self.parallel_logits(img_BLCv, inputs)
        target_BL = torch.cat(targets, 1)
        n = self.bounds[-2] if release_loss else self.L  # the release: no cross-entropy at the last scale
        loss = F.cross_entropy(logits_BLV[:, :n].reshape(-1, logits_BLV.shape[-1]), target_BL[:, :n].reshape(-1))
        with torch.no_grad():
            stats = {"token_acc": (logits_BLV.argmax(-1) == target_BL).float().mean()}
        if release_loss:
            quant = self.vae.quantize
            soft_BlCv = F.gumbel_softmax(logits_BLV[:, n:], tau=1.0, hard=False) @ quant.embedding.weight
            stats["f_mse"] = F.mse_loss(f_hats[-2] + quant.eta(soft_BlCv, len(self.cfg.patch_nums) - 1), f_D)
            loss = loss + 10 * stats["f_mse"]
        return loss, {"loss": loss.detach(), **{k: v.detach() for k, v in stats.items()}}

    def normalize_target(self, target: torch.Tensor, valid_B1HW: torch.Tensor | None = None) -> torch.Tensor:
        """The target (depth (B, 1, H, W) or normals (B, 3, H, W), as cfg.target says) -> the VQ-VAE's input."""
        return (normalize_normals if self.cfg.target == "normals" else normalize_depth)(target, valid_B1HW)

    def target_from_decoder(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        """Decoder output -> relative depth (B, 1, H, W) in [0, 1], or unit normals (B, 3, H, W)."""
        return (normals_from_decoder if self.cfg.target == "normals" else depth_from_decoder)(x_B3HW)

    def decode_target(self, f_hats: list) -> torch.Tensor:
        """Partial sums f_hat (a list of k) -> the target after each of them, from one batched decoder call:
        relative depth (B, k, H, W) in [0, 1], or unit normals (B, k, 3, H, W). All K partial sums give
        the paper's Fig. 7, coarse to fine."""
        k, B = len(f_hats), f_hats[0].shape[0]
        y = self.target_from_decoder(self.vae.decode(torch.cat(f_hats, 0)))  # (k B, 1 or 3, H, W)
        y = y.view(k, B, *y.shape[1:]).transpose(0, 1)
        return y[:, :, 0] if self.cfg.target == "depth" else y

    def last_scale(self, y: torch.Tensor) -> torch.Tensor:
        """decode_target's output -> the prediction after its last scale: depth (B, 1, H, W), normals (B, 3, H, W)."""
        return y[:, -1:] if self.cfg.target == "depth" else y[:, -1]

    @torch.no_grad()
    def predict(self, image_B3HW: torch.Tensor, all_scales: bool = False, sampling: str = "greedy",
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Image in [0, 1] at the preset's size -> relative depth (B, 1, H, W) in [0, 1] (0 = near), or unit
        normals (B, 3, H, W); all_scales: the target after every scale (B, K[, 3], H, W). sampling: "greedy"
        (deterministic; what export unrolls) or "release" (the release's sampler, see rollout)."""
        if sampling not in ("greedy", "release"):
            raise ValueError(f"unknown sampling {sampling!r}: expected 'greedy' or 'release'")
        _, f_hats = self.rollout(self.encode_image(image_B3HW), sampling=sampling, generator=generator)
        y = self.decode_target(f_hats if all_scales else f_hats[-1:])
        return y if all_scales else self.last_scale(y)

    @torch.no_grad()
    def vqvae_ceiling(self, depth_B1HW: torch.Tensor, valid_B1HW: torch.Tensor | None = None) -> torch.Tensor:
        """The target decoded from the VQ-VAE's own tokens of the true target: the best any transformer on this
        VQ-VAE can predict (stage 1's validation figure) -> (B, 1, H, W) depth or (B, 3, H, W) normals."""
        return self.target_from_decoder(self.vae.reconstruct(self.normalize_target(depth_B1HW, valid_B1HW)))


# ----------------------------------------------------------------------------------------------
# 6. Checkpoints: our safetensors (config in the metadata), official .pth (weights only), the DepthART
#    release, clear errors
# ----------------------------------------------------------------------------------------------
def atomic_write(path, write):
    """write(tmp) beside path, fsync, then rename over path: a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(path, model: DepthART, meta: dict, dtype: torch.dtype | None = None):
    """dtype=torch.float16 stores the floating-point tensors in half precision (half the file, for shipping;
    loading casts them back to the model's float32)."""
    sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
          for k, v in model.state_dict().items()}
    metadata = {"config": json.dumps(model.cfg.to_dict()), "meta": json.dumps(meta)}
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
        return Config.from_dict(json.loads(md["config"])) if "config" in md else None
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


# Official key: the DepthART release keeps the transformer's keys at the top level and the VQ-VAE under
# `vae_proxy.`; its quantizer is registered twice (`vae_proxy.quantize.` and the alias `vae_quant_proxy.`,
# one set of tensors, saved under either name); `normalizer.alpha/beta` (2, -1: normalize_depth's constants)
# are never read at inference. A DDP-wrapped save would prefix every key with `module.`.
RELEASE_KEY = "vae_proxy.encoder.conv_in.weight"
PICKLES = (".pth", ".pt", ".bin")


def from_release_keys(sd: dict) -> dict:
    """Official key: the release's names -> ours (`vae_proxy.` -> `vae.`, the rest -> `var.`), either alias."""
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


def load_file(model: DepthART, path):
    """A whole-model checkpoint into model: ours strictly; the release's with unused keys named and skipped."""
    load_weights(model, read_state_dict(path), str(path), ignore_unused="config" not in checkpoint_metadata(path))


def init_weights(model: DepthART, init=None, init_vae=None, init_var=None):
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
