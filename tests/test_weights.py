"""The shipped default model: it loads, runs one inference through infer_trt.py's default path, is a real depth
model on held-out scenes of the synthetic world (AbsRel at most half the best trivial predictor's, and it needs the
image), and orders the real photographs of the ordinal check better than the ramp prior and the tiny model."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import zoo as Z
import evaluate
import experiment
import infer_trt as I
from data import TEST_SEED_START
from metrics import median_aligned_scores
from scenes import render_world

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / I.DEFAULT_CHECKPOINT


def test_shipped_weights_are_half_precision_safetensors_of_the_small_preset_within_the_budget():
    assert WEIGHTS.is_file(), f"{WEIGHTS} is missing: the repository ships it (see README, Training)"
    total = sum(p.stat().st_size for p in WEIGHTS.parent.iterdir() if p.is_file())
    assert total <= 40 * 2**20, f"the shipped weights take {total / 2**20:.1f} MB"
    with safe_open(WEIGHTS, "pt") as f:  # weights stored in FP16 (half the file), loaded back to FP32
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    assert {d for d in dtypes.values() if d.startswith("F")} == {"F16"}  # integer buffers (scale ids) stay integers
    assert sum(d == "F16" for d in dtypes.values()) > 0.9 * len(dtypes)
    model, cfg, meta = load_checkpoint(WEIGHTS)
    assert cfg == Z.preset("small")
    assert meta.get("stage") == "transformer" and meta.get("data") == "world" and meta.get("objective") == "depthart"
    assert next(model.parameters()).dtype == torch.float32


def test_default_inference_writes_a_depth_map_from_any_directory(tmp_path, monkeypatch, capsys):
    # in this process, from another folder; tests/test_infer.py runs the command line itself from one
    monkeypatch.chdir(tmp_path)
    code = I.main([str(ROOT / "examples" / "room.png"), "--out", "out", "--backend", "torch"])
    assert code == 0, capsys.readouterr().out
    depth = np.asarray(Image.open(tmp_path / "out" / "room_depth.png"))
    image = Image.open(ROOT / "examples" / "room.png")
    assert depth.dtype == np.uint16 and depth.shape == (image.height, image.width)
    assert depth.std() > 1000  # a depth map with structure, not a constant


@pytest.fixture(scope="module")
def held_out():
    torch.set_num_threads(2)
    model, cfg, _ = load_checkpoint(WEIGHTS)  # in eval mode
    return model, experiment.load_val(48, cfg.image_size, world=True)


@pytest.fixture(scope="module")
def image_use(held_out):
    """experiment.image_use on the held-out scenes, once: "right" is experiment.scores(model.predict(val), val),
    the shipped model's own scores; "shuffled" the same with every image paired with another scene."""
    model, val = held_out
    return experiment.image_use(model, val)


def test_shipped_model_has_at_most_half_the_error_of_the_best_trivial_predictor(held_out, image_use):
    model, val = held_out
    ours = image_use["right"]  # the scores of model.predict on the 48 held-out scenes
    baselines = experiment.trivial_baselines(val, n_train=64, size=model.cfg.image_size, world=True)
    best = min(b["abs_rel"] for b in baselines.values())
    assert ours["abs_rel"] <= 0.5 * best, (ours, baselines)
    assert all(ours["delta1"] > b["delta1"] for b in baselines.values()), (ours, baselines)


def test_shipped_model_uses_the_image(image_use):
    use = image_use
    assert use["shuffled"]["var_loss"] > use["right"]["var_loss"] + 0.1, use
    assert use["shuffled"]["abs_rel"] > 1.2 * use["right"]["abs_rel"], use


def test_the_tiny_model_before_it_still_beats_every_trivial_predictor_on_its_box_rooms():
    torch.set_num_threads(2)
    model, cfg, _ = load_checkpoint(WEIGHTS.with_name("depthart_tiny.safetensors"))
    assert cfg == Z.preset("tiny")
    val = experiment.load_val(48, cfg.image_size)
    with torch.no_grad():
        ours = experiment.scores(model.predict(val["image"]), val)
    for name, b in experiment.trivial_baselines(val, n_train=64, size=cfg.image_size).items():
        assert ours["abs_rel"] < 0.8 * b["abs_rel"] and ours["delta1"] > b["delta1"], (name, ours, b)


def load_checkpoint(path):
    model = Z.load(path)
    return model, model.cfg, Z.checkpoint_meta(path)


@pytest.mark.parametrize("shape", [(96, 128), (128, 96)])
def test_non_square_scenes_keep_their_geometry_padded_as_well_as_squashed(held_out, shape):
    model, _ = held_out
    backend = I.TorchBackend(model)
    scenes = [render_world(TEST_SEED_START + i, size=shape, augment=False) for i in range(24)]
    truth, valid = [s["depth"] for s in scenes], [s["valid"] for s in scenes]
    scores = {}
    for fit in ("pad", "squash"):
        depth = [d for d, _ in I.predict_arrays(backend, [s["image"] for s in scenes], fit)]
        assert all(d.shape == shape for d in depth)  # at the input's own size
        scores[fit] = float(np.mean(median_aligned_scores(depth, truth, valid)[0]))
    flat = float(np.mean(median_aligned_scores([np.ones(shape)] * len(scenes), truth, valid)[0]))
    print(f"{shape}: AbsRel pad {scores['pad']:.4f}, squash {scores['squash']:.4f}, constant {flat:.4f}")
    # 24 scenes decide nothing finer than ~0.02
    assert scores["pad"] <= scores["squash"] + 0.02 and scores["pad"] < 0.7 * flat


def test_shipped_model_orders_real_photographs_better_than_the_ramp_prior_and_the_tiny_model():
    """The ordinal check (docs/ordinal_pairs.json: 220 labelled pairs on 10 photographs from packages)."""
    def whdr(checkpoint):
        if checkpoint == "ramp":
            predict, size, _ = evaluate.load_predictor("ramp", 128)
        else:
            backend = I.load_backend(checkpoint, backend="torch", log=lambda *a, **k: None)
            predict, size = backend.predict, backend.image_size
        return evaluate.ordinal_check(predict, size, "pad")["whdr"]

    ours, ramp, tiny = whdr(WEIGHTS), whdr("ramp"), whdr(WEIGHTS.with_name("depthart_tiny.safetensors"))
    print(f"WHDR: shipped {ours:.3f}, ramp {ramp:.3f}, tiny {tiny:.3f}")
    assert ours < ramp and ours < tiny


def test_the_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # a fresh cache: the first use exports
    monkeypatch.chdir(ROOT)  # as the README says: run from the repository folder
    exec(compile(code, "README.md", "exec"), {})  # in this process: the block's own import is already done
    assert list((tmp_path / "cache").rglob("*.onnx"))  # it went through the exported graph, not the cache of a test
    with Image.open(ROOT / "examples" / "room.png") as im:
        assert f"({im.height}, {im.width}) float32" in capsys.readouterr().out


NORMALS_WEIGHTS = I.DEFAULT_NORMALS_CHECKPOINT


def test_shipped_normals_model_beats_facing_the_camera():
    """The shipped normals model on 48 held-out world scenes: a lower mean angular error and more pixels
    within 11.25 degrees than predicting every surface facing the camera."""
    torch.set_num_threads(2)
    model = Z.load(NORMALS_WEIGHTS)
    assert model.cfg.target == "normals" and Z.checkpoint_meta(NORMALS_WEIGHTS).get("stage") == "transformer"
    val = experiment.load_val(48, model.cfg.image_size, "normals")
    with torch.no_grad():
        ours = experiment.scores(model.predict(val["image"]), val)
    facing = experiment.trivial_baselines(val, n_train=8, size=model.cfg.image_size)["facing the camera"]
    assert ours["mean_angle"] < facing["mean_angle"] and ours["within_11.25"] > facing["within_11.25"], (ours, facing)
