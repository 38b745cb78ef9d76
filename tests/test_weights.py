"""The shipped default model: it loads, runs one inference through infer_trt.py's default path, and is a
real depth model on held-out synthetic scenes (beats the trivial predictors and needs the image)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import depthart as D
import experiment
import infer_trt as I

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / I.DEFAULT_CHECKPOINT


def test_shipped_weights_are_small_safetensors_of_the_tiny_preset():
    assert WEIGHTS.is_file(), f"{WEIGHTS} is missing: the repository ships it (see README, Training)"
    total = sum(p.stat().st_size for p in WEIGHTS.parent.iterdir() if p.is_file())
    assert total <= 40 * 2**20
    model, cfg, meta = load_checkpoint(WEIGHTS)
    assert cfg.to_dict() == D.Config.tiny().to_dict()
    assert meta.get("stage") == "transformer"


def test_default_inference_writes_a_depth_map(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # infer_trt.py's default checkpoint is relative to the repository root
    out = tmp_path / "out"
    assert I.main([str(ROOT / "examples" / "room.png"), "--out", str(out), "--backend", "torch"]) == 0
    depth = np.asarray(Image.open(out / "room_depth.png"))
    image = Image.open(ROOT / "examples" / "room.png")
    assert depth.dtype == np.uint16 and depth.shape == (image.height, image.width)
    assert depth.std() > 1000  # a depth map with structure, not a constant


@pytest.fixture(scope="module")
def held_out():
    torch.set_num_threads(2)
    model, cfg, _ = load_checkpoint(WEIGHTS)  # in eval mode
    return model, experiment.load_val(48, cfg.image_size)


def test_shipped_model_beats_every_trivial_predictor(held_out):
    model, val = held_out
    with torch.no_grad():
        ours = experiment.scores(model.predict(val["image"]), val)
    baselines = experiment.trivial_baselines(val, n_train=64, size=model.cfg.image_size)
    for name, b in baselines.items():
        assert ours["abs_rel"] < 0.8 * b["abs_rel"], (name, ours, b)
        assert ours["delta1"] > b["delta1"], (name, ours, b)


def test_shipped_model_uses_the_image(held_out):
    model, val = held_out
    use = experiment.image_use(model, val)
    assert use["shuffled"]["var_loss"] > use["right"]["var_loss"] + 0.1, use
    assert use["shuffled"]["abs_rel"] > 1.2 * use["right"]["abs_rel"], use


def load_checkpoint(path):
    model = D.DepthART.from_checkpoint(path)
    return model, model.cfg, D.checkpoint_meta(path)
