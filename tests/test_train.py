"""train.py on the CPU: both stages run and checkpoint, resume is exact, signals save, DDP ranks agree,
HyperSim trains from its official layout, and bad arguments end in one clear line; and docs/gpu_check.sh (train.py
through torchrun, then benchmark.py) at tiny size on the CPU."""
import functools
import json
import multiprocessing
import multiprocessing.forkserver
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo as Z
import train
from conftest import Started, selected

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--data", "synthetic", "--preset", "tiny", "--batch-size", "2", "--train-scenes", "8",
         "--val-samples", "2", "--log-every", "1", "--threads", "1"]


def run(out, *extra):
    train.main(SMALL + ["--out", str(out), *extra])
    return out / train.CHECKPOINT


def rows(out):
    return train.read_log(out / "metrics.jsonl")


def same_weights(a, b):
    a, b = Z.read_state_dict(a), Z.read_state_dict(b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def started(request, tmp_path_factory):
    """What this module runs in fresh interpreters, started as it begins where their tests are selected: the fork
    server of child() (below), train.py's command lines and docs/gpu_check.sh (-> {name: (Started, its folder)}).
    Each spends seconds importing torch on one core, beside the in-process runs here (--threads 1) on the other;
    the tests that need them come later in the file and wait for what is left."""
    if selected(request, "test_sigterm_saves_and_exits_cleanly") or \
            selected(request, "test_two_gloo_ranks_end_with_equal_weights"):
        fork_server_context()
        multiprocessing.forkserver.ensure_running()
    runs = {}
    if selected(request, "test_a_bad_argument_from_another_directory_is_one_line_and_exit_2"):
        folder = tmp_path_factory.mktemp("bad_argument")
        (folder / "FILE").write_text("x")
        runs["bad_argument"] = Started([sys.executable, str(ROOT / "train.py"), "--out", "FILE"], cwd=folder), folder
    if selected(request, "test_the_avx2_emulation_takes_the_paths_of_a_cpu_without_native_bf16"):
        folder = tmp_path_factory.mktemp("avx2")
        env = dict(os.environ, PYTHONPATH=str(ROOT / "docs" / "emulate_avx2"), ATEN_CPU_CAPABILITY="avx2",
                   ONEDNN_MAX_CPU_ISA="AVX2")
        code = ("import torch, train; print(torch.backends.cpu.get_cpu_capability(), train.native_bf16(torch.device('cpu')));"
                "train.main(['--stage', 'vqvae', '--amp', 'bf16', '--steps', '1', '--out', %r])" % str(folder / "run"))
        runs["avx2"] = Started([sys.executable, "-c", code], cwd=ROOT, env=env), folder
    if selected(request, "test_gpu_check_runs_at_tiny_size_on_the_cpu_and_writes_one_json"):
        folder = tmp_path_factory.mktemp("gpu_check") / "check"
        runs["gpu_check"] = Started(["bash", str(ROOT / "docs" / "gpu_check.sh"), "--device", "cpu", "--preset", "tiny",
                                     "--steps", "2", "--batch-size", "2", "--quick", "--out", str(folder)],
                                    env={**os.environ, "PYTHON": sys.executable}), folder
    yield runs
    for run_, _ in runs.values():
        run_.stop()


@pytest.fixture(scope="module")
def vqvae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vqvae")
    run(out, "--stage", "vqvae", "--steps", "2", "--val-every", "2", "--restart-every", "1", "--lr", "1e-3")
    return out


def test_step_batches_are_shuffled_epochs_split_between_ranks():
    n, B = 10, 3
    seen = [i for s in range(10) for r in range(2) for i in train.step_indices(7, s, n, B, r, 2)]
    assert all(sorted(seen[e * n:(e + 1) * n]) == list(range(n)) for e in range(6))  # each epoch once, no repeats
    assert train.step_indices(7, 4, n, B, 1, 2) == seen[27:30]
    assert train.step_indices(7, 0, n, B) != train.step_indices(8, 0, n, B)


def test_stage1_trains_restarts_dead_codes_and_checkpoints(vqvae_run):
    log = rows(vqvae_run)
    train_rows = [r for r in log if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["samples_per_s"] > 0 for r in train_rows)
    assert any(r["restarted"] > 0 for r in train_rows)  # a fresh codebook has dead codes
    assert 0 < train_rows[-1]["code_usage"] <= 1
    val = [r for r in log if "val_vqvae_ceiling_abs_rel" in r]  # stage 1 scores a reconstruction, and says so
    assert val and {"val_vqvae_ceiling_delta1", "val_image_l1", "val_depth_l1"} <= set(val[-1])
    assert not any("val_abs_rel" in r for r in log)
    assert (vqvae_run / "curves.png").stat().st_size > 1000
    model, cfg, meta = load_checkpoint(vqvae_run / train.CHECKPOINT)
    assert cfg == Z.preset("tiny") and meta["stage"] == "vqvae" and meta["step"] == 2
    saved = Z.read_state_dict(vqvae_run / train.CHECKPOINT)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    torch.manual_seed(0)
    fresh = Z.build(cfg)
    assert not torch.equal(model.vae.encoder.conv_in.weight, fresh.vae.encoder.conv_in.weight)
    assert torch.equal(model.var.head.weight, fresh.var.head.weight)  # stage 1 leaves the transformer alone
    state = torch.load(vqvae_run / train.STATE, weights_only=True)
    assert state["step"] == 2


@pytest.mark.parametrize("objective, init", [("var", "--init"), ("depthart", "--init-vae")])
def test_stage2_trains_the_transformer_on_a_frozen_vqvae(vqvae_run, tmp_path, objective, init):
    ckpt = run(tmp_path, "--stage", "transformer", "--objective", objective, init,
               str(vqvae_run / train.CHECKPOINT), "--steps", "2", "--val-every", "2", "--lr", "1e-3")
    model, _, meta = load_checkpoint(ckpt)
    start, _, _ = load_checkpoint(vqvae_run / train.CHECKPOINT)
    assert meta["objective"] == objective and meta["step"] == 2
    assert all(torch.equal(a, b) for a, b in zip(model.vae.state_dict().values(), start.vae.state_dict().values()))
    assert not torch.equal(model.var.head.weight, start.var.head.weight)
    log = rows(tmp_path)
    assert all(np.isfinite(r["loss"]) and 0 <= r["token_acc"] <= 1 for r in log if "loss" in r)
    val = [r for r in log if "val_loss" in r]
    assert val and np.isfinite(val[-1]["val_loss"]) and 0 < val[-1]["val_abs_rel"] < 10
    assert (tmp_path / "curves.png").stat().st_size > 1000


@pytest.mark.parametrize("stage", ["vqvae", "transformer"])
def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path, stage):
    # vqvae: a restart check at step 3 needs the code hits of steps 1-2, which only the saved state has.
    common = ["--stage", stage, "--objective", "depthart", "--steps", "4", "--val-every", "100",
              "--restart-every", "3", "--lr", "1e-3"]
    straight = run(tmp_path / "a", *common)
    run(tmp_path / "b", *common, "--stop-after", "2")
    assert load_checkpoint(tmp_path / "b" / train.CHECKPOINT)[2]["step"] == 2
    resumed = run(tmp_path / "b", *common, "--resume")
    assert same_weights(straight, resumed)
    assert [r["step"] for r in rows(tmp_path / "b") if "loss" in r] == [1, 2, 3, 4]
    if stage == "vqvae":
        assert [r["restarted"] for r in rows(tmp_path / "a") if "restarted" in r] == \
               [r["restarted"] for r in rows(tmp_path / "b") if "restarted" in r]
    else:  # resuming with another objective is a mistake (a warm start is --init)
        with pytest.raises(SystemExit):
            run(tmp_path / "b", *common, "--objective", "var", "--steps", "5", "--resume")
        assert same_weights(straight, resumed)


def test_a_finished_run_extended_with_more_steps_equals_the_longer_run(tmp_path):
    """What docs/train_world.sh's equal-time runs rely on: batches and learning rate depend on the step, not
    on --steps, so a copy of a finished 2-step run resumed to 4 steps is the 4-step run."""
    common = ["--stage", "transformer", "--objective", "var", "--val-every", "3", "--lr", "1e-3"]  # b validates at 2, a not
    longer = run(tmp_path / "a", *common, "--steps", "4")
    run(tmp_path / "b", *common, "--steps", "2")
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    extended = run(tmp_path / "c", *common, "--steps", "4", "--resume")
    assert same_weights(longer, extended) and not same_weights(longer, tmp_path / "b" / train.CHECKPOINT)
    assert [r["step"] for r in rows(tmp_path / "c") if "loss" in r] == [1, 2, 3, 4]


def test_resume_with_only_resume_restores_every_setting(tmp_path, capsys):
    common = ["--stage", "vqvae", "--steps", "4", "--batch-size", "3", "--lr", "0.0037", "--val-every", "100",
              "--restart-every", "3"]
    straight = run(tmp_path / "a", *common)
    run(tmp_path / "b", *common, "--stop-after", "2")
    resumed = run_bare(tmp_path / "b", "--resume")  # nothing else: every setting from the checkpoint
    assert same_weights(straight, resumed)
    used = json.loads((tmp_path / "b" / "args.json").read_text())
    assert used["batch_size"] == 3 and used["lr"] == 0.0037 and used["train_scenes"] == 8 and used["resume"] is True
    assert used["steps"] == 4 and used["threads"] == 1
    assert Z.checkpoint_meta(resumed)["args"]["lr"] == 0.0037
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # a setting that differs from the run's: one line, nothing changed
        run_bare(tmp_path / "b", "--resume", "--steps", "6", "--batch-size", "16")
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "started with --batch-size 3, not 16" in err[0]
    assert same_weights(straight, resumed) and Z.checkpoint_meta(resumed)["step"] == 4
    run_bare(tmp_path / "b", "--resume", "--steps", "5", "--val-every", "5", "--threads", "1")  # these may change
    assert Z.checkpoint_meta(resumed)["step"] == 5


def run_bare(out, *args):
    train.main(["--out", str(out), *args])
    return out / train.CHECKPOINT


def train_main(argv, env=None, log=None) -> int:
    """train.main(argv) in a child process (below): `env` added to its environment, its output written to `log`."""
    os.environ.update(env or {})
    torch.set_num_threads(1)  # as torchrun's OMP_NUM_THREADS=1 for several processes on one machine
    if log is not None:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1), os.dup2(fd, 2)
        sys.stdout = sys.stderr = open(fd, "w", buffering=1)
    return train.main(argv)


def fork_server_context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["train"])
    return ctx


def child(argv, env=None, log=None):
    """train_main in a child process -> the started multiprocessing.Process. Children come from a fork server: one
    process that imported train.py (and torch) once, single-threaded, so each child starts in a moment where a
    fresh interpreter would spend seconds of a 2-core machine importing torch, and no lock of this process's
    threads is inherited, as it would be by a fork of this process. The server starts with the module (started)."""
    proc = fork_server_context().Process(target=_exit_with, args=(argv, env, log))
    proc.start()
    return proc


def _exit_with(argv, env, log):
    sys.exit(train_main(argv, env, log))


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    argv = SMALL + ["--stage", "transformer", "--objective", "var", "--steps", "100000", "--val-every", "100000",
                    "--save-every", "100000", "--out", str(tmp_path / "run")]
    log = tmp_path / "log.txt"
    proc = child(argv, log=log)
    deadline = time.time() + 120
    while not rows(tmp_path / "run"):  # wait for the first logged step
        assert proc.is_alive(), log.read_text()
        assert time.time() < deadline, "no step logged within 120 s"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGTERM)
    proc.join(120)
    output = log.read_text()
    assert proc.exitcode == 0, output
    assert "stopped by SIGTERM" in output and "Traceback" not in output
    _, _, meta = load_checkpoint(tmp_path / "run" / train.CHECKPOINT)
    assert 1 <= meta["step"] < 100000
    assert torch.load(tmp_path / "run" / train.STATE, weights_only=True)["step"] == meta["step"]


def run_ranks(argv, world: int = 2) -> list:
    """train.main(argv) in `world` child processes under torchrun's contract (RANK, LOCAL_RANK, WORLD_SIZE,
    MASTER_ADDR and MASTER_PORT) -> the ranks' exit codes. docs/gpu_check.sh's test runs train.py through torchrun."""
    port = free_port()
    procs = [child(argv, dict(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                              MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))) for r in range(world)]
    for p in procs:
        p.join(300)
    for p in procs:
        if p.is_alive():  # a rank whose peer failed waits in a collective: end it, the exit code says so
            p.kill()
            p.join()
    return [p.exitcode for p in procs]


@pytest.mark.parametrize("stage", ["vqvae", "transformer"])
def test_two_gloo_ranks_end_with_equal_weights(tmp_path, stage):
    codes = run_ranks(SMALL + ["--batch-size", "1", "--stage", stage, "--objective", "depthart", "--steps", "2",
                               "--val-every", "100", "--restart-every", "1", "--lr", "1e-3", "--out", str(tmp_path)])
    assert codes == [0, 0]
    ranks = json.loads((tmp_path / "ranks.json").read_text())
    assert ranks["world"] == 2 and ranks["weights_sha256"][0] == ranks["weights_sha256"][1]
    torch.manual_seed(0)  # the run's initial weights (--seed 0)
    assert ranks["weights_sha256"][0] != train.weights_digest(Z.build(Z.preset("tiny")))
    assert ranks["weights_sha256"][0] == train.weights_digest(load_checkpoint(tmp_path / train.CHECKPOINT)[0])
    assert [r["samples_per_s"] > 0 for r in rows(tmp_path) if "loss" in r] == [True, True]  # rank 0 logs alone


def fake_hypersim(root: Path):
    """The real HyperSim depth frame in the official layout, twice (train and val), with a made-up colour frame."""
    shared = ROOT.parent / "shared" / "data" / "hypersim"
    if not shared.is_dir():
        pytest.skip(f"no HyperSim sample at {shared}")
    import data
    from PIL import Image
    root.mkdir()
    shutil.copyfile(shared / data.HYPERSIM_CAMERA_CSV, root / data.HYPERSIM_CAMERA_CSV)
    src = data.hypersim_paths(shared, "ai_037_002", "cam_00", 0)
    lines = ["scene_name,camera_name,frame_id,included_in_public_release,exclude_reason,split_partition_name"]
    for frame, split in ((0, "train"), (1, "val")):
        dst = data.hypersim_paths(root, "ai_037_002", "cam_00", frame)
        for key in ("depth", "tonemap"):
            dst[key].parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src["depth"], dst["depth"])
        colour = np.random.default_rng(frame).integers(0, 256, (768, 1024, 3), dtype=np.uint8)
        Image.fromarray(colour).save(dst["tonemap"])
        lines.append(f"ai_037_002,cam_00,{frame},True,,{split}")
    (root / data.HYPERSIM_SPLIT_CSV).write_text("\n".join(lines) + "\n")
    return root


def test_trains_on_hypersim_in_the_official_layout(tmp_path):
    root = fake_hypersim(tmp_path / "hypersim")
    out = tmp_path / "run"
    train.main(["--data", "hypersim", "--data-root", str(root), "--batch-size", "1", "--threads", "1",
                "--stage", "transformer", "--objective", "var", "--steps", "1", "--out", str(out)])
    log = rows(out)
    assert np.isfinite(log[0]["loss"]) and log[0]["epoch"] == 1.0  # one frame: one step is an epoch
    assert 0 <= log[-1]["val_delta1"] <= 1


BAD_ARGUMENTS = [
    (["--data", "imagenet"], "unknown --data 'imagenet'"),
    (["--data", "hypersim"], "needs --data-root"),
    (["--data", "hypersim", "--data-root", "/nonexistent/hypersim"], "/nonexistent/hypersim: no such directory"),
    (["--resume"], "last.safetensors does not exist"),
    (["--init", "/nonexistent/model.safetensors"], "/nonexistent/model.safetensors does not exist"),
    (["--out", "/proc/depthart-test"], "cannot create or write in /proc/depthart-test"),
    (["--out", "FILE"], "exists and is a file"),
    (["--target", "normals"], "box rooms have no normals; use --data world"),
    (["--subjects", "0.3"], "--subjects 0.3: a share in (0, 1] of the scenes of --data world"),
    (["--data", "world", "--subjects", "1.5"], "--subjects 1.5: a share"),
    (["--textures", "/nonexistent/photos"], "--textures /nonexistent/photos: photographs for the scenes of --data world"),
    (["--data", "world", "--textures", "/nonexistent/photos"], "--textures /nonexistent/photos: no such folder"),
]


@pytest.mark.parametrize("args, message", BAD_ARGUMENTS)
def test_bad_arguments_are_one_clear_line(args, message, tmp_path, monkeypatch, capsys):
    """In-process, from a folder of its own (not the repository) holding a file FILE; the command line itself
    (a fresh interpreter, exit status 2) is the next test's."""
    (tmp_path / "FILE").write_text("x")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        train.main([*args, *([] if "--out" in args else ["--out", str(tmp_path)])])
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("train.py: error: ") and message in lines[0], lines


def test_a_bad_argument_from_another_directory_is_one_line_and_exit_2(started):
    # `python train.py --out FILE` from a folder of its own holding a file FILE, started with the module
    res = started["bad_argument"][0].result()
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and lines == [lines[0]] and lines[0].startswith("train.py: error: ") \
        and "exists and is a file" in lines[0], res.stderr


def test_an_empty_hypersim_split_is_a_clear_error(tmp_path, capsys):
    root = fake_hypersim(tmp_path / "hypersim")
    csv = root / "metadata_images_split_scene_v1.csv"
    csv.write_text(csv.read_text().splitlines()[0] + "\n")  # no frames listed at all
    with pytest.raises(SystemExit) as e:
        train.main(["--data", "hypersim", "--data-root", str(root), "--out", str(tmp_path / "run")])
    assert e.value.code == 2 and "no usable frames" in capsys.readouterr().err


def test_benchmark_prints_a_row_per_stage_and_objective(capsys, monkeypatch):
    """A row per stage in FP32, and in BF16 only where the CPU has it natively (emulated BF16 is ~300x slower)."""
    # the reference matmul at 256^2 rather than 2048^2 (9 runs of 17 GFLOP each, seconds on one thread): the
    # rows only need a rate to divide by
    monkeypatch.setattr(train, "matmul_rate", functools.partial(train.matmul_rate, n=256))
    threads = torch.get_num_threads()
    train.benchmark(train.parse_args(["--benchmark", "--batch-size", "2", "--threads", "1"]), warmup=1, timed=1)
    torch.set_num_threads(threads)
    out = capsys.readouterr().out
    rows = [r.split("|")[1:-1] for r in out.splitlines() if r.startswith("| ") and "GFLOP" not in r]
    precisions = ("fp32", "bf16") if train.native_bf16(torch.device("cpu")) else ("fp32",)
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        (name, p) for name in ("vqvae (image + depth)", "transformer var", "transformer depthart") for p in precisions]
    assert ("BF16 not timed" in out) != (len(precisions) == 2)
    for _, _, sps, ms, gflop, frac in rows:
        assert float(sps) > 0 and float(ms) > 0 and float(gflop) > 0 and float(frac) > 0


@pytest.mark.parametrize("native", [True, False])
def test_amp_uses_bf16_only_where_the_cpu_has_it(monkeypatch, native):
    """auto: BF16 for stage 1 on a CPU with native BF16, never for the transformer on a CPU; --amp bf16 on a CPU
    that would emulate it is a one-line refusal unless --force-bf16."""
    monkeypatch.setattr(train, "native_bf16", lambda device: native)
    cpu = torch.device("cpu")
    args = lambda *a: train.parse_args(["--out", "/tmp/unused", *a])  # noqa: E731
    assert train.use_bf16_autocast(args("--stage", "vqvae"), cpu) is native
    assert train.use_bf16_autocast(args("--stage", "transformer"), cpu) is False
    assert train.use_bf16_autocast(args("--stage", "vqvae", "--amp", "off"), cpu) is False
    assert train.use_bf16_autocast(args("--amp", "bf16", "--force-bf16"), cpu) is True
    if native:
        assert train.use_bf16_autocast(args("--amp", "bf16"), cpu) is True
    else:
        with pytest.raises(ValueError, match="no native BF16.*--force-bf16"):
            train.use_bf16_autocast(args("--amp", "bf16"), cpu)


def test_the_avx2_emulation_takes_the_paths_of_a_cpu_without_native_bf16(started):
    """docs/emulate_avx2 (README, Tests): in a process started with it, torch dispatches AVX2 kernels, the BF16
    queries answer False, and train.py refuses --amp bf16 in one line, as on an AVX2-only CPU. (The process is
    started with the module: see `started`.)"""
    proc, folder = started["avx2"]
    res = proc.result()
    assert res.stdout.split() == ["AVX2", "False"] and res.returncode == 2, res.stdout + res.stderr
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "no native BF16 (AVX2)" in err[0] and "--force-bf16" in err[0], res.stderr
    assert not list((folder / "run").iterdir())  # refused before any work: no log, no checkpoint


def load_checkpoint(path):
    model = Z.load(path)
    return model, model.cfg, Z.checkpoint_meta(path)


@pytest.mark.parametrize("objective", ["var", "depthart"])
def test_normals_train_both_stages_on_the_world(tmp_path, objective):
    """--target normals: stage 1 learns images and normal maps, stage 2 either objective from it; the
    checkpoint records the target, and --init carries it on without the flag."""
    common = ["--data", "world", "--batch-size", "4", "--val-every", "2", "--val-samples", "4", "--threads", "1",
              "--log-every", "1"]
    train.main([*common, "--target", "normals", "--stage", "vqvae", "--steps", "2", "--out", str(tmp_path / "vq")])
    train.main([*common, "--stage", "transformer", "--objective", objective, "--init", str(tmp_path / "vq" / train.CHECKPOINT),
            "--steps", "2", "--out", str(tmp_path / "tr")])
    model = Z.load(tmp_path / "tr" / train.CHECKPOINT)
    assert model.cfg.target == "normals" and Z.checkpoint_meta(tmp_path / "tr" / train.CHECKPOINT)["target"] == "normals"
    rows = train.read_log(tmp_path / "tr" / "metrics.jsonl")
    assert any("val_mean_angle" in r and 0 <= r["val_within_11.25"] <= 1 for r in rows)
    assert any("val_vqvae_ceiling_mean_angle" in r and "val_normals_l1" in r
               for r in train.read_log(tmp_path / "vq" / "metrics.jsonl"))
    assert (tmp_path / "tr" / "curves.png").is_file()


def test_textures_are_recorded_and_a_changed_folder_stops_resume(tmp_path, capsys):
    """--textures DIR: the checkpoint records the photographs' folder, count and sha256; --resume after the folder
    changed is one clear line."""
    import scenes
    from conftest import photo_folder
    folder = photo_folder(tmp_path / "photos")
    run_bare(tmp_path / "r", "--data", "world", "--stage", "vqvae", "--batch-size", "2", "--train-scenes", "4",
             "--val-samples", "2", "--val-every", "100", "--threads", "1", "--textures", str(folder), "--steps", "2",
             "--stop-after", "1")
    meta = Z.checkpoint_meta(tmp_path / "r" / train.CHECKPOINT)
    assert meta["textures"] == scenes.photo_textures(folder).describe() and meta["textures"]["photographs"] == 3
    assert meta["args"]["textures"] == str(folder)
    (folder / "photo0.png").write_bytes((folder / "photo1.png").read_bytes())  # another set, in the same folder
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_bare(tmp_path / "r", "--resume")
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "now holds another set" in err[0], err


# --- docs/gpu_check.sh at tiny size on the CPU (Gloo process group): the script itself is known to work ----------
def test_gpu_check_runs_at_tiny_size_on_the_cpu_and_writes_one_json(started):
    # bash docs/gpu_check.sh --device cpu --preset tiny --steps 2 --batch-size 2 --quick --out OUT: train.py through
    # torchrun, then benchmark.py, four fresh interpreters; started with the module (see `started`)
    proc, out = started["gpu_check"]
    proc = proc.result(timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["device"] == "cpu" and report["train"]["steps"] == 2 and report["train"]["finite"]
    parity = report["benchmark"]["token_agreement_vs_cpu"]["eager FP32 cpu"]
    assert parity == [1.0] * 6  # the CPU against itself: the parity code compares like with like
    assert "torch eager FP32 (cpu)" in report["benchmark"]["seconds_per_image"]


def test_gpu_check_refuses_a_bad_device_in_one_line(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "docs" / "gpu_check.sh"), "--device", "tpu", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "cpu or cuda" in proc.stderr
