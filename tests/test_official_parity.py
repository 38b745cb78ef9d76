"""Parity with the official VAR code (github.com/FoundationVision/VAR) and the official DepthART code
(github.com/bulatko/DepthART), given the same weights.

Parts 1-3 run only when VAR_REPO points at a checkout of VAR, part 4 only when DEPTHART_REPO points at a
checkout of DepthART; both are imported from there at test time and never copied into ours:

    VAR_REPO=/path/to/VAR DEPTHART_REPO=/path/to/DepthART python -m pytest -q tests/test_official_parity.py -s

Both sides get the same random weights, perturbed so that nothing is trivially an identity (AdaLN
gammas of order 1 instead of 1e-5, nonzero biases, random Phi convolutions, random GroupNorm affines,
a codebook at the scale of the encoder's features), copied from the official state dict into ours
with `zoo.load_weights` (strict). With -s every comparison prints its max abs difference and
the scale of the reference values.

  1. VQ-VAE (the real vae_ch160v4096z32 structure, one 256x256 image, float64): encoder features,
     tokens at every scale (exact), cumulative f_hat per scale, teacher-forcing inputs, and the
     reconstructions (`idxBl_to_img` in float32: it builds its f_hat in float32 whatever the weights).
  2. Transformer (a depth-2, width-256 VAR with the d16 schedule and vocabulary, float64): every
     block's output and the logits for the same x_BLC, null-class condition and block-causal mask;
     the official `VAR.forward` (teacher forcing, float32: it casts to float32 inside) against our
     pure-VAR path; the d16 state dict loads strictly into ours with identical keys, shapes, dtypes.
  3. The official cached sampler (greedy: top_k=1, cfg=0, null class) against a greedy cached loop
     over our blocks (float32, as the official sampler runs).
  4. The DepthART release: the official model class (depth 2, width 256, 4 heads, plain attention, the d16
     schedule and vocabulary, a real VQ-VAE of width 64) with lively random weights, saved as its training
     does (safetensors.torch.save_model) and loaded by zoo.load. Greedy tokens at every scale
     against DepthVAR.autoregressive_infer_cfg (exact), depth within 1e-4, and the release sampler's draws
     against DepthART.autoregressive_infer_cfg under the same generator state (exact), float32.
"""
import os
import sys
import time
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import depthart as D
import zoo as Z

VAR_REPO = os.environ.get("VAR_REPO")
DEPTHART_REPO = os.environ.get("DEPTHART_REPO")
if not (VAR_REPO or DEPTHART_REPO):
    pytest.skip("neither VAR_REPO nor DEPTHART_REPO is set: point them at checkouts of github.com/FoundationVision/VAR "
                "and github.com/bulatko/DepthART to compare depthart.py with the official code", allow_module_level=True)
if VAR_REPO and not ((Path(VAR_REPO) / "models" / "var.py").is_file() and (Path(VAR_REPO) / "dist.py").is_file()):
    pytest.fail(f"VAR_REPO={VAR_REPO!r} is not a checkout of FoundationVision/VAR "
                "(no models/var.py and dist.py there)", pytrace=False)
RELEASE_CODE = Path(DEPTHART_REPO or ".") / "mde" / "models" / "train_models" / "var_utils"
if DEPTHART_REPO and not (RELEASE_CODE / "depthart.py").is_file():
    pytest.fail(f"DEPTHART_REPO={DEPTHART_REPO!r} is not a checkout of bulatko/DepthART (no {RELEASE_CODE}/depthart.py)",
                pytrace=False)
needs_var = pytest.mark.skipif(not VAR_REPO, reason="VAR_REPO is not set")
needs_depthart = pytest.mark.skipif(not DEPTHART_REPO, reason="DEPTHART_REPO is not set")


def _with_hub_stub(do_import):
    """The official models import huggingface_hub only for a mixin we never use: stub it if absent."""
    try:
        import huggingface_hub  # noqa: F401
        return do_import()
    except ImportError:
        stub = types.ModuleType("huggingface_hub")
        stub.PyTorchModelHubMixin = type("PyTorchModelHubMixin", (), {})
        sys.modules["huggingface_hub"] = stub
        try:
            return do_import()
        finally:
            del sys.modules["huggingface_hub"]


def _import_official():
    """The official modules do `import dist` and `from models import ...` from their repository root."""
    sys.path.insert(0, str(Path(VAR_REPO).resolve()))

    def do_import():
        import models.var
        from models.var import VAR
        from models.vqvae import VQVAE
        return models.var, VAR, VQVAE
    module, VAR, VQVAE = _with_hub_stub(do_import)
    where = Path(module.__file__).resolve()
    assert Path(VAR_REPO).resolve() in where.parents, f"imported another `models` package: {where}"
    return module, VAR, VQVAE


def _import_release():
    """The DepthART modules, without running the `mde` packages' __init__ files (they import the training
    stack: rocket, datasets, launchers): those packages are registered empty, with their real paths."""
    root = Path(DEPTHART_REPO).resolve()
    for name in ("mde", "mde.models", "mde.models.train_models", "mde.capsules"):
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(root.joinpath(*name.split(".")))]
            sys.modules[name] = pkg
    sys.path.insert(0, str(root))

    def do_import():
        from mde.capsules.normalizers.normalizers import NormalizerUTSQuant
        from mde.models.train_models.var_utils import depthart, depth_var, vqvae
        return depthart, depth_var.DepthVAR, vqvae.VQVAE, NormalizerUTSQuant
    mods = _with_hub_stub(do_import)
    assert root in Path(mods[0].__file__).resolve().parents
    return mods


official_var_module, OfficialVAR, OfficialVQVAE = _import_official() if VAR_REPO else (None,) * 3
pytestmark = pytest.mark.filterwarnings("ignore:`torch.cuda.amp.autocast:FutureWarning")  # the official forward's

PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
NULL_CLASS = 1000
# Relative tolerances (max abs diff / max abs official value)
F64 = 1e-12        # both sides in float64
F64_CLAMPED = 1e-7  # float64 attention with a head above the temperature clamp: the official clamp value is
#                     log(100) rounded to float32 (torch.log(torch.tensor(100)).item()), 6.4e-8 above ours;
#                     in float32, the only precision the official code runs in, both clamp at the same value
F32 = 1e-5         # one side computes in float32
F32_DECODER = 5e-5  # the float32 decoder (30 convolutions) is itself ~6e-6 from its float64 result


def check(name: str, got: torch.Tensor, ref: torch.Tensor, rtol: float):
    """Assert max|got - ref| <= rtol * max|ref| and print both, so -s shows every comparison."""
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} vs official {tuple(ref.shape)}"
    diff = (got.double() - ref.double()).abs().max().item()
    scale = ref.double().abs().max().item()
    print(f"  {name:<58} max|diff| {diff:9.2e}   max|official| {scale:9.2e}   ({got.dtype}, {ref.dtype})")
    assert diff <= rtol * scale, f"{name}: max abs diff {diff:.3e} exceeds {rtol:g} x {scale:.3e}"


def signature(module: nn.Module) -> dict:
    return {k: (tuple(v.shape), v.dtype) for k, v in module.state_dict().items()}


def official_vqvae(ch: int) -> nn.Module:
    """The official VQ-VAE with PyTorch's default init (random convs, nonzero biases), test mode."""
    return OfficialVQVAE(vocab_size=4096, z_channels=32, ch=ch, test_mode=True, share_quant_resi=4,
                         v_patch_nums=PATCH_NUMS)


@torch.no_grad()
def perturb_vqvae(vae: nn.Module, code_std: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    for m in vae.modules():
        if isinstance(m, nn.GroupNorm):
            m.weight.normal_(1, 0.2, generator=g)
            m.bias.normal_(0, 0.2, generator=g)
    for phi in vae.quantize.quant_resi.qresi_ls:
        phi.weight.normal_(0, 0.05, generator=g)
        phi.bias.normal_(0, 0.05, generator=g)
    vae.quantize.embedding.weight.normal_(0, code_std, generator=g)


@torch.no_grad()
def perturb_var(var: nn.Module, seed: int):
    g = torch.Generator().manual_seed(seed)
    for p in var.parameters():
        p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)  # nonzero biases everywhere
    for lin in [b.ada_lin[-1] for b in var.blocks] + [var.head_nm.ada_lin[-1]]:
        lin.bias.normal_(0, 0.5, generator=g)  # gammas, scales and shifts of order 1, not 1e-5
    var.class_emb.weight.normal_(0, 1, generator=g)
    var.head.weight.normal_(0, 0.1, generator=g)
    heads = var.blocks[0].attn.scale_mul_1H11.shape[1]
    temps = torch.tensor([2.0, 10.0, 50.0, 150.0]).repeat(heads)[:heads]  # 150: above the clamp at 100
    for b in var.blocks:
        b.attn.scale_mul_1H11.copy_(temps.log().view(1, heads, 1, 1))


# ------------------------------------------------------------------------------------------------
# 1. VQ-VAE: the real d16 structure (vae_ch160v4096z32) on one 256x256 image
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vae_run():
    t0 = time.perf_counter()
    torch.manual_seed(0)
    official = official_vqvae(ch=160)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # codebook at the scale of the features (probed on a cheap 64x64 input)
        probe = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
        code_std = official.quant_conv(official.encoder(probe)).std().item()
    perturb_vqvae(official, code_std, seed=2)
    ours = D.VQVAE(D.Config.d16()).eval()
    assert signature(ours) == signature(official), "VQ-VAE state dict keys, shapes or dtypes differ"
    Z.load_weights(ours, official.state_dict(), "official VQVAE state dict")

    # A smooth image plus noise, in [-1, 1]
    x = F.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(256, 256), mode="bicubic", align_corners=False)
    x = (x + 0.2 * torch.rand(1, 3, 256, 256, generator=g)).clamp(0, 1) * 2 - 1
    official.double(), ours.double()
    x = x.double()
    r = {}
    captured = {}
    hook = official.quant_conv.register_forward_hook(lambda m, inp, out: captured.__setitem__("f", out))
    with torch.no_grad():
        r["idx_off"] = official.img_to_idxBl(x)  # the encoder runs once: its features come from the hook
        hook.remove()
        r["f_off"] = captured["f"]
        r["f_ours"] = ours.encode(x)
        r["idx_ours"] = ours.quantize(r["f_ours"])[0]
        r["fhats_off"] = official.quantize.f_to_idxBl_or_fhat(r["f_off"], to_fhat=True)
        r["fhats_ours"] = ours.quantize(r["f_ours"])[1]
        r["tf_off"] = official.quantize.idxBl_to_var_input(r["idx_off"])
        r["tf_ours"] = torch.cat([f.flatten(2).transpose(1, 2) for f in ours.quantize.next_inputs(r["fhats_ours"])], 1)
        r["phi_off"] = [official.quantize.quant_resi[si / (len(PATCH_NUMS) - 1)] for si in range(len(PATCH_NUMS))]
        r["phi_ours"] = [official.quantize.quant_resi.qresi_ls[i] for i in ours.quantize.phi_of_scale]
        r["img_fhat_off"] = official.fhat_to_img(r["fhats_off"][-1])
        r["img_ours"] = ours.decode(sum(ours.quantize.eta_idx(i, si) for si, i in enumerate(r["idx_ours"]))).clamp(-1, 1)
        # The official idxBl_to_img sums its f_hat in float32 whatever the weights: run it in float32.
        official.float()
        r["img_idx_off"] = official.idxBl_to_img(r["idx_off"], same_shape=True, last_one=True)
    print(f"\n  [VQ-VAE d16 on 1x3x256x256: built, encoded, quantized and decoded in {time.perf_counter() - t0:.1f} s]")
    return r


@needs_var
def test_vqvae_encoder_features(vae_run):
    check("VQ-VAE encoder features quant_conv(encoder(x)) [f64]", vae_run["f_ours"], vae_run["f_off"], F64)


@needs_var
def test_vqvae_phi_of_each_scale_is_the_official_one(vae_run):
    assert all(a is b for a, b in zip(vae_run["phi_ours"], vae_run["phi_off"]))


@needs_var
def test_vqvae_tokens_at_every_scale_are_identical(vae_run):
    differ = []
    for si, (a, b) in enumerate(zip(vae_run["idx_ours"], vae_run["idx_off"])):
        assert a.shape == b.shape and a.dtype == b.dtype, (si, a.shape, b.shape, a.dtype, b.dtype)
        differ.append(int((a != b).sum()))
    uniques = [int(b.unique().numel()) for b in vae_run["idx_off"]]
    print(f"  tokens img_to_idxBl vs decompose(encode(x)): differing per scale {differ} "
          f"of {[pn * pn for pn in PATCH_NUMS]}; distinct official codes per scale {uniques}")
    assert uniques[-1] > 50, "degenerate test: the finest scale uses almost no distinct codes"
    assert sum(differ) == 0


@needs_var
def test_vqvae_cumulative_fhat_per_scale(vae_run):
    for si, (a, b) in enumerate(zip(vae_run["fhats_ours"], vae_run["fhats_off"])):
        check(f"f_hat after scale {si} (pn {PATCH_NUMS[si]}) [f64]", a, b, F64)


@needs_var
def test_vqvae_teacher_forcing_inputs(vae_run):
    # The official idxBl_to_var_input accumulates in float32; ours stays in float64.
    check("teacher-forcing input idxBl_to_var_input [f32] vs next_inputs [f64]", vae_run["tf_ours"],
          vae_run["tf_off"], F32)


@needs_var
def test_vqvae_reconstructions(vae_run):
    check("reconstruction fhat_to_img vs decode(rebuild(idx)) [f64]", vae_run["img_ours"], vae_run["img_fhat_off"], F64)
    check("reconstruction idxBl_to_img [f32] vs decode(rebuild(idx)) [f64]", vae_run["img_ours"],
          vae_run["img_idx_off"], F32_DECODER)


# ------------------------------------------------------------------------------------------------
# 2. Transformer: a small VAR (depth 2, width 256, 4 heads) with the d16 schedule and vocabulary
# ------------------------------------------------------------------------------------------------
def build_small_pair(dtype: torch.dtype):
    """Official and our (VQ-VAE, VAR) with the same weights. The VQ-VAE (ch 32) only lends the VAR its
    codebook and Phi convolutions; the transformer is VAR's with depth 2, width 256, 4 heads."""
    torch.manual_seed(3)
    cfg = D.Config(vae_ch=32, depth=2, width=256, heads=4)
    vae_off = official_vqvae(ch=32)
    perturb_vqvae(vae_off, code_std=1.0, seed=4)
    var_off = OfficialVAR(vae_off, num_classes=1000, depth=cfg.depth, embed_dim=cfg.width, num_heads=cfg.heads,
                          attn_l2_norm=True, shared_aln=False, cond_drop_rate=0.0, patch_nums=PATCH_NUMS,
                          flash_if_available=False, fused_if_available=False)
    var_off.init_weights(init_std=-1)  # as models.build_vae_var
    perturb_var(var_off, seed=5)
    vae_ours, var_ours = D.VQVAE(cfg).eval(), D.VAR(cfg).eval()
    Z.load_weights(vae_ours, vae_off.state_dict(), "official small VQVAE state dict")
    Z.load_weights(var_ours, var_off.state_dict(), "official small VAR state dict")
    return [m.to(dtype).eval() for m in (vae_off, var_off, vae_ours, var_ours)]


@needs_var
@torch.no_grad()
def test_transformer_blocks_and_logits():
    _, var_off, _, var_ours = build_small_pair(torch.float64)
    B, L, C = 2, sum(pn * pn for pn in PATCH_NUMS), var_ours.cfg.width
    x_BLC = torch.randn(B, L, C, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    bias = var_off.attn_bias_for_masking
    assert torch.equal(var_ours.attn_bias_for_masking, bias) and torch.equal(var_ours.lvl_1L, var_off.lvl_1L)
    cond_off = var_off.class_emb(torch.full((B,), NULL_CLASS))
    check("condition class_emb(1000) vs cond(B) [f64]", var_ours.cond(B), cond_off, 0.0)
    h_off = h_ours = x_BLC
    for i, (b_off, b_ours) in enumerate(zip(var_off.blocks, var_ours.blocks)):
        h_off = b_off(x=h_off, cond_BD=cond_off, attn_bias=bias)
        h_ours = b_ours(h_ours, var_ours.cond(B), bias)
        check(f"block {i} output [f64]", h_ours, h_off, F64_CLAMPED)
    logits_off = var_off.head(var_off.head_nm(h_off, cond_off))
    check("logits head(head_nm(x)) [f64]", var_ours.head(var_ours.head_nm(h_ours, var_ours.cond(B))), logits_off,
          F64_CLAMPED)
    check("logits VAR.forward (returns float32) vs official [f64]", var_ours(x_BLC, bias), logits_off, F32)

    # With every head's temperature below the clamp, float64 blocks agree to rounding.
    for b in list(var_off.blocks) + list(var_ours.blocks):
        b.attn.scale_mul_1H11.clamp_(max=torch.tensor(90.0).log().item())
    h_off = var_off.blocks[0](x=x_BLC, cond_BD=cond_off, attn_bias=bias)
    check("block 0 output, all temperatures below the clamp [f64]", var_ours.blocks[0](x_BLC, var_ours.cond(B), bias),
          h_off, F64)


@needs_var
@torch.no_grad()
def test_official_forward_with_teacher_forcing_equals_our_pure_var_path():
    """VAR.forward(label 1000, teacher-forcing input) vs start_token + embed + VAR(x, block-causal mask).
    (DepthART puts an image prefix in front; this compares the VAR part alone.) float32: the official
    forward casts its inputs and the head's to float32."""
    vae_off, var_off, vae_ours, var_ours = build_small_pair(torch.float32)
    B, L = 2, var_ours.cfg.tokens_per_modality
    g = torch.Generator().manual_seed(7)
    idx = [torch.randint(0, 4096, (B, pn * pn), generator=g) for pn in PATCH_NUMS]
    tf_off = vae_off.quantize.idxBl_to_var_input(idx)
    f_hats, f_hat = [], 0
    for si, idx_Bl in enumerate(idx):
        f_hat = f_hat + vae_ours.quantize.eta_idx(idx_Bl, si)
        f_hats.append(f_hat)
    tf_ours = torch.cat([f.flatten(2).transpose(1, 2) for f in vae_ours.quantize.next_inputs(f_hats)], 1)
    check("teacher-forcing input, random tokens [f32]", tf_ours, tf_off, F32)

    logits_off = var_off(torch.full((B,), NULL_CLASS), tf_off)
    x_BLC = torch.cat((var_ours.start_token(B), var_ours.embed(tf_off, 1, L)), 1)
    logits_ours = var_ours(x_BLC, var_ours.attn_bias_for_masking)
    check("logits official VAR.forward vs ours [f32]", logits_ours, logits_off, F32)
    assert torch.equal(logits_ours.argmax(-1), logits_off.argmax(-1))


@needs_var
def test_d16_state_dict_loads_strictly_with_identical_keys_shapes_dtypes(monkeypatch):
    # Names, shapes and dtypes only: skip the 310M-parameter initialization (build_vae_var does the
    # same for speed); ours is built on the meta device.
    for clz in (nn.Linear, nn.LayerNorm, nn.Conv2d):
        monkeypatch.setattr(clz, "reset_parameters", lambda self: None)
    vae_off = official_vqvae(ch=32)  # lends only Cvae, vocab_size and the quantizer
    var_off = OfficialVAR(vae_off, num_classes=1000, depth=16, embed_dim=1024, num_heads=16, attn_l2_norm=True,
                          shared_aln=False, patch_nums=PATCH_NUMS, flash_if_available=False, fused_if_available=False)
    with torch.device("meta"):
        var_ours = D.VAR(D.Config.d16())
    sig_off, sig_ours = signature(var_off), signature(var_ours)
    print(f"  d16 VAR state dict: {len(sig_off)} official keys, {len(sig_ours)} ours, "
          f"{sum(v.numel() for v in var_off.parameters()) / 1e6:.1f}M parameters")
    assert sig_ours == sig_off
    Z.load_weights(var_ours, {k: v.to("meta") for k, v in var_off.state_dict().items()}, "official d16 VAR")


# ------------------------------------------------------------------------------------------------
# 3. The official cached sampler, greedy, against a greedy cached loop over our blocks
# ------------------------------------------------------------------------------------------------
@needs_var
@torch.no_grad()
def test_official_greedy_cached_sampler_equals_our_cached_loop(monkeypatch):
    """autoregressive_infer_cfg(top_k=1, cfg=0, label 1000) doubles the batch for guidance; with ratio 0
    the guided logits are the conditional ones, so it is a greedy cached rollout of the null class."""
    vae_off, var_off, vae_ours, var_ours = build_small_pair(torch.float32)
    B, pns = 2, PATCH_NUMS
    seen = {"idx": [], "logits": [], "f_hat": None}
    sample = official_var_module.sample_with_top_k_top_p_

    def recording_sample(logits_BlV, **kw):
        seen["logits"].append(logits_BlV.clone())
        out = sample(logits_BlV, **kw)
        seen["idx"].append(out[:, :, 0].clone())
        return out

    def keep_fhat(f_hat):  # skip the decoder: compare the latent the sampler would decode
        seen["f_hat"] = f_hat.clone()
        return f_hat.clone()

    monkeypatch.setattr(official_var_module, "sample_with_top_k_top_p_", recording_sample)
    monkeypatch.setattr(vae_off, "fhat_to_img", keep_fhat)
    var_off.autoregressive_infer_cfg(B=B, label_B=NULL_CLASS, g_seed=None, cfg=0.0, top_k=1, top_p=0.0)

    quant, caches = vae_ours.quantize, [dict() for _ in var_ours.blocks]
    bounds = [0]
    for pn in pns:
        bounds.append(bounds[-1] + pn * pn)
    x_BlC, f_hat = var_ours.start_token(B), 0
    for si, pn in enumerate(pns):
        logits_BlV = var_ours(x_BlC, None, caches)[:, -pn * pn:]
        idx_Bl = logits_BlV.argmax(-1)
        check(f"sampler scale {si}: logits (official: conditional half)", logits_BlV, seen["logits"][si], F32)
        assert torch.equal(idx_Bl, seen["idx"][si]), f"greedy tokens differ at scale {si}"
        f_hat = f_hat + quant.eta_idx(idx_Bl, si)
        if si + 1 < len(pns):
            nxt = quant.resample(f_hat, pns[si + 1], "area").flatten(2).transpose(1, 2)
            x_BlC = var_ours.embed(nxt, bounds[si + 1], bounds[si + 2])
    check("sampler final f_hat", f_hat, seen["f_hat"], F32)
    print(f"  sampler: greedy tokens identical at all {len(pns)} scales; "
          f"distinct tokens at the finest scale {int(seen['idx'][-1].unique().numel())}")


# ------------------------------------------------------------------------------------------------
# 4. The DepthART release: its model class, saved as its training saves, loaded by our one loader
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def release_run(tmp_path_factory):
    """Build the official DepthART (its eval config's structure at a small size), give it lively weights,
    save it with safetensors.torch.save_model, load it with zoo.load, run both sides."""
    import safetensors.torch
    t0 = time.perf_counter()
    depthart_mod, OffDepthVAR, OffVQVAE, Normalizer = _import_release()
    torch.manual_seed(8)
    vae = OffVQVAE(vocab_size=4096, v_patch_nums=PATCH_NUMS,
                   ddconfig=dict(dropout=0.0, z_channels=32, num_res_blocks=2, in_channels=3, ch=64,
                                 ch_mult=[1, 1, 2, 2, 4], using_mid_sa=True, using_sa=True),
                   quantconfig=dict(using_znorm=False, beta=0.25,
                                    resiconfig=dict(quant_resi=0.5, share_quant_resi=4, default_qresi_counts=0)))
    off = depthart_mod.DepthART(
        vae_local=vae, num_classes=1000, patch_nums=PATCH_NUMS, embed_dim=256, depth=2, shared_aln=False,
        cond_drop_rate=0.1, drop_path_rate=0.0667, rec_loss=True, normalizer=Normalizer(affine=True, alpha=2, beta=-1),
        BlockConfig=dict(num_heads=4, mlp_ratio=4, drop=0, attn_drop=0, tau=4, cos_attn=False)).eval()
    g = torch.Generator().manual_seed(9)
    image = torch.rand(2, 3, 256, 256, generator=g)
    with torch.no_grad():
        code_std = vae.quant_conv(vae.encoder(image * 2 - 1)).std().item()
        perturb_vqvae(vae, code_std, seed=10)
    lively_release(off, seed=11)
    path = tmp_path_factory.mktemp("release") / "model.safetensors"
    safetensors.torch.save_model(off, str(path))
    ours = Z.load(path)
    r = {"path": path, "cfg": ours.cfg}

    logits = []
    get_logits = off.get_logits
    off.get_logits = lambda *a, **k: logits.append(get_logits(*a, **k)) or logits[-1]
    draws = []
    sample = depthart_mod.sample_with_top_k_top_p_
    depthart_mod.sample_with_top_k_top_p_ = lambda *a, **k: draws.append(sample(*a, **k)) or draws[-1]
    try:
        with torch.no_grad():
            r["greedy_off"] = OffDepthVAR.autoregressive_infer_cfg(off, B=2, image=image).mean(1, keepdim=True)
            r["tokens_off"] = [lg.argmax(-1) for lg in logits]
            torch.manual_seed(12)
            r["sampled_off"] = off.autoregressive_infer_cfg(B=2, image=image).mean(1, keepdim=True)
            r["draws_off"] = draws
    finally:
        depthart_mod.sample_with_top_k_top_p_ = sample
    with torch.no_grad():
        img = ours.encode_image(image)
        r["tokens_ours"], f_hats, r["logits_ours"] = ours.rollout(img)
        r["logits_off"] = logits[:len(PATCH_NUMS)]
        r["greedy_ours"] = ours.decode_scales(f_hats[-1:])
        r["draws_ours"], f_hats, _ = ours.rollout(img, Z.release_sampler(torch.Generator().manual_seed(12)))
        r["sampled_ours"] = ours.decode_scales(f_hats[-1:])
    print(f"\n  [DepthART release (depth 2, width 256, VQ-VAE ch 64): built, saved, loaded, run in "
          f"{time.perf_counter() - t0:.1f} s]")
    return r


@torch.no_grad()
def lively_release(off: nn.Module, seed: int):
    """Weights far from VAR's near-identity init: every transformer parameter perturbed, AdaLN gammas of order 1,
    distinct position embeddings, and a head sharp enough that top-k and then top-p both remove codes."""
    g = torch.Generator().manual_seed(seed)
    for name, p in off.named_parameters():
        if not name.startswith("vae_proxy."):
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    for lin in [b.ada_lin[-1] for b in off.blocks] + [off.head_nm.ada_lin[-1]]:
        lin.bias.normal_(0, 0.5, generator=g)
    off.class_emb.weight.normal_(0, 1, generator=g)
    off.pos_1LC.normal_(0, 1, generator=g)
    off.lvl_embed.weight.normal_(0, 1, generator=g)
    off.head.weight.normal_(0, 0.15, generator=g)


@needs_depthart
def test_release_file_is_recognised_and_loads(release_run):
    cfg = release_run["cfg"]
    assert (cfg.attention, cfg.depth, cfg.width, cfg.heads, cfg.vae_ch) == ("plain", 2, 256, 4, 64)
    import safetensors
    with safetensors.safe_open(str(release_run["path"]), "pt") as f:
        keys = set(f.keys())
    print(f"  saved file: {len(keys)} tensors; quantizer under "
          f"{'vae_proxy.quantize.' if 'vae_proxy.quantize.embedding.weight' in keys else 'vae_quant_proxy.'}")


@needs_depthart
def test_release_greedy_tokens_and_depth_equal_the_official_greedy_decoder(release_run):
    r = release_run
    for si, (a, b) in enumerate(zip(r["tokens_ours"], r["tokens_off"])):
        check(f"release greedy logits, scale {si}", r["logits_ours"][si], r["logits_off"][si], F32)
        assert torch.equal(a, b), f"greedy tokens differ at scale {si}: {int((a != b).sum())} of {a.numel()}"
    print(f"  greedy tokens identical at all {len(PATCH_NUMS)} scales; distinct at the finest "
          f"{int(r['tokens_off'][-1].unique().numel())}")
    diff = (r["greedy_ours"] - r["greedy_off"]).abs().max().item()
    print(f"  greedy depth max|ours - official| {diff:.2e}")
    assert diff <= 1e-4


@needs_depthart
def test_release_sampler_draws_equal_the_official_sampler(release_run):
    r = release_run
    for si, (a, b) in enumerate(zip(r["draws_ours"], r["draws_off"])):
        assert a.shape == b.shape, (si, a.shape, b.shape)
        assert torch.equal(a, b), f"sampled tokens differ at scale {si}: {int((a != b).sum())} of {a.numel()}"
    greedy = r["tokens_off"][-1][..., None]
    off_argmax = (r["draws_off"][-1] != greedy).float().mean().item()
    print(f"  release sampler: draws identical at all {len(PATCH_NUMS)} scales; at the finest scale "
          f"{off_argmax:.0%} of the draws differ from the argmax")
    assert off_argmax > 0.05, "degenerate test: the sampler almost always draws the argmax"
    diff = (r["sampled_ours"] - r["sampled_off"]).abs().max().item()
    print(f"  sampled depth max|ours - official| {diff:.2e}")
    assert diff <= 1e-4
