"""Issue 23 on a tiny random model: anytime depth (--max-scale, PyTorch and exported graphs), sampled ensembles
with an uncertainty map (--samples), and metric depth from known points (--known, --sparse)."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

import export as E
import infer_trt as I
import metrics as M
import zoo as Z


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine two threads contend with other jobs and run 30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = E.lively(Z.build(Z.preset("tiny"))).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    Z.save_checkpoint(path, model, {"stage": "transformer"})
    return model, path


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((48, 80, 3)) * 255).astype(np.uint8)).save(path)
    return path


# --- anytime depth ----------------------------------------------------------------------------------------
def test_max_scale_decodes_the_partial_sum_after_k_scales(tiny):
    model, _ = tiny
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    every = model.predict(x, all_scales=True)
    z, f_hats, logits = model.rollout(model.encode_image(x), num_scales=3)
    assert len(z) == len(f_hats) == len(logits) == 3
    full = model.rollout(model.encode_image(x))
    assert all(torch.equal(a, b) for got, ref in zip((z, f_hats, logits), full) for a, b in zip(got, ref[:3]))
    assert all(torch.equal(a, b) for got, ref in zip(model.rollout(model.encode_image(x), num_scales=None), full)
               for a, b in zip(got, ref, strict=True))
    assert torch.equal(Z.anytime_predict(model, x, 3), every[:, 2:3])
    assert torch.equal(Z.anytime_predict(model, x, 6), every[:, 5:])
    assert not torch.equal(every[:, 2], every[:, 5])


def test_export_max_scale_graph_matches_pytorch_and_is_smaller(tiny, tmp_path):
    model, _ = tiny
    report = E.export(model, tmp_path / "k2.onnx", max_scale=2, tokens=True, check=False, log=lambda s: None)
    assert report["max_scale"] == 2
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    depth, tokens = ort.InferenceSession(str(tmp_path / "k2.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"image": x.numpy()})
    assert tokens.shape == (1, 1 + 4)  # the 1x1 and 2x2 scales only
    assert np.abs(depth - Z.anytime_predict(model, x, 2).numpy()).max() < 1e-4
    with pytest.raises(ValueError, match="scales 1..6"):
        E.export(model, tmp_path / "k9.onnx", max_scale=9, log=lambda s: None)


def test_infer_trt_max_scale_on_torch_and_one_line_refusals(tiny, photo, tmp_path, capsys):
    model, path = tiny
    common = [str(photo), "--checkpoint", str(path), "--backend", "torch", "--npy", "--scales"]
    assert I.main(common + ["--max-scale", "2", "--out", str(tmp_path / "a")]) == 0
    assert "first 2 of 6 scales" in capsys.readouterr().out
    strip = np.array(Image.open(tmp_path / "a" / "photo_scales.png"))
    full = I.load(path, backend="torch", log=lambda s: None).predict(str(photo))
    k2 = I.load(path, backend="torch", log=lambda s: None, max_scale=2).predict(str(photo))
    assert np.allclose(np.load(tmp_path / "a" / "photo_depth.npy"), k2) and not np.allclose(k2, full)
    assert strip.shape[1] < 3 * 80 + 10  # two panels, not six
    assert I.main(common + ["--max-scale", "7", "--out", str(tmp_path / "b")]) == 2
    assert "--max-scale 7: this model has scales 1..6" in capsys.readouterr().out
    (tmp_path / "x.onnx").touch()
    with pytest.raises(ValueError, match="export a graph per k"):
        I.load_backend(tmp_path / "x.onnx", "ort", max_scale=2)


# --- ensembles and uncertainty ----------------------------------------------------------------------------
def test_ensemble_aligns_samples_before_the_median():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 1.0, (16, 16))
    depth, unc = M.ensemble(np.stack([base, 2 * base, 0.5 * base]))
    assert np.allclose(depth, base, rtol=1e-5) and unc.max() < 1e-5  # pure scales of one map agree exactly
    noisy = np.stack([base * s + rng.normal(0, 0.01, base.shape) * (i == 2) for i, s in enumerate((1, 3, 1))])
    _, unc = M.ensemble(noisy)
    assert unc.mean() > 1e-3
    depth, unc = M.ensemble(base[None])
    assert np.array_equal(depth, base.astype(np.float32)) and not unc.any()
    depth, _ = M.ensemble(np.stack([base, 2 * base + 0.3, base]), mode="affine")  # an affine copy of base
    a = np.stack([base.ravel(), np.ones(base.size)], 1)
    assert np.abs(a @ np.linalg.lstsq(a, depth.ravel(), rcond=None)[0] - depth.ravel()).max() < 1e-5


def test_ause_and_spearman_score_rankings():
    e = np.arange(200.0)
    assert M.ause(e, e) == 0 and M.ause(e, -e) > 0.5 and abs(M.spearman(e, e) - 1) < 1e-12
    assert abs(M.spearman(e, -e) + 1) < 1e-12


def test_temperature_sampler_is_seeded_and_top1_is_greedy(tiny):
    model, _ = tiny
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    a = model.predict(x, pick=Z.temperature_sampler(torch.Generator().manual_seed(4)))
    b = model.predict(x, pick=Z.temperature_sampler(torch.Generator().manual_seed(4)))
    c = model.predict(x, pick=Z.temperature_sampler(torch.Generator().manual_seed(5)))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(model.predict(x, pick=Z.temperature_sampler(top_k=1)), model.predict(x))
    with pytest.raises(ValueError, match="temperature"):
        Z.temperature_sampler(temperature=0)


def test_infer_trt_samples_write_a_repeatable_ensemble_and_uncertainty(tiny, photo, tmp_path, capsys):
    _, path = tiny
    common = [str(photo), "--checkpoint", str(path), "--samples", "3", "--npy"]
    assert I.main(common + ["--out", str(tmp_path / "a")]) == 0
    assert I.main(common + ["--sampling", "temperature", "--out", str(tmp_path / "b")]) == 0
    assert "ensemble of 3" in capsys.readouterr().out
    unc = np.load(tmp_path / "a" / "photo_uncertainty.npy")
    assert unc.shape == (48, 80) and (unc >= 0).all() and unc.max() > 0
    legend = Image.open(tmp_path / "a" / "photo_uncertainty.png")
    assert legend.size[0] > 80  # the map and its colour bar
    assert not np.array_equal(np.load(tmp_path / "a" / "photo_depth.npy"), np.load(tmp_path / "b" / "photo_depth.npy"))
    depth, unc_api = I.load(path, log=lambda s: None, samples=3).predict_with_uncertainty(str(photo))  # seed 0 again
    assert np.array_equal(depth, np.load(tmp_path / "a" / "photo_depth.npy")) and np.array_equal(unc_api, unc)
    capsys.readouterr()
    assert I.main(common + ["--backend", "ort", "--out", str(tmp_path / "d")]) == 2
    assert "runs in PyTorch only" in capsys.readouterr().out


# --- metric depth from known points -----------------------------------------------------------------------
def test_fit_known_survives_a_wrong_point_and_fits_shift_where_allowed():
    rng = np.random.default_rng(0)
    truth = rng.uniform(1, 6, (40, 40))
    mask = np.zeros(truth.shape, bool)
    mask.flat[rng.choice(truth.size, 5, replace=False)] = True
    known = np.where(mask, truth, 0.0)
    known.flat[np.flatnonzero(mask)[0]] *= 10  # one wrong point
    metric, info = M.fit_known(truth / 4, known, mask)
    assert np.allclose(metric, truth, rtol=1e-5) and info["inliers"] == 4 and abs(info["scale"] - 4) < 1e-9
    metric, info = M.fit_known((truth - 0.5) / 2, known, mask, "affine")
    assert np.allclose(metric, truth, rtol=1e-5) and abs(info["shift"] - 0.5) < 1e-6
    one = np.zeros(truth.shape, bool)
    one[3, 4] = True
    with pytest.raises(ValueError, match="at least 2"):
        M.fit_known(truth, np.where(one, truth, 0), one, "affine")


def test_infer_trt_known_points_write_metres_millimetres_and_a_metric_cloud(tiny, photo, tmp_path, capsys):
    _, path = tiny
    relative = I.load(path, backend="torch", log=lambda s: None).predict(str(photo))
    truth = relative * 3.0  # a scene whose metric depth is 3 x the prediction
    points = [f"{x},{y},{truth[y, x]:.6f}" for x, y in ((5, 5), (40, 20), (70, 40), (10, 30))] + ["20,10,99"]  # one wrong
    out = tmp_path / "k"
    assert I.main([str(photo), "--checkpoint", str(path), "--backend", "torch", "--out", str(out), "--known", *points]) == 0
    assert "5 known points, 4 within 25%" in capsys.readouterr().out
    metres = np.load(out / "photo_depth_metres.npy")
    assert np.allclose(metres, truth, rtol=1e-4)
    mm = np.array(Image.open(out / "photo_depth_mm.png"))
    assert mm.dtype == np.uint16 and np.abs(mm - np.round(truth * 1000)).max() <= 1
    assert b"metric depth in metres" in (out / "photo_metric.ply").read_bytes()[:300]
    sparse = np.zeros_like(truth)
    sparse[::7, ::9] = truth[::7, ::9]
    np.save(tmp_path / "sparse.npy", sparse)
    assert I.main([str(photo), "--checkpoint", str(path), "--backend", "torch", "--out", str(tmp_path / "s"),
                   "--sparse", str(tmp_path / "sparse.npy")]) == 0
    assert np.allclose(np.load(tmp_path / "s" / "photo_depth_metres.npy"), truth, rtol=1e-4)
    np.save(tmp_path / "small.npy", sparse[:10])
    assert I.main([str(photo), "--checkpoint", str(path), "--backend", "torch", "--out", str(tmp_path / "t"),
                   "--sparse", str(tmp_path / "small.npy")]) == 1
    assert "it must hold one depth per pixel" in capsys.readouterr().out
    assert I.main([str(photo), "--checkpoint", str(path), "--backend", "torch", "--out", str(tmp_path / "u"),
                   "--known", "500,5,2"]) == 1
    assert "pixel outside the 80x48 image" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        I.main([str(photo), "--checkpoint", str(path), "--known", "1,2"])
    assert "expected x,y,metres" in capsys.readouterr().err
