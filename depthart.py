"""DepthART in one file: monocular depth as autoregressive refinement on a VAR transformer.

Why this model trains the way it does. DepthART ("Monocular Depth Estimation as Autoregressive Refinement Task",
Gabdullin et al., arXiv 2409.15010) predicts a depth map the way VAR (Tian et al., arXiv 2404.02905) generates an
image: as token maps from coarse (1x1) to fine (16x16), each a *residual* on the sum of the coarser ones, here after
an image prefix: the RGB image's VQ-VAE latents, one map per scale (its quantized partial sums, continuous vectors
rather than token indices). VAR trains by teacher forcing: at scale si the transformer is shown the *true* coarser
maps. At inference it is shown its *own*, whose mistakes it never saw in training, so errors compound from scale to
scale (exposure bias). DepthART trains on what inference sees. One training step, in three parts:
  1. The walk: without gradients, the model rolls out its own token maps z_0..z_{K-2} (indices), as inference does
     (no target depends on the last scale's pick, so the walk stops before it).
  2. Dynamic targets: the target at each scale is recomputed from the true depth, the tokens the VQ-VAE's quantizer
     would choose for what the walk's coarser scales left unexplained (formulas below).
  3. One block-causal forward over the walk's maps, with gradients, scores those targets (cross-entropy).
Why this is sound, and cheap: step 3's logits are the walk's (up to rounding, see logits_and_targets), because the
mask shows each scale exactly what the walk saw and the model has no dropout or drop-path; so the loss trains the
very distributions the walk picked from. And the walk needs no gradient: its only decisions are argmaxes, which have
none. So its cached calls run without gradients, and backward goes through step 3's one parallel forward alone (the
same forward as teacher forcing's), not through K sequential calls and their growing KV caches.
The paper does not say how the walk picks its tokens. The authors' released training code takes the argmax, and so
does this file, because that is the walk predict runs: training repairs exactly the past that inference produces,
and no sampling noise enters the targets. (The release evaluates by sampling, so there the walks differ: section 6.)

The objectives in one line each (f_D: continuous VQ-VAE feature of the depth map, Q: nearest code,
S_si: area resize to scale si, eta_i: token map i's codes looked up, bicubic-upsampled to the full latent, then
the Phi assigned to scale i; in code the method's resizes are resample(f, side, mode), F.interpolate's, section 5):
  var:       inputs and targets from the VQ-VAE's own walk, x_si = Q(S_si(f_D - sum_{i<si} eta_i(x_i)))
  depthart:  inputs from the model's greedy walk z_si; targets t_si = Q(S_si(f_D - sum_{i<si} eta_i(z_i)))
At scale 0 nothing has been walked, so t_0 = x_0; when the model walks exactly the VQ-VAE's path (z = x), all
targets coincide: the objectives differ only in who walks. (Its own walk with VAR's targets x_si would not do:
x_si repairs a past the model did not produce, so its sum misses f_D.)

d16: image (B,3,256,256) -> f (B,32,16,16) -> 10 token maps, sides pn = 1,2,3,4,5,6,8,10,13,16 (680 tokens);
transformer input (B, 680 + 680, 1024) = [image prefix | depth start token, depth inputs of scales 1..9].

One DepthART step at scale si = 3 (pn = 4), d16, B = 1, where the walk went wrong at scale 2:
  f_D = vae.encode(normalize_depth(d))   (1,32,16,16) the depth map d's latent; the VQ-VAE itself is frozen
  z_0, z_1, z_2 = greedy rollout         (1,1) (1,4) (1,9) token indices; say z_2 differs from x_2 at 3 of 9
  rest = f_D - sum_{i<3} eta_i(z_i)      (1,32,16,16) what the model's own walk left unexplained
  t_3 = Q(S_3(rest))                     (1,16) area-resize to 4x4, nearest code per position: the dynamic target
  x_3 = Q(S_3(f_D - sum eta_i(x_i)))     (1,16) teacher forcing's target repairs the VQ-VAE's walk instead:
                                         it can differ from t_3 wherever eta_2(z_2)'s error reaches
  inputs[2] = S_3(sum_{i<3} eta_i(z_i))  (1,32,4,4) -> (1,16,32) -> word_embed + lvl_embed + pos_1LC -> (1,16,1024)
                                         (inputs[si-1] feeds scale si)
  logits_BLV = parallel_logits(...)      (1,680,4096) the depth half of one block-causal forward over the walk
  logits_BLV[:, 14:30] vs t_3            scale 3 is positions bounds[3]..bounds[4]-1 = 14..29 of the depth half
  loss = CE(logits_BLV, t_0..t_9)        one mean over all B x 680 tokens: it learns to repair its own past

Read top to bottom: 1. Config; 2. the residual VQ-VAE; 3. the VAR transformer; 4. DepthART; 5. [export] resizes
as matrix products; 6. [repo] extension points, the release's differences, checks, initialization. "Section n" is
this file's; the papers' are "paper Sec./Eq./Fig.". Imports only torch and the standard library.

Where training starts. A repair target is learnable only when the walk it repairs has structure. The paper
fine-tunes ImageNet-pretrained VAR-d16 with DepthART directly, over VAR's VQ-VAE, frozen: that transformer already
walks coherent residual maps. From random weights the walk is noise, and so are its targets (the repository's CPU
models therefore train in stages, section 6).

Shape legend (names carry shapes; one letter, one meaning; Cv and Cf are one symbol each):
  B batch    C transformer width (1024)    Cv VQ-VAE latent channels (32)    Cf a VQ-VAE conv layer's channels
  V vocabulary    H, W image size    h, w a VQ-VAE map's size (H, W at conv_in, halved per level to 16; pn at si)
  K scales (10)   A heads (16)   L tokens of one modality (680)   l tokens of one scale (pn*pn)   M keys so far
  N tokens of a transformer call or other sequence   c channels per head (C/A)   P positions flattened together
  J partial sums decoded at once   si a scale's index, 0-based; pn its side, patch_nums[si]   digits are sizes
Prefixes: "x: activations or a network's input", "f: VQ-VAE latents", "image: pixels", "img: the image prefix's
latents", "idx: token indices", "code: code vectors", "gt: ground-truth depth"; other prefixes are plain words (rest,
eta, dist, q/k/v/o, mask, bias, cond, valid, depth, logits...; a digit in a word, as in gamma1 or q98, is no size).
Lists over scales are plain plurals, coarse to fine: one entry per scale (z, targets, f_hats, idxs, logits), but
inputs has K-1 (they feed scales 1..K-1), as do the training walk's z and f_hats; bounds has K+1 (starts, then L).
Unshaped by design: f_D, the depth map's latent (B,Cv,h,w), named as in the formulas (D is no dimension); z_si (the
rollout's pick shapes it); f_hat_BCvhw = 0 before scale 0; section 5's eye and mat; qkv_bias (3C,); ticks
(phi_count,). Official keys keep VAR's names, unshaped (pos_start, q_bias, attn_bias_for_masking...) or in its
letters (H heads, S scales). Formulas use the paper's letters: x_si the VQ-VAE's tokens, z_si the model's, t_si
dynamic targets, i a coarser scale.
Same word, other thing: the objective "var" (a string) is not the module `var`; z_channels (VAR's name for Cv) has
nothing to do with z, the model's tokens; "scale" is a token map si, but AdaLN's scale1/scale2 are multipliers and
attention's `scale` is its factor on q k^T; "level" is a VQ-VAE resolution (down.{i}), or a mask level (section 3).

Tags mark what a learner may skip: "official key" (VAR's checkpoints load strictly), [release] the authors' weights,
[export] ONNX/TensorRT, [speed], [repo] this repository's CPU models, variants and tools (section 6).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------
# 1. Config
# ----------------------------------------------------------------------------------------------
@dataclass
class Config:
    """The model's sizes; d16() is the paper's (the repository's CPU models use smaller ones)."""
    image_size: int = 256
    patch_nums: tuple = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    vocab_size: int = 4096
    z_channels: int = 32           # Cv: latent channels of the VQ-VAE
    vae_ch: int = 160
    vae_ch_mult: tuple = (1, 1, 2, 2, 4)  # one level per entry; len-1 stride-2 downsamplings
    vae_res_blocks: int = 2        # per encoder level; the decoder has one more
    phi_count: int = 4             # Phi convolutions of eta (section 2b), each shared by neighbouring scales
    phi_ratio: float = 0.5         # Phi(f) = (1 - r) f + r conv3x3(f)
    depth: int = 16                # transformer blocks (VAR's name; not the depth map)
    width: int = 1024              # C
    heads: int = 16                # A
    mlp_ratio: float = 4.0
    num_classes: int = 1000        # class_emb has num_classes + 1 rows; the last is the null class we use
    norm_eps: float = 1e-6

    def __post_init__(self):  # [repo] section 6
        check_config(self)

    @property
    def tokens_per_modality(self) -> int:  # L
        return sum(pn * pn for pn in self.patch_nums)

    @classmethod
    def d16(cls) -> "Config":
        """The paper: VAR-d16 (310M) on vae_ch160v4096z32, 256x256 input, 680 tokens per modality."""
        return cls()

    def variant(self) -> str:
        """[repo] The variant fields this Config sets: "" here, the paper's model (extension point, section 6)."""
        return ""


# ----------------------------------------------------------------------------------------------
# 2. Multi-scale residual VQ-VAE (VAR's, with the official module names so checkpoints load)
# 2a. VAR's standard VQGAN encoder and decoder: skim them; the method only encodes its inputs and decodes 2b's sums
# ----------------------------------------------------------------------------------------------
def _norm(ch: int) -> nn.GroupNorm:
    # VAR's 32 groups where a layer has 64+ channels (all of d16's); the CPU models' narrower layers get ch // 2.
    return nn.GroupNorm(min(32, ch // 2), ch, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x_BCfhw):
        return self.nin_shortcut(x_BCfhw) + self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x_BCfhw))))))


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels of the lowest-resolution feature map."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = _norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x_BCfhw):
        B, Cf, h, w = x_BCfhw.shape
        q_BPCf, k_BPCf, v_BPCf = self.qkv(self.norm(x_BCfhw)).reshape(B, 3, Cf, h * w).transpose(2, 3).unbind(1)
        o_BPCf = F.scaled_dot_product_attention(q_BPCf[:, None], k_BPCf[:, None], v_BPCf[:, None])[:, 0]
        return x_BCfhw + self.proj_out(o_BPCf.transpose(1, 2).reshape(B, Cf, h, w))


class Resample(nn.Module):
    """Down: a stride-2 conv after VAR's asymmetric pad. Up: nearest 2x upsampling, then a conv."""

    def __init__(self, ch: int, down: bool):
        super().__init__()
        self.down, self.conv = down, nn.Conv2d(ch, ch, 3, stride=2 if down else 1, padding=0 if down else 1)

    def forward(self, x_BCfhw):
        return self.conv(F.pad(x_BCfhw, (0, 1, 0, 1)) if self.down else F.interpolate(x_BCfhw, scale_factor=2.0))


def _level(blocks, attns, resample=None, resample_name="downsample") -> nn.Module:
    """A bare module holding one resolution level, only so the keys read `down.{i}.block.{j}...` as VAR's."""
    level = nn.Module()
    level.block, level.attn = nn.ModuleList(blocks), nn.ModuleList(attns)
    if resample is not None:
        setattr(level, resample_name, resample)
    return level


def _run_level(level: nn.Module, x_BCfhw: torch.Tensor, resample_name: str) -> torch.Tensor:
    """Res blocks (each followed by its attention block, at the lowest level), then the resample."""
    for j, block in enumerate(level.block):
        x_BCfhw = level.attn[j](block(x_BCfhw)) if len(level.attn) else block(x_BCfhw)
    return getattr(level, resample_name)(x_BCfhw) if hasattr(level, resample_name) else x_BCfhw


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
                                    None if last else Resample(ch * m, down=True)))
            cin = ch * m
        self.mid = _mid(cin)
        self.norm_out, self.conv_out = _norm(cin), nn.Conv2d(cin, cfg.z_channels, 3, padding=1)

    def forward(self, x_B3HW):
        x_BCfhw = self.conv_in(x_B3HW)
        for level in self.down:
            x_BCfhw = _run_level(level, x_BCfhw, "downsample")
        x_BCfhw = self.mid.block_2(self.mid.attn_1(self.mid.block_1(x_BCfhw)))
        return self.conv_out(F.silu(self.norm_out(x_BCfhw)))


class Decoder(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        ch, mult, n = cfg.vae_ch, cfg.vae_ch_mult, cfg.vae_res_blocks + 1
        cin = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = _mid(cin)
        levels = []
        for i in reversed(range(len(mult))):  # built coarse to fine, stored fine to coarse: VAR's up.0 is the finest
            blocks = [ResnetBlock(cin if j == 0 else ch * mult[i], ch * mult[i]) for j in range(n)]
            attns = [AttnBlock(ch * mult[i]) for _ in range(n)] if i == len(mult) - 1 else []
            levels.insert(0, _level(blocks, attns, Resample(ch * mult[i], down=False) if i else None, "upsample"))
            cin = ch * mult[i]
        self.up = nn.ModuleList(levels)
        self.norm_out, self.conv_out = _norm(cin), nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, f_BCvhw):
        x_BCfhw = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(f_BCvhw))))
        for level in reversed(self.up):
            x_BCfhw = _run_level(level, x_BCfhw, "upsample")
        return self.conv_out(F.silu(self.norm_out(x_BCfhw)))


# 2b. The residual quantizer (VAR's Algorithm 1): the method reads from here on ---------------------------------
class Phi(nn.Conv2d):
    """eta's learnable part: Phi(f) = (1 - r) f + r conv3x3(f), removing upsampling artefacts."""

    def __init__(self, ch: int, ratio: float):
        super().__init__(ch, ch, 3, padding=1)
        self.ratio = ratio

    def forward(self, f_BCvhw):
        return (1 - self.ratio) * f_BCvhw + self.ratio * super().forward(f_BCvhw)


def phi_schedule(num_scales: int, phi_count: int) -> list[int]:
    """Which Phi each scale uses, as VAR's PhiPartiallyShared (so checkpoints' Phis meet their scales): the one whose
    tick is nearest si/(K-1). At d16: [0,0,1,1,1,2,2,3,3,3]."""
    edge = 1 / 3 / phi_count if phi_count == 4 else 1 / 2 / phi_count  # VAR's: 1/12 for 4 Phis, else bin centres
    # float64 as VAR's: at d16, si = 2 and 7 lie midway between two ticks; float64 rounding picks the upper Phi
    ticks = torch.linspace(edge, 1 - edge, phi_count, dtype=torch.float64, device="cpu")
    return [int(torch.argmin((ticks - si / (num_scales - 1)).abs())) for si in range(num_scales)]


class ResidualQuantizer(nn.Module):
    """VAR's multi-scale residual quantizer: one short loop over scales (VAR Algorithm 1)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.patch_nums = cfg.patch_nums
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.z_channels)
        self.quant_resi = nn.Module()  # a bare module only for the official keys quantize.quant_resi.qresi_ls.{i}
        self.quant_resi.qresi_ls = nn.ModuleList(Phi(cfg.z_channels, cfg.phi_ratio) for _ in range(cfg.phi_count))
        self.phi_of_scale = phi_schedule(len(cfg.patch_nums), cfg.phi_count)
        # official key, never read: per-scale code-hit counts of VAR's VQ-VAE training
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(cfg.patch_nums), cfg.vocab_size))
        # resample(f, pn, mode) == F.interpolate(f, (pn, pn), mode), as constant matrix products (section 5, export)
        self.resample = Resampler(cfg.patch_nums)

    def nearest(self, f_BCvhw: torch.Tensor) -> torch.Tensor:
        """Q: index of the nearest code (L2) at every position -> idx_Bl."""
        B, Cv, h, w = f_BCvhw.shape
        f_PCv = f_BCvhw.permute(0, 2, 3, 1).reshape(-1, Cv)
        code_VCv = self.embedding.weight
        dist_PV = (f_PCv.square().sum(1, keepdim=True) + code_VCv.square().sum(1)) - 2 * f_PCv @ code_VCv.T
        return dist_PV.argmin(1).view(B, h * w)

    def eta(self, code_BlCv: torch.Tensor, si: int) -> torch.Tensor:
        """eta_si: scale si's code vectors, bicubic-upsampled to the full latent, then Phi -> f_BCvhw."""
        B, pn, phi = code_BlCv.shape[0], self.patch_nums[si], self.quant_resi.qresi_ls[self.phi_of_scale[si]]
        return phi(self.resample(code_BlCv.transpose(1, 2).reshape(B, -1, pn, pn), self.patch_nums[-1], "bicubic"))

    def eta_idx(self, idx_Bl: torch.Tensor, si: int) -> torch.Tensor:
        """eta_si of token indices: their codes, then eta."""
        return self.eta(self.embedding(idx_Bl), si)

    def forward(self, f_BCvhw: torch.Tensor):
        """Decompose f into per-scale tokens, x_si = Q(S_si(f - sum_{i<si} eta_i(x_i))) -> (idx_Bl per scale,
        cumulative f_hat per scale): each scale quantizes what the coarser ones left unexplained."""
        # Not autocast's half precision: it can change which code is nearest, and tokens would not reproduce.
        # rest is detached: it only picks codes (argmin has no gradient). f_hat keeps eta's graph, which only the
        # VQ-VAE's own training (stage 1, not in this file) uses: there a loss on f_hat reaches the codes and Phis.
        with torch.autocast(f_BCvhw.device.type, enabled=False):
            f_BCvhw = f_BCvhw.to(self.embedding.weight.dtype)
            rest_BCvhw, f_hat_BCvhw = f_BCvhw.detach(), torch.zeros_like(f_BCvhw)
            idxs, f_hats = [], []
            for si, pn in enumerate(self.patch_nums):
                idx_Bl = self.nearest(self.resample(rest_BCvhw, pn, "area"))
                eta_BCvhw = self.eta_idx(idx_Bl, si)
                f_hat_BCvhw, rest_BCvhw = f_hat_BCvhw + eta_BCvhw, rest_BCvhw - eta_BCvhw.detach()
                idxs.append(idx_Bl)
                f_hats.append(f_hat_BCvhw)
        return idxs, f_hats

    def next_inputs(self, f_hats: list) -> list:
        """Transformer inputs of scales 1..K-1: the cumulative f_hat after scale si-1, area-downsampled to si's
        side (area: the mean of what each coarse position covers, as VAR). A last sum, after scale K-1, feeds
        nothing: the training walk's K-1 f_hats suffice."""
        return [self.resample(f_hat_BCvhw, pn, "area") for f_hat_BCvhw, pn in zip(f_hats, self.patch_nums[1:])]


class VQVAE(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.quantize = ResidualQuantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, padding=1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, padding=1)

    def encode(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        """Image or 3-channel depth in [-1, 1] -> continuous latent f_BCvhw; quantize() decomposes it."""
        return self.quant_conv(self.encoder(x_B3HW))

    def decode(self, f_hat_BCvhw: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(f_hat_BCvhw))


# ----------------------------------------------------------------------------------------------
# 3. VAR transformer (VAR's module names, so var_d16.pth loads)
# ----------------------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    """VAR's multi-head attention: q and k L2-normalized, so that q k^T is a cosine, times a learned per-head
    temperature (at most 100) that replaces 1/sqrt(c); a KV cache (a dict) lets inference feed one scale."""
    scale = 1.0  # scaled_dot_product_attention's factor on q k^T: the temperature is already in q

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, heads, 1, 1), 4.0).log())  # log temperature
        self.mat_qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(width)), nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width))  # k learns no bias; VAR's files store this zero
        self.proj = nn.Linear(width, width)

    def forward(self, x_BNC, bias_11NM, cache: dict | None = None):
        B, N, C = x_BNC.shape
        qkv_bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv_BN3Ac = F.linear(x_BNC, self.mat_qkv.weight, qkv_bias).view(B, N, 3, self.heads, C // self.heads)
        q_BANc, k_BANc, v_BANc = qkv_BN3Ac.permute(2, 0, 3, 1, 4).unbind(0)
        q_BANc, k_BANc = self.normalize_qk(q_BANc, k_BANc)
        k_BAMc, v_BAMc = k_BANc, v_BANc  # with a cache: these keys and values appended to everything seen before
        if cache is not None:
            if "k" in cache:
                k_BAMc, v_BAMc = torch.cat((cache["k"], k_BANc), 2), torch.cat((cache["v"], v_BANc), 2)
            cache["k"], cache["v"] = k_BAMc, v_BAMc
        mask_11NM = None if bias_11NM is None else bias_11NM.to(q_BANc.dtype)  # under autocast q may be half
        o_BANc = F.scaled_dot_product_attention(q_BANc, k_BAMc, v_BAMc, attn_mask=mask_11NM, scale=self.scale)
        return self.proj(o_BANc.transpose(1, 2).reshape(B, N, C))

    def normalize_qk(self, q_BANc, k_BANc):
        """Unit-length q and k, q times its head's temperature: the logits stay bounded however large the
        activations grow. ([release] extension point, section 6.)"""
        temperature_1A11 = self.scale_mul_1H11.clamp(max=math.log(100)).exp()
        return F.normalize(q_BANc, dim=-1) * temperature_1A11, F.normalize(k_BANc, dim=-1)


class FFN(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x_BNC):
        return self.fc2(F.gelu(self.fc1(x_BNC), approximate="tanh"))


class AdaLNBlock(nn.Module):
    """x += attn(LN(x)(1+scale1)+shift1) gamma1; x += ffn(LN(x)(1+scale2)+shift2) gamma2."""

    def __init__(self, cfg: Config):
        super().__init__()
        C = cfg.width
        self.attn = SelfAttention(C, cfg.heads)
        self.ffn = FFN(C, round(C * cfg.mlp_ratio))
        self.ln = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

    def forward(self, x_BNC, cond_BC, bias_11NM, cache=None):
        gamma1_B1C, gamma2_B1C, scale1_B1C, scale2_B1C, shift1_B1C, shift2_B1C = self.ada(cond_BC, cache).unbind(2)
        x_BNC = x_BNC + self.attn(self.ln(x_BNC) * (1 + scale1_B1C) + shift1_B1C, bias_11NM, cache) * gamma1_B1C
        return x_BNC + self.ffn(self.ln(x_BNC) * (1 + scale2_B1C) + shift2_B1C) * gamma2_B1C

    def ada(self, cond_BC, cache=None) -> torch.Tensor:
        """The six modulations from the condition, stacked on dim 2 -> (B, 1, 6, C), which forward unbinds.
        [speed] The condition is constant, so a rollout computes them once per block: its per-block cache dict holds
        them under "ada", beside the attention's keys and values ("k", "v")."""
        cache = {} if cache is None else cache
        if "ada" not in cache:
            cache["ada"] = self.ada_lin(cond_BC).view(-1, 1, 6, cond_BC.shape[-1])
        return cache["ada"]


class AdaLNHead(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.ln = nn.LayerNorm(cfg.width, eps=cfg.norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cfg.width, 2 * cfg.width))

    def forward(self, x_BNC, cond_BC):
        scale_B1C, shift_B1C = self.ada_lin(cond_BC).view(-1, 1, 2, x_BNC.shape[-1]).unbind(2)
        return self.ln(x_BNC) * (1 + scale_B1C) + shift_B1C


def levels_of(patch_nums) -> torch.Tensor:
    """The scale index si of each token of one modality, e.g. [0, 1,1,1,1, 2,...] -> (L,)."""
    return torch.cat([torch.full((pn * pn,), si) for si, pn in enumerate(patch_nums)])


def block_causal_bias(levels_N: torch.Tensor) -> torch.Tensor:
    """Additive mask: a token sees every token of its own or a coarser level -> (1, 1, N, N)."""
    return torch.where(levels_N[None, :] <= levels_N[:, None], 0.0, -torch.inf)[None, None]


class VAR(nn.Module):
    """The next-scale transformer: embeddings, AdaLN blocks and the head. It holds one piece of DepthART, the mask
    over [image prefix | depth] (prefix_bias_11NN); what the tokens mean is section 4's. Training, rollout and
    inference all run through `forward`."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg, C, L = cfg, cfg.width, cfg.tokens_per_modality
        self.word_embed = nn.Linear(cfg.z_channels, C)
        # VAR's 1000 ImageNet classes + the null class (the official shape); DepthART reads only the null row.
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)
        self.pos_start = nn.Parameter(torch.empty(1, 1, C))
        self.pos_1LC = nn.Parameter(torch.empty(1, L, C))
        self.lvl_embed = nn.Embedding(len(cfg.patch_nums), C)
        self.blocks = nn.ModuleList(AdaLNBlock(cfg) for _ in range(cfg.depth))
        self.head_nm = AdaLNHead(cfg)
        self.head = nn.Linear(C, cfg.vocab_size)
        self.register_buffer("lvl_1L", levels_of(cfg.patch_nums)[None])  # VAR's scale index per token
        # official key, never read: VAR's mask over one modality (prefix_bias_11NN, over both, replaces it)
        self.register_buffer("attn_bias_for_masking", block_causal_bias(self.lvl_1L[0]))
        # Mask levels (not the scale embedding): level 0 is the image prefix and the depth start token, which see
        # each other freely because none carries depth (the image is given whole, the start token is the constant
        # condition). Depth scale si is mask level si: it sees its own inputs (sums through si - 1) and everything
        # coarser, never the tokens it predicts. Sequence: [image L tokens | depth start | depth scales 1..K-1].
        levels_N = torch.cat((torch.zeros(L + 1, dtype=torch.long), self.lvl_1L[0, 1:]))
        self.register_buffer("prefix_bias_11NN", block_causal_bias(levels_N), persistent=False)
        init_from_scratch(self)  # [repo] VAR's initialization (section 6); checkpoints overwrite it

    def cond(self, B: int) -> torch.Tensor:
        """AdaLN's condition: the learned null-class embedding (constant; no guidance) -> (B, C)."""
        null_B = torch.full((B,), self.cfg.num_classes, dtype=torch.long, device=self.pos_start.device)
        return self.class_emb(null_B)

    def lvl_pos(self, begin: int, end: int) -> torch.Tensor:
        """Scale and position embedding of tokens begin..end-1 of a modality -> (1, N, C)."""
        return self.lvl_embed(self.lvl_1L[:, begin:end]) + self.pos_1LC[:, begin:end]

    def embed(self, f_BNCv: torch.Tensor, begin: int, end: int) -> torch.Tensor:
        """Latents of tokens begin..end-1 of a modality -> their embedded inputs x_BNC."""
        return self.word_embed(f_BNCv) + self.lvl_pos(begin, end)

    def start_token(self, B: int) -> torch.Tensor:
        return self.cond(B)[:, None] + self.pos_start + self.lvl_pos(0, 1)

    def forward(self, x_BNC, bias_11NM=None, caches=None) -> torch.Tensor:
        """Blocks then head: embedded tokens -> logits_BNV. One call for a parallel forward; in a rollout (the walk,
        predict) one per scale, with `caches` (a dict per block) holding earlier calls' keys and values ([speed] and
        the block's AdaLN modulations, AdaLNBlock.ada)."""
        cond_BC = self.cond(x_BNC.shape[0])
        for i, block in enumerate(self.blocks):
            x_BNC = block(x_BNC, cond_BC, bias_11NM, None if caches is None else caches[i])
        return self.head(self.head_nm(x_BNC, cond_BC)).float()  # float32 logits for the loss and argmax under autocast


# ----------------------------------------------------------------------------------------------
# 4. DepthART: depth in and out, the image prefix, the two objectives' targets, one rollout, loss, predict
# ----------------------------------------------------------------------------------------------
def normalize_image(image_B3HW: torch.Tensor) -> torch.Tensor:
    return image_B3HW * 2 - 1  # [0, 1] -> [-1, 1], the VQ-VAE's input range


def normalize_depth(depth_B1HW: torch.Tensor, valid_B1HW: torch.Tensor | None = None) -> torch.Tensor:
    """Depth -> the VQ-VAE's 3-channel input (replicated, so that VAR's RGB VQ-VAE serves unchanged): 2 d /
    quantile(d, 0.98) - 1, clipped to [-1, 1]: one per-image scale (no offset, no log), as the paper; the 98th
    percentile, not the maximum, so that a few far pixels do not set it. `valid` only picks the pixels of the
    quantile: invalid ones still enter the VQ-VAE, and their tokens are scored like any other (fill them with
    plausible depth, e.g. the nearest valid pixel's)."""
    B = depth_B1HW.shape[0]
    depth_BP = depth_B1HW.reshape(B, -1).float()
    if valid_B1HW is not None:
        depth_BP = depth_BP.masked_fill(~valid_B1HW.reshape(B, -1), float("nan"))  # nanquantile skips them
    q98_B = torch.nanquantile(depth_BP, 0.98, dim=1)
    check_depth(depth_B1HW, q98_B)  # [repo]
    x_B1HW = (2 * depth_B1HW / q98_B.view(B, 1, 1, 1) - 1).clamp(-1, 1)
    return x_B1HW.expand(-1, 3, -1, -1)


def depth_from_decoder(x_B3HW: torch.Tensor) -> torch.Tensor:
    """Decoder output -> relative depth in [0, 1]: clamp to [-1, 1], map to [0, 1], mean over channels."""
    return ((x_B3HW.clamp(-1, 1) + 1) / 2).mean(1, keepdim=True)


def teacher_forcing_targets(quant: ResidualQuantizer, f_D: torch.Tensor) -> tuple[list, list]:
    """VAR's objective (paper Eq. 3): targets x_si are the VQ-VAE's own decomposition of the depth latent
    f_D, and the inputs are built from the same x_si -> (idx_Bl per scale, cumulative f_hat per scale)."""
    return quant(f_D)


def dynamic_targets(quant: ResidualQuantizer, f_D: torch.Tensor, z: list) -> tuple[list, list]:
    """DepthART's objective (paper Eq. 4-5). The model walked z_0..z_{K-2}, its own greedy token indices; the target
    at scale si is the nearest code, per position, to the area-resized residual that walk left,
        t_si = Q(S_si(f_D - sum_{i<si} eta_i(z_i))),
    and the inputs come from the walk -> (targets: K maps idx_Bl; f_hats: len(z) partial sums). It is the quantizer's
    loop with z in place of its nearest codes (if z is its decomposition, these are VAR's targets). Its caller
    walk_targets runs it under no_grad: targets are constants of a step, though they move with the weights."""
    with torch.autocast(f_D.device.type, enabled=False):  # as the quantizer: half precision can move the argmin
        rest_BCvhw = f_D.detach().to(quant.embedding.weight.dtype)
        f_hat_BCvhw, targets, f_hats = torch.zeros_like(rest_BCvhw), [], []
        for si, pn in enumerate(quant.patch_nums):
            targets.append(quant.nearest(quant.resample(rest_BCvhw, pn, "area")))
            if si < len(z):
                eta_BCvhw = quant.eta_idx(z[si], si)
                f_hat_BCvhw, rest_BCvhw = f_hat_BCvhw + eta_BCvhw, rest_BCvhw - eta_BCvhw
                f_hats.append(f_hat_BCvhw)
    return targets, f_hats


def greedy(logits_BlV: torch.Tensor, code_VCv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rollout's choice at one scale: the most likely token -> (idx_Bl, its code vectors code_BlCv). For predict,
    any function of this signature may replace it, e.g. a sampler ([release] extension point, section 6). The
    training walk stays greedy (predict's walk, see the top), and dynamic_targets re-sums its picks by index."""
    idx_Bl = logits_BlV.argmax(-1)
    return idx_Bl, code_VCv[idx_Bl]


class DepthART(nn.Module):
    """A VQ-VAE and a VAR transformer that predicts depth tokens after the image prefix. While the transformer
    trains, the VQ-VAE stays fixed: the caller's optimizer holds only var's parameters (see loss), and no gradient
    reaches the VQ-VAE anyway (walk_targets and predict run under no_grad; parallel_logits reads only var)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        if type(self) is DepthART and cfg.variant():  # [repo] extension point, section 6
            raise ValueError(f"{cfg.variant()}: use zoo.build(cfg)")
        self.vae, self.var = VQVAE(cfg), VAR(cfg)
        self.L = cfg.tokens_per_modality
        self.bounds = [sum(pn * pn for pn in cfg.patch_nums[:si]) for si in range(len(cfg.patch_nums) + 1)]

    def encode_image(self, image_B3HW: torch.Tensor) -> torch.Tensor:
        """Image prefix (paper Sec. 3.2) -> latents img_BLCv. Map si is the image's quantized sum after scales
        0..si at side pn: the whole image at each scale's resolution, all of it seen by every depth scale."""
        check_image(image_B3HW, self.cfg)  # [repo]
        # Quantized sums, not the continuous latent: the prefix then lies where the depth inputs lie (resized sums of
        # eta_i(code)), read by the same word_embed, which saw nothing else in VAR-d16's pretraining. The authors'
        # release does too. The paper does not say how the prefix maps are resized; we match the release (bicubic),
        # whose weights expect it. Depth inputs differ on purpose: scale si's sum stops at si - 1 (its own tokens are
        # the ones predicted) and is area-resized, as VAR's. Prefix map si reuses depth scale si's lvl_embed and
        # pos_1LC (VAR-d16 has no modality embedding). What tells them apart is their content (an image's sum through
        # scale si, a depth sum through si - 1) and the mask (VAR.__init__): the prefix sees no depth map.
        _, f_hats = self.vae.quantize(self.vae.encode(normalize_image(image_B3HW)))
        resample = self.vae.quantize.resample
        return torch.cat([resample(f_hat_BCvhw, pn, "bicubic").flatten(2).transpose(1, 2)
                          for f_hat_BCvhw, pn in zip(f_hats, self.cfg.patch_nums)], 1)

    def encode_depth(self, gt_B1HW: torch.Tensor, valid_B1HW: torch.Tensor | None = None) -> torch.Tensor:
        """Ground-truth depth -> its continuous VQ-VAE latent f_D ([repo] extension point, section 6)."""
        return self.vae.encode(normalize_depth(gt_B1HW, valid_B1HW))

    def sequence(self, img_BLCv: torch.Tensor, f_BNCv: torch.Tensor | None, si0: int, si1: int) -> torch.Tensor:
        """The transformer's embedded input for depth scales si0..si1-1 -> x_BNC. From scale 0 the sequence opens with
        the image prefix and the depth start token (scale 0's input); f_BNCv holds the inputs of the later scales
        ([repo] extension point, section 6)."""
        begin, end = self.bounds[max(si0, 1)], self.bounds[si1]
        parts = [self.var.embed(img_BLCv, 0, self.L), self.var.start_token(img_BLCv.shape[0])] if si0 == 0 else []
        if end > begin:
            parts.append(self.var.embed(f_BNCv, begin, end))
        return torch.cat(parts, 1)

    def parallel_logits(self, img_BLCv: torch.Tensor, inputs: list) -> torch.Tensor:
        """One block-causal forward over [image prefix | depth inputs] -> depth logits_BLV; `inputs` are the
        latents that feed scales 1..K-1 (from the VQ-VAE's walk or from the rollout)."""
        f_BNCv = torch.cat([f_BCvhw.flatten(2).transpose(1, 2) for f_BCvhw in inputs], 1)
        x_BNC = self.sequence(img_BLCv, f_BNCv, 0, len(self.cfg.patch_nums))
        return self.var(x_BNC, self.var.prefix_bias_11NN)[:, self.L:]

    def rollout(self, img_BLCv: torch.Tensor, pick=greedy, num_scales: int | None = None):
        """Generation, one scale per transformer call (VAR's next-scale loop), of the first num_scales scales (None:
        all K; the training walk runs K-1, scales 0..K-2) -> (z, f_hats, logits), lists coarse to fine: the token
        maps, the cumulative latents, the logits_BlV. The first call runs the image prefix and the depth start token
        together, unmasked, as mask level 0 allows. Each later call feeds only the new scale, whose keys and values
        join the KV cache; everything a call may attend to is then cached, so no call needs a mask."""
        caches, quant = [dict() for _ in self.var.blocks], self.vae.quantize
        x_BNC = self.sequence(img_BLCv, None, 0, 1)
        z, f_hats, logits = [], [], []
        f_hat_BCvhw = 0  # not a tensor: the sum takes eta's shape, dtype and device from scale 0
        for si, pn in enumerate(self.cfg.patch_nums[:num_scales]):
            if si:  # the sum so far at this scale's side, as next_inputs: training sees the same
                f_BlCv = quant.resample(f_hat_BCvhw, pn, "area").flatten(2).transpose(1, 2)
                x_BNC = self.sequence(img_BLCv, f_BlCv, si, si + 1)
            logits_BlV = self.var(x_BNC, caches=caches)[:, -pn * pn:]
            # code vectors too: a sampler may return vectors that are no codebook row (the release's mean of 5 draws)
            z_si, code_BlCv = pick(logits_BlV, quant.embedding.weight)
            f_hat_BCvhw = f_hat_BCvhw + quant.eta(code_BlCv, si)
            z.append(z_si)
            f_hats.append(f_hat_BCvhw)
            logits.append(logits_BlV)
        return z, f_hats, logits

    @torch.no_grad()
    def walk_targets(self, image_B3HW, gt_B1HW, objective: str = "depthart", valid_B1HW=None):
        """The walk and its targets, without gradients -> (img_BLCv, targets: idx_Bl per scale, the walk's cumulative
        f_hats). "var": teacher forcing, the VQ-VAE walks; "depthart": the model walks."""
        if objective not in ("var", "depthart"):
            raise ValueError(f"unknown objective {objective!r}: expected 'var' or 'depthart'")
        img_BLCv = self.encode_image(image_B3HW)
        f_D = self.encode_depth(gt_B1HW, valid_B1HW)
        if objective == "var":
            return (img_BLCv,) + teacher_forcing_targets(self.vae.quantize, f_D)
        # every step walks afresh with the current weights, scales 0..K-2 (no target depends on the last pick); only
        # the walk's tokens are kept, and dynamic_targets re-sums them in the codebook's precision, so targets and
        # inputs share one arithmetic
        z = self.rollout(img_BLCv, num_scales=len(self.cfg.patch_nums) - 1)[0]
        return (img_BLCv,) + dynamic_targets(self.vae.quantize, f_D, z)

    def logits_and_targets(self, image_B3HW, gt_B1HW, objective: str = "depthart", valid_B1HW=None):
        """Depth logits of one block-causal forward over the walk, with gradients, and their targets -> (logits_BLV,
        idx_BL): for var the VQ-VAE's walk scored; for depthart the logits the walk saw, up to rounding: the walk's
        per-scale cached calls sum in another order than one masked forward, and under autocast the walk's f_hats
        are half-precision sums, where dynamic_targets re-sums its tokens in the codebook's float32."""
        img_BLCv, targets, f_hats = self.walk_targets(image_B3HW, gt_B1HW, objective, valid_B1HW)
        return self.parallel_logits(img_BLCv, self.vae.quantize.next_inputs(f_hats)), torch.cat(targets, 1)

    def loss(self, image_B3HW, gt_B1HW, objective: str = "depthart", valid_B1HW=None):
        """Cross-entropy of the depth tokens of all K scales under one objective -> (loss, stats dict). A training
        step, in outline: opt = AdamW(model.var.parameters()) once; then per batch opt.zero_grad(); loss, _ =
        model.loss(image, depth); loss.backward(); opt.step(). Only var learns: the fixed VQ-VAE defines the tokens.
        The mean weighs every token alike, as VAR's trainer and the authors' release do, so at d16 the finest scale
        (256 of 680 tokens) is 38% of it."""
        logits_BLV, idx_BL = self.logits_and_targets(image_B3HW, gt_B1HW, objective, valid_B1HW)
        loss = F.cross_entropy(logits_BLV.reshape(-1, logits_BLV.shape[-1]), idx_BL.reshape(-1))
        token_acc = (logits_BLV.detach().argmax(-1) == idx_BL).float().mean()
        return loss, {"loss": loss.detach(), "token_acc": token_acc}

    def decode(self, f_hat_BCvhw: torch.Tensor) -> torch.Tensor:
        """One partial sum f_hat -> its relative depth, (B, 1, H, W) in [0, 1] ([repo] extension point)."""
        return depth_from_decoder(self.vae.decode(f_hat_BCvhw))

    def decode_scales(self, f_hats: list) -> torch.Tensor:
        """predict(all_scales) and visualisation (paper Fig. 7): J partial sums f_hat -> the depth after each,
        (B, J, H, W) ([repo] extension point)."""
        J, B = len(f_hats), f_hats[0].shape[0]
        return self.decode(torch.cat(f_hats, 0)).unflatten(0, (J, B)).transpose(0, 1)[:, :, 0]

    @torch.no_grad()
    def predict(self, image_B3HW: torch.Tensor, all_scales: bool = False, pick=greedy) -> torch.Tensor:
        """Image (B, 3, H, W) in [0, 1], H = W = cfg.image_size -> relative depth (B, 1, H, W) in [0, 1] (0 = near);
        all_scales: the depth after every scale (B, K, H, W). pick: greedy, or another choice per scale (see greedy)."""
        f_hats = self.rollout(self.encode_image(image_B3HW), pick)[1]
        return self.decode_scales(f_hats) if all_scales else self.decode(f_hats[-1])


# ----------------------------------------------------------------------------------------------
# 5. [export] The resizes (S_si, eta's upsampling, the prefix's maps) as constant matrix products
# ----------------------------------------------------------------------------------------------
# Every resize of the method uses these (F.interpolate's values up to ~1e-6), so training, inference and the
# exported graphs share one arithmetic that exports: the legacy ONNX exporter rejects uneven area resizes (16 -> 13),
# and a MatMul computes alike in every backend, where TensorRT's cubic Resize need not match PyTorch's.
def resize_matrix(src: int, dst: int, mode: str) -> torch.Tensor:
    """The (dst, src) matrix mat with F.interpolate(x, (dst, dst), mode) == mat @ x @ mat.T: PyTorch's bicubic
    (a = -0.75, align_corners False, clamped borders) and area resizes are separable and linear, so resizing
    an identity matrix along one axis reads mat off."""
    eye = torch.eye(src, dtype=torch.float64)[None, None]  # (1, 1, src, src); float64: mat rounds once, at .float()
    return F.interpolate(eye, size=(dst, src), mode=mode, align_corners=None if mode == "area" else False)[0, 0].float()


class Resampler(nn.Module):
    """mat @ f @ mat.T == F.interpolate(f, (size, size), mode) between the finest side and each coarser one."""

    def __init__(self, patch_nums):
        super().__init__()
        last = patch_nums[-1]
        for pn in patch_nums[:-1]:
            self.register_buffer(f"area_{last}_{pn}", resize_matrix(last, pn, "area"), persistent=False)
            self.register_buffer(f"bicubic_{pn}_{last}", resize_matrix(pn, last, "bicubic"), persistent=False)
            self.register_buffer(f"bicubic_{last}_{pn}", resize_matrix(last, pn, "bicubic"), persistent=False)

    def forward(self, f_BCvhw: torch.Tensor, size: int, mode: str) -> torch.Tensor:
        """F.interpolate(f, (size, size), mode) as mat @ f @ mat.T; f itself where it has that side already."""
        src = f_BCvhw.shape[-1]
        if src == size:
            return f_BCvhw
        mat = getattr(self, f"{mode}_{src}_{size}")  # (size, src)
        return mat @ f_BCvhw @ mat.T


# ----------------------------------------------------------------------------------------------
# 6. [repo] Not the method: extension points, the release's differences, checks, VAR's initialization
# ----------------------------------------------------------------------------------------------
# This repository's small CPU models start from random weights, so they train in three stages: 1. the VQ-VAE; then,
# with it frozen, 2. the transformer by teacher forcing (loss(..., "var")); 3. by DepthART (loss(..., "depthart"))
# from stage 2's weights. Their presets, variants, stage-1 loss and checkpoints are zoo.py's; training and export
# are the tools'.
# Extension points (Config.variant, encode_depth, decode, decode_scales, sequence, normalize_qk, a rollout's pick)
# serve zoo.py's variants, which its docstring lists; the paper's model uses none.
# Differences from the authors' release (github bulatko/DepthART; zoo.py reproduces each). The paper's objective,
# and `loss`, is the cross-entropy of all K scales' depth tokens, and nothing else. The release:
#   evaluates by sampling: per token, the mean code of 5 draws from the top-900 logits cut to top-p 0.9 (no
#   codebook row); the paper does not say how it picks, and predict is greedy.
#   attends plainly (its cos_attn False): softmax(q k^T / sqrt(c) / tau), tau 4, on raw q and k; its weights,
#   fine-tuned without scale_mul_1H11, expect it.
#   trains (rec_loss True) with the cross-entropy of scales 0..K-2 only. Its code also computes 10 x MSE(f_hat, f_D)
#   of a Gumbel-softmax completion of the last scale but never adds it to the loss (and as published, that path
#   does not even run).
def check_config(cfg: Config):
    """Config.__post_init__: tuples for a Config read back from a checkpoint's JSON; one clear error for a bad one."""
    cfg.patch_nums, cfg.vae_ch_mult = tuple(cfg.patch_nums), tuple(cfg.vae_ch_mult)
    down = 2 ** (len(cfg.vae_ch_mult) - 1)
    if cfg.image_size != cfg.patch_nums[-1] * down:
        raise ValueError(f"image_size {cfg.image_size} must equal last patch_num {cfg.patch_nums[-1]} "
                         f"x VQ-VAE downsampling {down}")
    if cfg.width % cfg.heads:
        raise ValueError(f"width {cfg.width} is not divisible by heads {cfg.heads}")


def check_image(image_B3HW: torch.Tensor, cfg: Config):
    """DepthART.encode_image: a clear error, not a shape mismatch deep inside."""
    H = cfg.image_size
    if image_B3HW.ndim != 4 or tuple(image_B3HW.shape[1:]) != (3, H, H):
        raise ValueError(f"expected images of shape (B, 3, {H}, {H}) in [0, 1] for this model, "
                         f"got {tuple(image_B3HW.shape)}; resize it to {H}x{H} first")


def check_depth(depth_B1HW: torch.Tensor, q98_B: torch.Tensor):
    """normalize_depth: one clear line for depth it cannot normalize, not NaN tokens far downstream."""
    if not torch.isfinite(depth_B1HW).all():
        raise ValueError("depth contains NaN or inf: fill invalid pixels and pass a `valid` mask instead")
    bad_B = ~(torch.isfinite(q98_B) & (q98_B > 0))
    if bad_B.any():
        raise ValueError(f"depth maps {bad_B.nonzero().flatten().tolist()} are (mostly) zero or negative, or have "
                         "no valid pixel: nothing to normalize")


def init_from_scratch(var: VAR, adaln=0.5, adaln_gamma=1e-5, head=0.02):
    """VAR's initialization (and its default factors), for training from scratch: the gamma rows of ada_lin are
    scaled by 1e-5, so every residual branch starts near 0 and a deep stack as the identity."""
    std = math.sqrt(1 / var.cfg.width / 3)
    for m in var.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    nn.init.trunc_normal_(var.pos_start, std=std)
    nn.init.trunc_normal_(var.pos_1LC, std=std)
    with torch.no_grad():
        var.head.weight.mul_(head)
        var.head_nm.ada_lin[-1].weight.mul_(adaln)
        for b in var.blocks:
            b.attn.proj.weight.div_(math.sqrt(2 * var.cfg.depth))
            b.ffn.fc2.weight.div_(math.sqrt(2 * var.cfg.depth))
            ada_6CC = b.ada_lin[-1].weight.view(6, var.cfg.width, -1)  # gamma1, gamma2, scales, shifts
            ada_6CC[2:].mul_(adaln)
            ada_6CC[:2].mul_(adaln_gamma)
