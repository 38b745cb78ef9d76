"""Tests of depthart.py: the pieces the method's correctness rests on, all on the CPU."""
import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import benchmark
import depthart as D
import zoo as Z

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def lively(model: D.DepthART, seed: int = 0) -> D.DepthART:
    """Random weights with real residual branches: VAR's init makes every block ~identity (gamma 1e-5),
    which would let a masking or caching bug hide behind tiny activations."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for b in model.var.blocks:
            b.ada_lin[-1].weight.normal_(0, 0.05)
            b.ada_lin[-1].bias.normal_(0, 0.3)
        model.var.head.weight.normal_(0, 0.2)
        model.var.pos_1LC.normal_(0, 0.5)
        if model.cfg.image_shortcut:
            model.var.image_shortcut.weight.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return lively(Z.build(Z.preset("tiny")))


def batch(B=2, S=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(B, 3, S, S, generator=g)
    yy = torch.linspace(1, 4, S).view(1, 1, S, 1)
    depth = yy + torch.rand(B, 1, 1, S, generator=g)  # a ramp with per-column offsets
    return image, depth.expand(B, 1, S, S).contiguous()


# --- resampling matrices ------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [D.Config.d16(), Z.preset("tiny")], ids=["d16", "tiny"])
def test_resize_matrices_equal_interpolate_for_every_pair_of_scales(cfg):
    for src in cfg.patch_nums:
        x = torch.randn(2, 3, src, src)
        for dst in cfg.patch_nums:
            for mode in ("bicubic", "area"):
                M = D.resize_matrix(src, dst, mode)
                kwargs = {"align_corners": False} if mode == "bicubic" else {}
                ref = F.interpolate(x, size=(dst, dst), mode=mode, **kwargs)
                assert (M @ x @ M.T - ref).abs().max() < 1e-5, (src, dst, mode)


def test_resampler_holds_every_resize_the_model_uses(tiny):
    rs, last = tiny.vae.quantize.resample, tiny.cfg.patch_nums[-1]
    f = torch.randn(1, 32, last, last)
    for pn in tiny.cfg.patch_nums:
        assert torch.allclose(rs(f, pn, "area"), F.interpolate(f, (pn, pn), mode="area"), atol=1e-5)
        small = torch.randn(1, 32, pn, pn)
        assert torch.allclose(rs(small, last, "bicubic"), F.interpolate(small, (last, last), mode="bicubic"), atol=1e-5)


# --- quantizer ---------------------------------------------------------------------------------
def test_phi_schedule_matches_official_table():
    assert D.phi_schedule(10, 4) == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]


def test_quantizer_round_trip_reduces_error_scale_by_scale():
    torch.manual_seed(0)
    cfg = Z.preset("tiny")
    vae = D.VQVAE(cfg)
    f = F.interpolate(torch.randn(4, 32, 4, 4), size=(8, 8), mode="bilinear") + 0.3 * torch.randn(4, 32, 8, 8)
    with torch.no_grad():  # a codebook with codes of every length (coarse and fine residuals), Phi = identity
        vae.quantize.embedding.weight.copy_(torch.randn(cfg.vocab_size, 32) * torch.rand(cfg.vocab_size, 1))
        for phi in vae.quantize.quant_resi.qresi_ls:
            phi.weight.zero_(), phi.bias.zero_()
            phi.weight[range(32), range(32), 1, 1] = 1.0
        idx = vae.quantize(f)[0]
        etas = [vae.quantize.eta_idx(idx_Bl, si) for si, idx_Bl in enumerate(idx)]
        errors = [(f - sum(etas[: k + 1])).square().mean().item() for k in range(len(idx))]
    assert [i.shape[1] for i in idx] == [pn * pn for pn in cfg.patch_nums]
    energy = f.square().mean().item()
    assert all(b < a for a, b in zip([energy] + errors, errors)), errors
    assert errors[-1] < 0.5 * energy, (energy, errors)


def test_depthart_targets_equal_var_targets_on_the_vqvae_path_and_correct_a_wrong_walk(tiny):
    torch.manual_seed(0)
    quant = tiny.vae.quantize
    f_D = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        x, f_hats_x = quant(f_D)
        t, f_hats_t = D.dynamic_targets(quant, f_D, x)  # the model walked exactly the VQ-VAE's path
        assert all(torch.equal(a, b) for a, b in zip(x, t))
        assert all(torch.equal(a, b) for a, b in zip(f_hats_x, f_hats_t))
        assert all(torch.equal(a, b) for a, b in zip(quant.next_inputs(f_hats_x), quant.next_inputs(f_hats_t)))

        z = [torch.randint(0, tiny.cfg.vocab_size, i.shape) for i in x]  # a wrong walk
        t, f_hats_z = D.dynamic_targets(quant, f_D, z)
        assert not all(torch.equal(a, b) for a, b in zip(x, t))
        # At every scale the target token moves the walked partial sum closer to f_D than the walked token did.
        prev = torch.zeros_like(f_D)
        for si in range(len(z)):
            with_target = (f_D - prev - quant.eta_idx(t[si], si)).square().mean()
            with_walk = (f_D - prev - quant.eta_idx(z[si], si)).square().mean()
            assert with_target < with_walk, si
            prev = f_hats_z[si]


# --- transformer ---------------------------------------------------------------------------------
def test_parallel_block_causal_logits_equal_sequential_cached_logits(tiny):
    image, _ = batch()
    with torch.no_grad():
        img = tiny.encode_image(image)
        z, f_hats, logits_seq = tiny.rollout(img)
        logits_par = tiny.parallel_logits(img, tiny.vae.quantize.next_inputs(f_hats))
    assert logits_par.std() > 0.1  # the check below is not vacuous
    assert (logits_par - torch.cat(logits_seq, 1)).abs().max() < 1e-5


def test_the_uncached_reference_walks_the_cached_rollouts_tokens(tiny):
    """benchmark.predict_uncached reruns the whole sequence so far under the mask at every scale."""
    image, _ = batch()
    with torch.no_grad():
        depth, z_uncached = benchmark.predict_uncached(tiny, image)
        z, f_hats, _ = tiny.rollout(tiny.encode_image(image))
    assert all(torch.equal(a, b) for a, b in zip(z_uncached, z))
    assert torch.allclose(depth, tiny.decode(f_hats[-1]), atol=1e-5)


def test_block_causal_mask_hides_finer_depth_scales(tiny):
    """Changing the input of a later scale must not change the logits of earlier ones."""
    image, _ = batch(B=1)
    with torch.no_grad():
        img = tiny.encode_image(image)
        _, f_hats, _ = tiny.rollout(img)
        inputs = tiny.vae.quantize.next_inputs(f_hats)
        base = tiny.parallel_logits(img, inputs)
        inputs[-1] = inputs[-1] + 1.0  # the input of the last scale
        moved = tiny.parallel_logits(img, inputs)
    last = tiny.cfg.patch_nums[-1] ** 2
    assert torch.equal(base[:, :-last], moved[:, :-last])
    assert not torch.allclose(base[:, -last:], moved[:, -last:])


def test_greedy_inference_is_deterministic_and_equals_the_training_rollout(tiny):
    image, _ = batch()
    with torch.no_grad():
        d1, d2 = tiny.predict(image), tiny.predict(image)
        img = tiny.encode_image(image)
        z, f_hats, _ = tiny.rollout(img)
        # Teacher forcing on the model's own walk reproduces that walk: training forward == inference.
        logits = tiny.parallel_logits(img, tiny.vae.quantize.next_inputs(f_hats))
        scales = tiny.predict(image, all_scales=True)
    assert torch.equal(d1, d2)
    assert torch.equal(logits.argmax(-1), torch.cat(z, 1))
    assert torch.allclose(d1, D.depth_from_decoder(tiny.vae.decode(f_hats[-1])), atol=1e-6)
    assert scales.shape == (2, len(tiny.cfg.patch_nums), 64, 64)
    assert torch.allclose(scales[:, -1:], d1, atol=1e-5)
    assert d1.min() >= 0 and d1.max() <= 1


def test_the_image_changes_the_prediction(tiny):
    image, _ = batch()
    with torch.no_grad():
        assert not torch.equal(tiny.predict(image), tiny.predict(image.flip(0)))


OVERFIT_STEPS = {"var": 30, "depthart": 100}  # the budget: var falls under 0.25x its first loss by step ~19,
# depthart by step ~61 (from random weights its walk is noise at first, and so are its targets)
OVERFIT_RATIO = 0.25


def overfit(model, image, target, objective) -> list:
    """Train the transformer (VQ-VAE frozen) on one batch until the loss falls under OVERFIT_RATIO of its first
    value, or for the objective's budget of steps; the loss after every step."""
    model.vae.requires_grad_(False)
    opt = torch.optim.AdamW(model.var.parameters(), lr=3e-3)
    losses = []
    for _ in range(OVERFIT_STEPS[objective]):
        loss, _ = model.loss(image, target, objective)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if losses[-1] < OVERFIT_RATIO * losses[0]:
            break
    return losses


@pytest.mark.parametrize("objective", ["var", "depthart"])
def test_one_batch_overfits(objective):
    torch.manual_seed(0)
    model = Z.build(Z.preset("tiny"))
    losses = overfit(model, *batch(B=2), objective)
    print(objective, "loss", losses[0], "->", losses[-1], "in", len(losses), "steps")
    assert losses[-1] < OVERFIT_RATIO * losses[0], (losses[0], losses[-1])


# --- checkpoints ---------------------------------------------------------------------------------
def read_tsv(name):
    rows = [line.rstrip("\n").split("\t") for line in open(REFERENCE / name)]
    return {k: (shape, dtype) for k, shape, dtype in rows}


def signature(module):
    return {k: (str(tuple(v.shape)), str(v.dtype).removeprefix("torch.")) for k, v in module.state_dict().items()}


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared/reference not beside the checkout")
def test_state_dicts_have_exactly_the_official_keys_shapes_and_dtypes():
    cfg = D.Config.d16()
    with torch.device("meta"):  # shapes only: no 400M-parameter initialization
        vae, var = D.VQVAE(cfg), D.VAR(cfg)
    assert signature(vae) == read_tsv("official_vae_ch160v4096z32_state_dict.tsv")
    assert signature(var) == read_tsv("official_var_d16_state_dict.tsv")


def test_official_style_pth_loads_strictly_and_bad_checkpoints_are_named(tmp_path):
    cfg = Z.preset("tiny")
    src, dst = D.VQVAE(cfg), D.VQVAE(cfg)
    torch.save(src.state_dict(), tmp_path / "vae.pth")
    Z.load_weights(dst, Z.read_state_dict(tmp_path / "vae.pth"), "vae.pth")
    assert torch.equal(dst.quantize.embedding.weight, src.quantize.embedding.weight)

    sd = src.state_dict()
    sd.pop("quant_conv.bias")
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys: quant_conv\.bias.*unexpected keys: extra\.weight"):
        Z.load_weights(dst, sd)
    sd = src.state_dict()
    sd["quant_conv.bias"] = torch.zeros(5)
    with pytest.raises(ValueError, match="shape mismatches: quant_conv.bias"):
        Z.load_weights(dst, sd)

    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="expected a state dict"):
        Z.read_state_dict(tmp_path / "list.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a weights-only PyTorch checkpoint"):
        Z.read_state_dict(tmp_path / "junk.pth")


# --- bad input -----------------------------------------------------------------------------------
def test_wrong_image_size_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, 64, 64\)"):
        tiny.predict(torch.rand(1, 3, 48, 64))
    with pytest.raises(ValueError, match="expected images"):
        tiny.predict(torch.rand(3, 64, 64))


def test_bad_depth_is_a_clear_error():
    depth = torch.ones(2, 1, 8, 8)
    depth[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        D.normalize_depth(depth)
    with pytest.raises(ValueError, match=r"depth maps \[1\] are \(mostly\) zero or negative"):
        D.normalize_depth(torch.stack([torch.ones(1, 8, 8), torch.zeros(1, 8, 8)]))
    valid = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match="no valid pixel"):
        D.normalize_depth(torch.ones(1, 1, 8, 8), valid)


def test_depth_normalization_is_scale_only_with_the_98th_percentile():
    depth = torch.arange(1, 101, dtype=torch.float32).view(1, 1, 10, 10)
    d_n = D.normalize_depth(depth)
    q = torch.quantile(depth.flatten(), 0.98)
    assert d_n.shape == (1, 3, 10, 10)
    assert torch.allclose(d_n[0, 0], (2 * depth[0, 0] / q - 1).clamp(-1, 1))
    assert torch.allclose(D.normalize_depth(3 * depth), d_n, atol=1e-6)  # invariant to scale
    valid = depth > 50  # the quantile runs over valid pixels only
    q_valid = torch.quantile(depth[valid], 0.98)
    assert torch.allclose(D.normalize_depth(depth, valid)[0, 0], (2 * depth[0, 0] / q_valid - 1).clamp(-1, 1))


def test_config_round_trip_and_unknown_preset():
    cfg = Z.preset("tiny")
    assert Z.Config(**json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg  # lists back to tuples
    with pytest.raises(ValueError, match="known presets: d16, release, tiny"):
        Z.preset("huge")
    with pytest.raises(ValueError, match="image_size"):
        D.Config(image_size=128)
    with pytest.raises(ValueError, match="image_size"):
        Z.Config(image_size=128)
    with pytest.raises(ValueError, match="attention must be 'l2' or 'plain'"):
        Z.Config(attention="flash")


def test_a_plain_depthart_config_is_the_papers_and_builds_with_the_variants_defaults():
    paper = D.Config(image_size=32, patch_nums=(1, 2, 4), vocab_size=64, vae_ch=16, vae_ch_mult=(1, 2, 4, 4),
                     vae_res_blocks=1, depth=1, width=32, heads=2, num_classes=0)
    assert paper.variant() == "" and Z.Config(**dataclasses.asdict(paper)).variant() == ""
    torch.manual_seed(0)
    model = Z.build(paper)
    torch.manual_seed(0)
    direct = D.DepthART(paper)
    assert type(model) is D.DepthART and type(model.cfg) is Z.Config and model.cfg.target == "depth"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), direct.state_dict().values()))


# --- surface normals: the second target ----------------------------------------------------------
def normals_batch(B=2, S=64, seed=1):
    """Images and unit camera-frame normals facing the camera: a floor (y up = -y), a wall tilted about y."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(B, 3, S, S, generator=g)
    n = torch.zeros(B, 3, S, S)
    n[:, 1, S // 2:] = -1.0  # floor: pointing up
    tilt = torch.rand(B, generator=g).view(B, 1, 1) * 0.8
    n[:, 0, :S // 2], n[:, 2, :S // 2] = tilt.sin(), -tilt.cos()
    return image, n


def test_normals_round_trip_through_the_normalization():
    _, n = normals_batch()
    valid = torch.ones(2, 1, 64, 64, dtype=torch.bool)
    valid[:, :, :4] = False
    x = Z.normalize_normals(n, valid)
    assert x.shape == (2, 3, 64, 64) and x.abs().max() <= 1
    assert torch.equal(x[:, :, 4:], n[:, :, 4:])  # in directly, no rescaling
    assert torch.equal(x[:, :, :4], torch.tensor([0.0, 0.0, -1.0]).view(1, 3, 1, 1).expand(2, 3, 4, 64))  # facing
    assert torch.allclose(Z.normals_from_decoder(x), x, atol=1e-6)  # unit vectors come back unchanged
    out = Z.normals_from_decoder(torch.tensor([[0.3, -3.0, -0.2]]).view(1, 3, 1, 1))  # clamp, then unit length
    assert torch.allclose(out.norm(dim=1), torch.ones(1, 1, 1)) and torch.allclose(out[0, :, 0, 0], F.normalize(
        torch.tensor([0.3, -1.0, -0.2]), dim=0))


@pytest.mark.parametrize("objective", ["var", "depthart"])
def test_one_batch_of_normals_overfits(objective):
    torch.manual_seed(0)
    cfg = Z.preset("tiny")
    cfg.target = "normals"
    model = Z.build(cfg)
    image, normals = normals_batch(B=2)
    losses = overfit(model, image, normals, objective)
    assert losses[-1] < OVERFIT_RATIO * losses[0], (losses[0], losses[-1])
    pred = model.predict(image)
    scales = model.predict(image, all_scales=True)
    assert pred.shape == (2, 3, 64, 64) and scales.shape == (2, 6, 3, 64, 64)
    assert torch.allclose(pred.norm(dim=1), torch.ones(2, 64, 64), atol=1e-5) and torch.equal(scales[:, -1], pred)


def test_the_target_is_a_config_field_saved_with_the_checkpoint(tmp_path):
    cfg = Z.preset("tiny")
    cfg.target = "normals"
    Z.save_checkpoint(tmp_path / "n.safetensors", Z.build(cfg), {"stage": "transformer"})
    assert Z.load(tmp_path / "n.safetensors").cfg.target == "normals"
    assert Z.Config(**{k: v for k, v in dataclasses.asdict(Z.preset("tiny")).items() if k != "target"}).target == "depth"
    with pytest.raises(ValueError, match="unknown target 'albedo'"):
        Z.build(Z.Config(target="albedo"))
    with pytest.raises(ValueError, match="zoo.build"):  # the model file alone knows only the paper's depth
        D.DepthART(cfg)
    with pytest.raises(ValueError, match="depth_norm 'log'"):  # nor the paper's depth normalized otherwise
        D.DepthART(Z.Config(depth_norm="log"))
    with pytest.raises(ValueError, match=r"image_shortcut True, attention 'l2': use zoo\.build"):  # nor the CPU presets'
        D.DepthART(Z.preset("tiny"))


def test_a_half_precision_checkpoint_is_half_the_file_and_loads_back_to_float32(tmp_path):
    torch.manual_seed(0)
    model = Z.build(Z.preset("tiny")).eval()
    Z.save_checkpoint(tmp_path / "full.safetensors", model, {"stage": "transformer"})
    Z.save_checkpoint(tmp_path / "half.safetensors", model, {"stage": "transformer"}, dtype=torch.float16)
    full, half = (tmp_path / "full.safetensors").stat().st_size, (tmp_path / "half.safetensors").stat().st_size
    assert half < 0.55 * full
    loaded = Z.load(tmp_path / "half.safetensors")
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert b.dtype == a.dtype, name  # float32 again, integer buffers untouched
        if a.is_floating_point():
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=name)
        else:
            assert torch.equal(a, b), name
