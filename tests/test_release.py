"""The authors' DepthART release (github bulatko/DepthART, model.safetensors) on the CPU: its key layout maps
onto the `release` preset exactly, files in its layout load through the one loader (either quantizer alias),
bad files cost one line, the release's sampler is seeded and real, and a plain-attention model trains with
both objectives and the release's loss and exports with token parity (external data included).

tests/data/official_depthart_model_state_dict.tsv lists every key, shape and dtype of the official DepthART
model class built from its evaluation config (both quantizer aliases). Parity with the official code itself
is tests/test_official_parity.py's part 4 (DEPTHART_REPO).
"""
import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import safetensors.torch
import torch

import depthart as D
import zoo as Z
import export as E
import infer_trt
import train
from conftest import mini_config

TSV = Path(__file__).resolve().parent / "data" / "official_depthart_model_state_dict.tsv"
ALIAS, PRIMARY = "vae_quant_proxy.", "vae_proxy.quantize."


def official_tsv() -> dict:
    rows = [line.rstrip("\n").split("\t") for line in open(TSV) if not line.startswith("#")]
    return {k: (shape, dtype) for k, shape, dtype in rows}


def to_release_layout(sd: dict, alias: bool = False, prefix: str = "") -> dict:
    """Our state dict -> the names the release's model class gives it (the quantizer under one alias),
    plus its normalizer constants: what safetensors.torch.save_model writes for it."""
    out = {}
    for k, v in sd.items():
        k = "vae_proxy." + k[4:] if k.startswith("vae.") else k[4:]
        if alias and k.startswith(PRIMARY):
            k = ALIAS + k[len(PRIMARY):]
        out[prefix + k] = v
    out[prefix + "normalizer.alpha"], out[prefix + "normalizer.beta"] = torch.tensor(2.0), torch.tensor(-1.0)
    return out


def small_release_config() -> Z.Config:
    """The release's structure (d16 schedule, vocabulary, VQ-VAE levels), narrow enough for CI."""
    return dataclasses.replace(Z.Config.release(), depth=2, width=64, heads=1, vae_ch=16)


def lively(model: D.DepthART, seed: int = 0) -> D.DepthART:
    return E.lively(model, seed)


@pytest.fixture(scope="module")
def small_release(tmp_path_factory):
    torch.manual_seed(0)
    model = lively(Z.build(small_release_config()))
    path = tmp_path_factory.mktemp("release") / "model.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in to_release_layout(model.state_dict()).items()}, str(path))
    return model, path


# --- the key layout --------------------------------------------------------------------------------
@pytest.mark.parametrize("alias", [False, True], ids=["vae_proxy.quantize", "vae_quant_proxy"])
def test_release_preset_maps_onto_exactly_the_official_keys(alias):
    tsv = official_tsv()
    with torch.device("meta"):
        model = Z.build(Z.Config.release())
    mapped = to_release_layout(model.state_dict(), alias)
    other = PRIMARY if alias else ALIAS
    expected = {k: v for k, v in tsv.items() if not k.startswith(other)}
    assert set(mapped) == set(expected)
    assert {k: (str(tuple(v.shape)), str(v.dtype).removeprefix("torch.")) for k, v in mapped.items()} == expected
    # ... and the loader's mapping of the official keys (this alias) loads strictly into the preset
    sd = {k: torch.empty(eval(shape), dtype=getattr(torch, dtype), device="meta") for k, (shape, dtype) in expected.items()}
    Z.load_weights(model, Z.from_release_keys(sd), "official keys")


def test_release_preset_is_d16_with_plain_attention():
    cfg = Z.Config.release()
    assert dataclasses.replace(cfg, attention="l2") == Z.Config.d16() and cfg.attention == "plain"
    assert Z.preset("release") == cfg
    attn = Z.PlainAttention(1024, 16, 4.0)
    assert attn.scale == 1 / 32 and not hasattr(attn, "scale_mul_1H11")
    with pytest.raises(ValueError, match=r"attention 'plain': use zoo\.build"):  # depthart.py builds VAR's only
        D.DepthART(cfg)


def test_plain_attention_keeps_the_built_weights_and_the_random_stream():
    """zoo.build swaps every block's attention after VAR's initialization: a seeded plain model has the seeded
    l2 model's tensors, less scale_mul_1H11 and the unsaved attn_bias_for_masking, and draws no random number."""
    cfg = Z.preset("tiny")
    torch.manual_seed(0)
    l2 = Z.build(cfg).state_dict()
    after_l2 = torch.rand(3)
    torch.manual_seed(0)
    plain = Z.build(dataclasses.replace(cfg, attention="plain"))
    assert torch.equal(torch.rand(3), after_l2)
    assert all(isinstance(b.attn, Z.PlainAttention) for b in plain.var.blocks)
    dropped = {k for k in l2 if k.endswith("scale_mul_1H11")} | {"var.attn_bias_for_masking"}
    assert list(plain.state_dict()) == [k for k in l2 if k not in dropped]
    assert all(torch.equal(v, l2[k]) for k, v in plain.state_dict().items())


# --- loading files in the release's layout ---------------------------------------------------------
@pytest.fixture(scope="module")
def release_prediction(small_release):
    """(image, the small release model's prediction of it): the reference every layout must reproduce."""
    model, _ = small_release
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    return image, model.predict(image)


@pytest.mark.parametrize("layout", ["primary", "alias", "both", "ddp"])
def test_release_file_loads_through_the_one_loader(small_release, release_prediction, tmp_path, layout):
    model, _ = small_release
    sd = to_release_layout(model.state_dict(), alias=layout == "alias", prefix="module." if layout == "ddp" else "")
    if layout == "both":
        sd.update({ALIAS + k[len(PRIMARY):]: v.clone() for k, v in to_release_layout(model.state_dict()).items()
                   if k.startswith(PRIMARY)})
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    assert Z.checkpoint_config(path) == small_release_config()
    loaded = Z.load(path)
    image, expected = release_prediction
    assert torch.equal(loaded.predict(image), expected)


def test_unused_keys_are_named_in_one_line_and_skipped(small_release, tmp_path, capsys):
    model, _ = small_release
    sd = to_release_layout(model.state_dict())
    sd["blocks.0.attn.scale_mul_1H11"] = torch.zeros(1, 1, 1, 1)  # cos_attn=True saves it; the release's forward never reads it
    safetensors.torch.save_file(sd, str(tmp_path / "model.safetensors"))
    Z.load(tmp_path / "model.safetensors")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 keys not used: var.blocks.0.attn.scale_mul_1H11" in err[0]


def bad_files(small_release, tmp_path) -> dict:
    model, _ = small_release
    good = {k: v.contiguous() for k, v in to_release_layout(model.state_dict()).items()}
    files = {}
    wrong = dict(good, **{"blocks.1.attn.proj.weight": torch.zeros(64, 7)})
    missing = {k: v for k, v in good.items() if not k.startswith("blocks.0.")}
    for name, sd in (("wrong_shape", wrong), ("missing_block", missing)):
        safetensors.torch.save_file(sd, str(tmp_path / f"{name}.safetensors"))
        files[name] = tmp_path / f"{name}.safetensors"

    class Payload:  # a pickle that runs code when loaded without weights_only
        def __reduce__(self):
            return (print, ("this ran",))
    torch.save({"w": Payload()}, tmp_path / "code.pth")
    files["code_pickle"] = tmp_path / "code.pth"
    return files


@pytest.mark.parametrize("kind, message", [("wrong_shape", r"shape mismatches: var\.blocks\.1\.attn\.proj\.weight"),
                                           ("missing_block", r"missing keys: var\.blocks\.0\."),
                                           ("code_pickle", r"not a weights-only PyTorch checkpoint")])
def test_bad_release_files_give_one_clear_line(small_release, tmp_path, kind, message, capsys):
    path = bad_files(small_release, tmp_path)[kind]
    with pytest.raises(ValueError, match=message) as e:
        if kind == "code_pickle":
            Z.init_weights(Z.build(Z.preset("tiny")), init=path)
        else:
            Z.load(path)
    assert "\n" not in str(e.value)
    assert "this ran" not in capsys.readouterr().out
    # the command line: one line, exit status 2, no traceback
    rc = infer_trt.main(["examples", "--checkpoint", str(path), "--backend", "torch", "--out", str(tmp_path / "o")])
    out = capsys.readouterr()
    assert rc == 2 and "Traceback" not in out.out + out.err
    assert len([line for line in out.out.splitlines() if line.startswith("cannot run")]) == 1


# --- the release's sampler -------------------------------------------------------------------------
def test_release_sample_filters_then_draws_with_replacement():
    V = 1000
    logits = torch.linspace(0, 30, V).view(1, 1, V).repeat(1, 4, 1)  # sharply peaked: top-p keeps few
    draws = Z.release_sample(logits, torch.Generator().manual_seed(0), top_k=900, top_p=0.9, n=5)
    assert draws.shape == (1, 4, 5)
    p = logits[0, 0].softmax(-1)
    kept = (p.flip(0).cumsum(0) - p.flip(0) < 0.9).sum().item()  # the most likely codes reaching 0.9
    assert (draws >= V - kept).all()
    lo = Z.release_sample(-logits, torch.Generator().manual_seed(0), top_k=3, top_p=1.0, n=50)
    assert set(lo.flatten().tolist()) <= {0, 1, 2}  # top-k alone


def test_release_sampling_is_seeded_and_differs_from_greedy(small_release):
    model, _ = small_release
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    a = model.predict(image, pick=Z.sampler("release", torch.Generator().manual_seed(5)))
    b = model.predict(image, pick=Z.sampler("release", torch.Generator().manual_seed(5)))
    c = model.predict(image, pick=Z.sampler("release", torch.Generator().manual_seed(6)))
    greedy = model.predict(image)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, greedy)
    assert torch.equal(model.predict(image, pick=Z.sampler("greedy")), greedy)
    with pytest.raises(ValueError, match="unknown sampling"):
        Z.sampler("top-k")


def test_infer_trt_runs_the_release_sampler_in_pytorch(small_release, tmp_path, capsys):
    _, path = small_release
    common = ["examples/room.png", "--checkpoint", str(path), "--sampling", "release", "--seed", "3", "--npy"]
    assert infer_trt.main(common + ["--out", str(tmp_path / "a")]) == 0
    assert infer_trt.main(common + ["--out", str(tmp_path / "b")]) == 0
    assert "release sampler, seed 3" in capsys.readouterr().out
    assert np.array_equal(np.load(tmp_path / "a" / "room_depth.npy"), np.load(tmp_path / "b" / "room_depth.npy"))
    assert infer_trt.main(common + ["--backend", "ort", "--out", str(tmp_path / "c")]) == 2
    assert "runs in PyTorch only" in capsys.readouterr().out


# --- plain attention is real: trains with both objectives and the release loss, exports exactly ---------
@pytest.fixture(scope="module")
def plain_mini(tmp_path_factory):
    """A plain-attention model smaller than tiny (conftest.mini_config: 32x32, three scales, one block): what is
    checked below does not depend on the model's size."""
    torch.manual_seed(0)
    model = lively(Z.build(mini_config(attention="plain")))
    path = tmp_path_factory.mktemp("plain") / "plain.safetensors"
    Z.save_checkpoint(path, model, {"stage": "transformer"})
    return model, path


@pytest.mark.parametrize("objective, release_loss", [("var", False), ("depthart", False), ("depthart", True)])
def test_plain_attention_trains(plain_mini, tmp_path, objective, release_loss):
    _, init = plain_mini
    out = tmp_path / "run"
    train.main(["--data", "synthetic", "--batch-size", "2", "--train-scenes", "8", "--val-samples", "2",
                "--threads", "1", "--steps", "3", "--log-every", "1", "--val-every", "3", "--lr", "1e-3",
                "--objective", objective, "--init", str(init), "--out", str(out)]
               + (["--release-loss"] if release_loss else []))
    model = Z.load(out / train.CHECKPOINT)
    assert model.cfg.attention == "plain"
    assert Z.checkpoint_meta(out / train.CHECKPOINT).get("release_loss", False) == release_loss
    log = train.read_log(out / "metrics.jsonl")
    assert all(np.isfinite(r["loss"]) for r in log if "loss" in r)
    assert any("f_mse" in r for r in log) == release_loss


def test_release_loss_is_cross_entropy_before_the_last_scale_plus_ten_mse(plain_mini):
    model, _ = plain_mini
    g, S = torch.Generator().manual_seed(3), model.cfg.image_size
    image, depth = torch.rand(2, 3, S, S, generator=g), 1 + torch.rand(2, 1, S, S, generator=g)
    torch.manual_seed(4)
    loss, stats = Z.release_loss(model, image, depth, "depthart")
    assert torch.isclose(loss, stats["loss"]) and stats["f_mse"] > 0
    loss.backward()
    head = model.var.head.weight.grad
    assert head is not None and head.abs().sum() > 0
    model.zero_grad()


def test_plain_attention_exports_with_token_parity(plain_mini, tmp_path):
    """One checked export with external data (the check runs on the written files), then an in-file export over
    it: both layouts predict as PyTorch does (the in-file one was a second checked export of its own before)."""
    model, _ = plain_mini
    path = tmp_path / "plain.onnx"
    report = E.export(model, path, batch=1, tokens=True, check=True, external_data=True)
    assert report["fp32_check"]["token_agreement_per_scale"] == [1.0] * len(model.cfg.patch_nums)
    data = tmp_path / "plain.onnx.data"
    assert report["external_data"] and data.exists()
    assert path.stat().st_size < data.stat().st_size / 10  # the weights live in the data file
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind
    S = model.cfg.image_size
    image = torch.rand(1, 3, S, S, generator=torch.Generator().manual_seed(7))
    expected = model.predict(image).numpy()
    assert np.abs(infer_trt.OrtBackend(path).predict(image.numpy()) - expected).max() <= 1e-4
    # a later in-file export over the same name removes the stale data file, and predicts the same
    report = E.export(model, path, check=False, external_data=False)
    assert not report["external_data"] and not data.exists() and onnx.load(str(path)).graph.initializer
    assert np.abs(infer_trt.OrtBackend(path).predict(image.numpy()) - expected).max() <= 1e-4
