"""experiment.py end to end on two untrained tiny checkpoints: table, JSON and plot come out consistent."""
import json

import pytest
import torch

import zoo as Z
import experiment
import train


def test_experiment_reports_every_scale_baselines_and_image_use(tmp_path):
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        run = tmp_path / f"run{seed}"
        run.mkdir()
        Z.save_checkpoint(run / train.CHECKPOINT, Z.build(Z.preset("tiny")), {"stage": "transformer"})
        runs.append(str(run))
    out = tmp_path / "exp"
    experiment.main(["--group", f"a={runs[0]}", "--group", f"b={runs[1]}", "--n-val", "3",
                     "--n-train-mean", "3", "--out", str(out)])
    result = json.loads((tmp_path / "exp.json").read_text())
    K = len(Z.preset("tiny").patch_nums)
    for name in ("a", "b"):
        run = result["groups"][name]["runs"][0]
        assert [s["scale"] for s in run["scales"]] == list(Z.preset("tiny").patch_nums)
        assert all(0 <= s["delta1"] <= 1 and s["abs_rel"] >= 0 and 0 <= s["entropy"] <= torch.log(torch.tensor(512.0))
                   for s in run["scales"])
        assert set(run["image_use"]) == {"right", "shuffled"}
        eb = run["scales"]
        # at the first scale there is no past: the own rollout's target is the true token
        assert abs(eb[0]["acc_teacher_forced"] - eb[0]["acc_own_rollout"]) < 1e-6
        assert all(0 <= e["acc_teacher_forced"] <= 1 and 0 <= e["acc_own_rollout"] <= 1 for e in eb)
        assert len(result["groups"][name]["summary"]["per_scale"]) == K
    assert set(result["baselines"]) == {"constant", "ramp", "mean_train_depth"} and result["scenes"] == "box rooms"
    table = (tmp_path / "exp.md").read_text()
    assert "| constant |" in table and "VQ-VAE ceiling" in table
    assert (tmp_path / "exp_scales.png").stat().st_size > 1000


def test_a_world_model_is_scored_on_held_out_world_scenes_against_world_baselines(tmp_path, monkeypatch):
    worlds = []
    scenes = experiment.SyntheticScenes
    monkeypatch.setattr(experiment, "SyntheticScenes", lambda *a, **kw: worlds.append((a[0], kw.get("world")))
                        or scenes(*a, **kw))
    run = tmp_path / "run"
    run.mkdir()
    Z.save_checkpoint(run / train.CHECKPOINT, Z.build(Z.preset("tiny")), {"stage": "transformer", "data": "world"})
    assert experiment.learned_world(run / train.CHECKPOINT)
    experiment.main(["--group", f"a={run}", "--n-val", "2", "--n-train-mean", "2", "--out", str(tmp_path / "exp")])
    assert worlds == [("val", True), ("train", True)]  # held-out scenes, then the mean training depth map
    assert json.loads((tmp_path / "exp.json").read_text())["scenes"] == "world"


def test_scores_are_zero_for_a_scaled_copy_of_the_truth():
    depth = torch.rand(2, 1, 8, 8) + 1
    val = {"depth": depth, "valid": torch.ones_like(depth, dtype=torch.bool)}
    s = experiment.scores(3 * depth, val)
    assert abs(s["abs_rel"]) < 1e-6 and s["delta1"] == 1.0


def test_gallery_draws_photographs_and_a_held_out_scene(tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "m.safetensors"
    Z.save_checkpoint(ckpt, Z.build(Z.preset("tiny")), {"stage": "transformer"})
    experiment.main(["--gallery", str(ckpt), "--out", str(tmp_path / "gallery")])
    from PIL import Image
    image = Image.open(tmp_path / "gallery.png")
    assert image.width > image.height > 200  # 4 rows of input + 6 scales + truth


def test_gallery_of_the_ordinal_photographs_pads_them_and_shows_a_world_scene(tmp_path, monkeypatch):
    photos = experiment.photographs("ordinal", 64)
    assert len(photos) == 10 and all(tuple(img.shape) == (3, 64, 64) for _, img in photos)
    name, img = photos[0]
    assert name == "astronaut" and 0 <= img.min() and img.max() <= 1
    wide = [img for name, img in photos if name == "coffee"][0]  # 600x400: padded above and below
    assert torch.equal(wide[:, 0], wide[:, 1]) and not torch.equal(wide[:, 32], wide[:, 33])
    worlds = []
    scenes = experiment.SyntheticScenes
    monkeypatch.setattr(experiment, "SyntheticScenes", lambda *a, **kw: worlds.append(kw["world"]) or scenes(*a, **kw))
    ckpt = tmp_path / "m.safetensors"
    Z.save_checkpoint(ckpt, Z.build(Z.preset("tiny")), {"stage": "transformer", "data": "world"})
    experiment.main(["--gallery", str(ckpt), "--photos", "ordinal", "--out", str(tmp_path / "g.png")])
    from PIL import Image
    image = Image.open(tmp_path / "g.png")
    assert worlds == [True] and image.height > image.width  # 11 rows: 10 photographs and the held-out scene


def test_a_scored_run_parked_without_its_weights_keeps_its_scores_and_a_moved_on_checkpoint_is_rescored(tmp_path):
    torch.manual_seed(0)
    keep, parked = tmp_path / "keep", tmp_path / "parked"
    for run in (keep, parked):
        run.mkdir()
        Z.save_checkpoint(run / train.CHECKPOINT, Z.build(Z.preset("tiny")), {"stage": "transformer", "step": 5})
    experiment.main(["--score", str(parked), "--n-val", "2"])
    before = json.loads((parked / "scores_2.json").read_text())
    assert before["checkpoint"] == "step 5" and len(before["scales"]) == len(Z.preset("tiny").patch_nums)
    (parked / train.CHECKPOINT).unlink()  # what --park does to a finished, scored run
    assert experiment.scored(parked, 2) == before and experiment.scored(parked, 3) is None
    experiment.main(["--group", f"a={keep}", "--group", f"b={parked}", "--n-val", "2", "--n-train-mean", "2",
                     "--out", str(tmp_path / "exp")])
    result = json.loads((tmp_path / "exp.json").read_text())
    assert result["groups"]["b"]["runs"][0]["scales"] == before["scales"]
    # the run that kept its weights trains on: its scores are measured again, not read back
    Z.save_checkpoint(keep / train.CHECKPOINT, Z.build(Z.preset("tiny")), {"stage": "transformer", "step": 9})
    assert experiment.scored(keep, 2) is None
    experiment.main(["--score", str(keep), "--n-val", "2"])
    assert experiment.scored(keep, 2)["checkpoint"] == "step 9"
    with pytest.raises(SystemExit):  # neither weights nor scores
        experiment.main(["--score", str(tmp_path / "nothing"), "--n-val", "2"])
