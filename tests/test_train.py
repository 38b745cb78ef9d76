"""train.py on the CPU: both stages run and checkpoint, resume is exact, signals save, DDP ranks agree."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import depthart as D
import train

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--data", "synthetic", "--preset", "tiny", "--batch-size", "2", "--train-scenes", "8",
         "--val-samples", "2", "--log-every", "1", "--threads", "1"]


def run(out, *extra):
    train.main(SMALL + ["--out", str(out), *extra])
    return out / train.CHECKPOINT


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def vqvae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vqvae")
    run(out, "--stage", "vqvae", "--steps", "2", "--val-every", "2", "--restart-every", "1", "--lr", "1e-3")
    return out


def test_stage1_trains_restarts_dead_codes_and_checkpoints(vqvae_run):
    log = rows(vqvae_run)
    train_rows = [r for r in log if "loss" in r]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train_rows)
    assert any(r.get("restarted", 0) > 0 for r in train_rows)  # a fresh codebook has dead codes
    assert 0 < train_rows[-1]["code_usage"] <= 1
    assert any("val_abs_rel" in r for r in log)
    assert (vqvae_run / "curves.png").stat().st_size > 1000
    model, cfg, meta = train.load_checkpoint(vqvae_run / train.CHECKPOINT)
    assert cfg == D.Config.tiny() and meta["stage"] == "vqvae" and meta["step"] == 2
    fresh = D.DepthART(cfg)
    assert not torch.equal(model.vae.encoder.conv_in.weight, fresh.vae.encoder.conv_in.weight)


@pytest.mark.parametrize("objective", ["var", "depthart"])
def test_stage2_trains_the_transformer_on_a_frozen_vqvae(vqvae_run, tmp_path, objective):
    ckpt = run(tmp_path, "--stage", "transformer", "--objective", objective, "--init",
               str(vqvae_run / train.CHECKPOINT), "--steps", "2", "--val-every", "2", "--lr", "1e-3")
    model, _, meta = train.load_checkpoint(ckpt)
    start, _, _ = train.load_checkpoint(vqvae_run / train.CHECKPOINT)
    assert meta["objective"] == objective
    assert all(torch.equal(a, b) for a, b in zip(model.vae.state_dict().values(), start.vae.state_dict().values()))
    assert not torch.equal(model.var.head.weight, start.var.head.weight)
    val = [r for r in rows(tmp_path) if "val_loss" in r]
    assert val and 0 < val[-1]["val_abs_rel"] < 10


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path):
    common = ["--stage", "transformer", "--objective", "depthart", "--steps", "4", "--val-every", "100", "--lr", "1e-3"]
    straight = run(tmp_path / "a", *common)
    run(tmp_path / "b", *common, "--stop-after", "2")
    assert json.loads(open(tmp_path / "b" / "metrics.jsonl").readlines()[-1])["step"] == 2
    resumed = run(tmp_path / "b", *common, "--resume")
    a, b = D.read_state_dict(straight), D.read_state_dict(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    cmd = [sys.executable, str(ROOT / "train.py"), *SMALL, "--stage", "transformer", "--objective", "var",
           "--steps", "100000", "--val-every", "100000", "--save-every", "100000", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "metrics.jsonl").exists() or not (tmp_path / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else "timeout"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, output
    assert "stopped by SIGTERM" in output
    _, _, meta = train.load_checkpoint(tmp_path / train.CHECKPOINT)
    assert 1 <= meta["step"] < 100000


def test_two_gloo_ranks_end_with_equal_weights(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(ROOT / "train.py"), *SMALL, "--batch-size", "1", "--stage", "transformer", "--objective", "var",
           "--steps", "2", "--val-every", "100", "--lr", "1e-3", "--out", str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    ranks = json.loads((tmp_path / "ranks.json").read_text())
    assert ranks["world"] == 2 and ranks["weights_sha256"][0] == ranks["weights_sha256"][1]
    torch.manual_seed(0)
    assert ranks["weights_sha256"][0] != train.weights_digest(D.DepthART(D.Config.tiny()))


@pytest.mark.parametrize("args, message", [
    (["--data", "imagenet"], "unknown --data 'imagenet'"),
    (["--data", "hypersim"], "needs --data-root"),
    (["--data", "hypersim", "--data-root", "/nonexistent/hypersim"], "/nonexistent/hypersim"),
])
def test_bad_data_arguments_are_one_clear_line(tmp_path, args, message):
    res = subprocess.run([sys.executable, str(ROOT / "train.py"), *args, "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr
