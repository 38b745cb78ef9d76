"""How fast is DepthART inference here, and how close to the machine's limit?

    python benchmark.py --preset tiny            # seconds
    python benchmark.py --preset d16             # a few minutes (model construction alone ~10 s; the first
                                                 # run exports the ONNX graph, ~3 min, then it is cached)
    python benchmark.py --checkpoint weights/depthart_tiny.safetensors
    python benchmark.py --anchors --threads 2   # DepthART d16 against Depth Anything V2, Marigold, Depth Pro
                                                # (pip install -r requirements-anchors.txt; ~15-30 min on 2 cores)
    python benchmark.py --anchors --skip anchors --anchors-ort --var-repo VAR   # DepthART d16 against VAR-d16 only

One run, one set of weights, the same images, one image per call, medians per image:
  torch eager     model.predict: the cached greedy rollout (one transformer call per scale, KV cache)
  torch no cache  the same greedy walk, but every scale recomputes the whole prefix sequence with the
                  block-causal mask (what inference costs without a KV cache; a benchmark-only function)
  torch bf16      model.predict under torch.autocast("cpu", bfloat16), with its token agreement to FP32; only
                  on a CPU with native BF16 (AVX512-BF16 or AMX): elsewhere it is emulated, ~300x slower
  onnxruntime     the exported static graph (export.py) on the CPU provider
  tensorrt        FP32 and FP16 engines, where TensorRT and a GPU are present (skipped otherwise)
and the model's FLOPs per image (torch.utils.flop_counter on the cached path, attention included), the
FLOP/s each path achieves, and this machine's FP32 and BF16 matmul rates measured in the same run.
Random weights (residual branches scaled up so the transformer is not an identity) unless --checkpoint.

--anchors prints instead one cost table, DepthART beside published monocular depth models built offline from
their configuration classes with random weights: seconds, GFLOP and the fraction of the FP32 matmul rate
per image (see anchors_table).
"""
from __future__ import annotations

import argparse
import copy
import os
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

import data
import depthart as D
import download
import zoo as Z
import export as E
import infer_trt as I
from metrics import abs_rel, align_median
from scenes import render_world
from train import matmul_rate, native_bf16

# The official VAR-d16 class-conditional generation of one 256x256 image takes about this long on the
# 2-core development machine (figure from the issue that asked for this benchmark): d16 depth must beat it.
VAR_D16_GENERATION_SECONDS = 8.5


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter (matmuls, convolutions, attention; 2 per multiply-add; norms and pointwise ops
    are not counted), taught the CPU attention kernel."""
    # PyTorch's counter knows the GPU attention kernels, not the CPU one: count that from q, k, v shapes.
    cpu_attention = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                     lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)}
    return FlopCounterMode(display=False, custom_mapping=cpu_attention)


def count_flops(model: D.DepthART, image) -> tuple[int, dict]:
    """FLOPs of model.predict on one image: matmuls, convolutions and attention (2 per multiply-add)."""
    with flop_counter() as counter:
        model.predict(image)
    by_module = counter.get_flop_counts()
    parts = {name: sum(by_module.get(key, {}).values())
             for name, key in (("VQ-VAE encoder", "Encoder"), ("transformer", "VAR"), ("VQ-VAE decoder", "Decoder"))}
    total = counter.get_total_flops()
    parts["quantizer and rest"] = total - sum(parts.values())
    return total, parts


@torch.no_grad()
def predict_uncached(model: D.DepthART, image_B3HW) -> tuple[torch.Tensor, list]:
    """Greedy inference without a KV cache, the slow reference of model.rollout: each scale reruns the whole
    sequence so far under the block-causal mask -> (depth, tokens per scale)."""
    img_BLCv, quant, patch_nums = model.encode_image(image_B3HW), model.vae.quantize, model.cfg.patch_nums
    x_BNC = model.sequence(img_BLCv, None, 0, 1)
    z, f_hat_BCvhw = [], 0
    for si, pn in enumerate(patch_nums):
        N = x_BNC.shape[1]
        logits_BlV = model.var(x_BNC, model.var.prefix_bias_11NN[..., :N, :N])[:, -pn * pn:]
        idx_Bl, code_BlCv = D.greedy(logits_BlV, quant.embedding.weight)
        f_hat_BCvhw = f_hat_BCvhw + quant.eta(code_BlCv, si)
        z.append(idx_Bl)
        if si + 1 < len(patch_nums):  # the sequence so far and the next scale's input
            f_next_BlCv = quant.resample(f_hat_BCvhw, patch_nums[si + 1], "area").flatten(2).transpose(1, 2)
            x_BNC = torch.cat((x_BNC, model.sequence(img_BLCv, f_next_BlCv, si + 1, si + 2)), 1)
    return model.decode(f_hat_BCvhw), z


def agreement(z_ref: list, z: list) -> np.ndarray:
    """Fraction of equal tokens per scale (lists over images of lists over scales)."""
    K = len(z_ref[0])
    return np.array([np.mean([(a[k] == b[k]).float().mean().item() for a, b in zip(z_ref, z)]) for k in range(K)])


def fmt_agree(patch_nums, agree) -> str:
    return " ".join(f"{pn}x{pn}:{a:.3f}" for pn, a in zip(patch_nums, agree))


def graph_for(args, model, checkpoint_path) -> Path:
    """The exported graph for these weights, cached; exported (not re-checked: the benchmark compares
    depth itself) on first use."""
    if args.graph:
        return Path(args.graph)
    if checkpoint_path:
        return I.cached_graph(checkpoint_path, batch=1, cache_dir=args.cache_dir, log=print)
    path = (Path(args.cache_dir or I.default_cache_dir()) / f"preset-{args.preset}-seed{args.seed}"
            / f"depthart-b1-opset{E.OPSET}-{I._code_digest()}.onnx")
    if not path.exists():
        # In a child process: tracing d16 peaks at ~3.5 GB, and a process that has held that much runs
        # ONNX Runtime afterwards at half speed. The child rebuilds the same random weights from the seed.
        print(f"exporting the {args.preset} graph to {path} (once, in a child process)", flush=True)
        subprocess.run([sys.executable, __file__, "--preset", args.preset, "--seed", str(args.seed),
                        "--export-only", str(path)], check=True)
        I.prune_stale_graphs(path)
    return path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", help="tiny (default; d16 with --anchors), d16 or release (d16 with the release's plain attention), random weights")
    src.add_argument("--checkpoint", help="a .safetensors checkpoint (ours or the DepthART release's, or release after "
                                          "`python download.py release`) instead of random weights")
    p.add_argument("--download", action="store_true", help="download a --checkpoint name (release) that is not here yet")
    p.add_argument("--reps", type=int, help="timed runs per path (default: tiny 20, d16 3)")
    p.add_argument("--images", type=int, default=6, help="distinct test images, cycled (default 6)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--threads", type=int, help="torch and ONNX Runtime threads (default: torch's default)")
    p.add_argument("--graph", help="an exported .onnx of these weights to time (default: export and cache one)")
    p.add_argument("--cache-dir", help="where the exported graph is cached (default ~/.cache/depthart)")
    p.add_argument("--device", choices=["cpu", "cuda"],
                   help="time on this device instead: eager FP32, BF16 autocast, torch.compile (CUDA graphs), ONNX "
                        "Runtime's CUDA/TensorRT providers, a TensorRT engine, with token parity against the CPU")
    p.add_argument("--skip", nargs="*", default=[],
                   choices=["uncached", "bf16", "ort", "trt", "compile", "depth_pro", "anchors"],
                   help="paths not to run (depth_pro: --anchors without Depth Pro, ~20 TFLOP a call; anchors: --anchors "
                        "with DepthART's rows and VAR-d16's only, no extra packages)")
    p.add_argument("--force-bf16", action="store_true", help="time BF16 autocast even where the CPU emulates it")
    p.add_argument("--precisions", action="store_true",
                   help="only the graph precision table: FP32, all-FP16, FP16 with FP32 islands and INT8 graphs in ONNX "
                        "Runtime on --world held-out world scenes plus examples/: token agreement, depth, AbsRel, speed")
    p.add_argument("--world", type=int, default=48, help="--precisions: held-out world scenes (default 48)")
    p.add_argument("--anchors", action="store_true",
                   help="only the cost table against published depth models (Depth Anything V2 S/B/L, Marigold at 1/4/50 "
                        "steps, Depth Pro), random weights from their configurations: s/image, GFLOP/image, fraction of "
                        "the FP32 matmul rate; needs requirements-anchors.txt")
    p.add_argument("--anchors-tiny", action="store_true",
                   help="--anchors with toy-sized anchors and the tiny preset: a quick test of the code path, not a measurement")
    p.add_argument("--anchors-ort", action="store_true",
                   help="--anchors: also time DepthART's FP32 and INT8 graphs in ONNX Runtime, exporting what --graph / "
                        "--int8-graph do not give (d16 FP32: ~3.5 GB and ~3 minutes, once; cached)")
    p.add_argument("--int8-graph", help="--anchors: an INT8 graph of these weights (export.py --int8) to time")
    p.add_argument("--var-repo", default=os.environ.get("VAR_REPO"),
                   help="--anchors: a checkout of github.com/FoundationVision/VAR (default $VAR_REPO): time its d16 "
                        "class-conditional generation beside DepthART's d16, in the same interleaved rounds")
    p.add_argument("--ort-ops", metavar="GRAPH",
                   help="only ONNX Runtime's profile of one run of this .onnx graph: seconds per operator type")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--export-only", help=argparse.SUPPRESS)  # used by graph_for's child process
    args = p.parse_args(argv)
    args.anchors = args.anchors or args.anchors_tiny
    if not args.checkpoint and not args.preset:
        args.preset = "d16" if args.anchors and not args.anchors_tiny else "tiny"
    if args.checkpoint:
        args.checkpoint = str(download.resolve_arg(args.checkpoint, args.download, prog="benchmark.py"))
    return args


def build_model(args) -> tuple[D.DepthART, str]:
    if args.checkpoint:
        return Z.load(args.checkpoint), Path(args.checkpoint).name
    torch.manual_seed(args.seed)
    model = E.lively(Z.build(Z.preset(args.preset)), seed=args.seed)
    return model, f"preset {args.preset}, random weights (seed {args.seed})"


def torch_paths(args, model, images, reps: int, heavy: bool, results: dict) -> tuple[dict, list]:
    """Eager cached (the reference), no cache and BF16: their accuracy against FP32 eager, and the timed
    functions -> ({label: (fn(i), timed runs, warm-up runs)}, the reference depth per image)."""
    one = lambda i: images[i % len(images)][None]  # noqa: E731
    patch_nums = model.cfg.patch_nums
    z_ref = [model.rollout(model.encode_image(one(i)))[0] for i in range(len(images))]
    depth_ref = [model.predict(one(i)) for i in range(len(images))]
    runs = {"torch eager (cached)": (lambda i: model.predict(one(i)), reps, 1)}
    if "uncached" not in args.skip:
        z = [predict_uncached(model, one(i))[1] for i in range(min(len(images), 2 if heavy else 6))]
        results["uncached_token_agreement"] = agreement(z_ref, z).tolist()
        print(f"no-cache tokens equal to cached per scale: {fmt_agree(patch_nums, agreement(z_ref, z))}")
        runs["torch no KV cache"] = (lambda i: predict_uncached(model, one(i)), max(1, reps // 2) if heavy else reps,
                                     0 if heavy else 1)
    if "bf16" not in args.skip and not native_bf16(torch.device("cpu")) and not args.force_bf16:
        print(f"torch bf16: not timed, this CPU has no native BF16 ({torch.backends.cpu.get_cpu_capability()}; "
              "emulated BF16 runs ~100x slower than FP32; --force-bf16 times it anyway)")
    elif "bf16" not in args.skip:
        def bf16(i):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model.predict(one(i))
        z, err = [], []
        with torch.autocast("cpu", dtype=torch.bfloat16):
            for i in range(len(images)):
                z.append(model.rollout(model.encode_image(one(i)))[0])
                err.append((model.predict(one(i)).float() - depth_ref[i]).abs().mean().item())
        agree = agreement(z_ref, z)
        results.update(bf16_token_agreement=agree.tolist(), bf16_depth_mean_abs_err=float(np.mean(err)))
        print(f"BF16 tokens equal to FP32 per scale: {fmt_agree(patch_nums, agree)}; "
              f"depth mean |BF16 - FP32| {np.mean(err):.4f} (over {len(images)} images)")
        runs["torch bf16 autocast" + ("" if native_bf16(torch.device("cpu")) else " (emulated)")] = (bf16, reps, 1)
    return runs, depth_ref


def ort_path(args, model, arrays, depth_ref, reps: int, results: dict) -> dict:
    graph = graph_for(args, model, args.checkpoint)
    t0 = time.perf_counter()
    backend = I.OrtBackend(graph)
    if args.threads:
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.log_severity_level = args.threads, 3
        backend.session = ort.InferenceSession(str(graph), so, providers=backend.providers)
    results["ort_session_seconds"] = time.perf_counter() - t0
    err = max(float(np.abs(backend.predict(arrays[i][None]) - depth_ref[i].numpy()).max()) for i in range(len(arrays)))
    results["ort_depth_max_abs_err"] = err
    print(f"ONNX Runtime: session ready in {results['ort_session_seconds']:.1f} s, depth max |ORT - torch| "
          f"{err:.1e} over {len(arrays)} images")
    return {f"onnxruntime ({backend.providers[0]})": (lambda i: backend.predict(arrays[i % len(arrays)][None]), reps, 1)}


def trt_paths(args, model, arrays, depth_ref, reps: int) -> dict:
    runs = {}
    try:
        graph32 = graph_for(args, model, args.checkpoint)
        for label, graph in (("FP32", graph32), ("FP16", None)):
            if graph is None:
                graph = graph32.with_name(graph32.stem + "-fp16.onnx")
                if not graph.exists():
                    E.export(model, graph, batch=1, fp16=True, check=False, log=lambda s: None)
            backend = I.TrtBackend(E.build_engine(graph, graph.parent))
            err = max(float(np.abs(backend.predict(arrays[i][None]) - depth_ref[i].numpy()).max())
                      for i in range(len(arrays)))
            print(f"TensorRT {label}: depth max |TRT - torch| {err:.1e} over {len(arrays)} images")
            runs[f"tensorrt {label}"] = (lambda i, b=backend: b.predict(arrays[i % len(arrays)][None]), max(reps, 20), 3)
    except E.EngineUnavailable as e:
        print(f"TensorRT: skipped ({e})")
    return runs


def held_out_images(n_world: int, size: int) -> tuple[np.ndarray, list]:
    """n held-out world scenes (the test split, evaluate.py's `world`, augmentation off) and the repository's
    examples/, padded to the square -> (images (N,3,S,S) float32, [(depth, valid) per world scene])."""
    first = data.SPLIT_SEED_START["test"]
    scenes = [render_world(first + i, size=(size, size), augment=False) for i in range(n_world)]
    images = [sc["image"].transpose(2, 0, 1) for sc in scenes]
    examples = sorted((Path(__file__).resolve().parent / "examples").glob("*.png"))
    images += [data.fit_square(data.read_image(p).transpose(2, 0, 1), size)[0] for p in examples]
    return np.clip(np.stack(images), 0, 1).astype(np.float32), [(sc["depth"], sc["valid"]) for sc in scenes]


def precision_table(model: D.DepthART, n_world: int, threads: int | None, reps: int) -> dict:
    """The FP32 graph against the all-FP16 graph, the FP16 graph with FP32 islands (export.py --fp16) and the
    INT8 graph (export.py --int8), all in ONNX Runtime on the CPU: greedy-token agreement with FP32 per scale,
    |depth - FP32 depth|, AbsRel (median-scaled) on the world scenes and its relative change, s/image."""
    images, truth = held_out_images(n_world, model.cfg.image_size)
    fp32 = E.tidy(E.trace(model, 1))  # with the tokens output
    graphs = {"FP32": fp32, "FP16, all of it": E.to_fp16(fp32),
              "FP16, FP32 islands (--fp16)": E.to_fp16(fp32, keep_fp32=E.fp32_islands(fp32)),
              "INT8 dynamic (--int8)": E.to_int8(fp32)}
    bounds, K = model.bounds, len(model.cfg.patch_nums)
    rows, outs = {}, {}
    for label, graph in graphs.items():
        sess = E.ort_session(graph, threads)
        outs[label] = [sess.run(None, {"image": x[None]}) for x in images]  # [depth, tokens]
        rows[label] = {"session": sess}
    ref = outs["FP32"]
    for label, out in outs.items():
        agree = [float(np.mean([(o[1][0, bounds[k]:bounds[k + 1]] == r[1][0, bounds[k]:bounds[k + 1]]).mean()
                                for o, r in zip(out, ref)])) for k in range(K)]
        diff = [np.abs(o[0] - r[0]) for o, r in zip(out, ref)]
        rel = [abs_rel(align_median(o[0][0, 0], d, v), d, v) for o, (d, v) in zip(out, truth)]
        rows[label].update(token_agreement=agree, depth_max_abs_diff=float(max(d.max() for d in diff)),
                           depth_mean_abs_diff=float(np.mean([d.mean() for d in diff])), absrel=float(np.mean(rel)))
    for row in rows.values():
        row["absrel_change"] = row["absrel"] / rows["FP32"]["absrel"] - 1
    timed = {label: (lambda i, s=row.pop("session"): s.run(None, {"image": images[i % len(images)][None]}), reps, 1)
             for label, row in rows.items()}
    for label, seconds in time_interleaved(timed).items():
        rows[label]["seconds"] = seconds
    names = " | ".join(f"{pn}x{pn}" for pn in model.cfg.patch_nums)
    print(f"\n{len(images)} images ({n_world} held-out world scenes + {len(images) - n_world} examples), ONNX Runtime "
          f"{ort.__version__} CPU, {threads or torch.get_num_threads()} threads; AbsRel on the world scenes, median-scaled\n"
          f"| graph | tokens = FP32: {names} | max / mean |depth - FP32| | AbsRel (change) | s/image |\n"
          f"|---|{'---|' * K}---|---|---|")
    for label, r in rows.items():
        print(f"| {label} | " + " | ".join(f"{a * 100:.2f}%" for a in r["token_agreement"])
              + f" | {r['depth_max_abs_diff']:.4f} / {r['depth_mean_abs_diff']:.5f} | {r['absrel']:.4f} "
              f"({r['absrel_change'] * 100:+.2f}%) | {r['seconds']:.3f} |")
    return rows


def cuda_sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_benchmark(args, model: D.DepthART, images, reps: int, results: dict) -> dict:
    """--device cuda (or cpu, to test this path): eager FP32, BF16 autocast, torch.compile with CUDA graphs
    ("reduce-overhead"), ONNX Runtime's CUDA and TensorRT providers where present, a TensorRT engine where the
    module is, each with its tokens against eager FP32 on the CPU -> {label: median s/image}."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # FP32 means FP32 for parity
    one = lambda i: images[i % len(images)][None]  # noqa: E731
    z_cpu = [model.rollout(model.encode_image(one(i)))[0] for i in range(len(images))]
    gpu = copy.deepcopy(model).to(device).eval()
    results["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    def torch_run(fn, label):
        z = [[t.cpu() for t in fn(one(i).to(device))] for i in range(len(images))]
        agree = agreement(z_cpu, z)
        results.setdefault("token_agreement_vs_cpu", {})[label] = agree.tolist()
        print(f"{label}: tokens equal to CPU FP32 per scale {fmt_agree(model.cfg.patch_nums, agree)}", flush=True)

        def timed(i):
            fn(one(i).to(device))
            cuda_sync(device)
        return timed

    tokens = lambda x: gpu.rollout(gpu.encode_image(x))[0]  # noqa: E731
    runs = {f"torch eager FP32 ({device.type})": (torch_run(tokens, f"eager FP32 {device.type}"), reps, 2)}
    if native_bf16(device) or args.force_bf16:
        def bf16(x):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return tokens(x)
        runs[f"torch BF16 autocast ({device.type})"] = (torch_run(bf16, f"BF16 autocast {device.type}"), reps, 2)
    if "compile" not in args.skip:
        try:
            compiled = torch.compile(E.Unrolled(gpu), mode="reduce-overhead" if device.type == "cuda" else "default")
            bounds = model.bounds

            def compiled_tokens(x):
                z = compiled(x)[-1]
                return [z[:, bounds[k]:bounds[k + 1]] for k in range(len(bounds) - 1)]
            label = "torch.compile + CUDA graphs" if device.type == "cuda" else "torch.compile"
            runs[f"{label} ({device.type})"] = (torch_run(compiled_tokens, label), reps, 3)
        except Exception as e:  # a compiler that cannot take the graph: say why, time the rest
            results["compile_error"] = f"{type(e).__name__}: {e}"
            print(f"torch.compile: skipped ({results['compile_error'][:200]})")
    if "ort" not in args.skip:
        graph = graph_for(args, model, args.checkpoint)
        arrays = images.numpy()
        available = ort.get_available_providers()
        for provider in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"):
            if provider not in available or (provider != "CPUExecutionProvider" and device.type != "cuda"):
                continue
            backend = I.OrtBackend(graph, cache_dir=graph.parent, providers=list(dict.fromkeys([provider, "CPUExecutionProvider"])))
            ran = backend.providers[0]
            results.setdefault("ort_providers", {})[provider] = ran  # what ran, not what was asked for
            label = f"onnxruntime {provider}" + ("" if ran == provider else f" (fell back to {ran})")
            runs[label] = (lambda i, b=backend: b.predict(arrays[i % len(arrays)][None]), reps, 2)
    if "trt" not in args.skip:
        runs.update(trt_paths(args, model, images.numpy(), [model.predict(one(i)) for i in range(len(images))], reps))
    for label, seconds in time_interleaved(runs).items():
        results.setdefault("seconds_per_image", {})[label] = seconds
    base = results["seconds_per_image"][next(iter(runs))]
    print(f"\n{'path':<52}{'median s/image':>15}{'vs eager':>10}")
    for label, seconds in results["seconds_per_image"].items():
        print(f"{label:<52}{seconds:>15.4f}{base / seconds:>9.2f}x")
    return results


def time_interleaved(runs: dict) -> dict:
    """Every path timed in interleaved rounds, so that a change in the machine's load (other jobs on a
    shared 2-core box) hits all paths alike rather than one of them -> {label: median seconds}."""
    for fn, _, warmup in runs.values():
        for _ in range(warmup):
            fn(0)
    times = {label: [] for label in runs}
    for i in range(max(n for _, n, _ in runs.values())):
        for label, (fn, n, _) in runs.items():
            if i < n:
                t0 = time.perf_counter()
                fn(i)
                times[label].append(time.perf_counter() - t0)
    return {label: statistics.median(t) for label, t in times.items()}


def report(cfg: D.Config, timings: dict, flops: int, rate32: float, rate16: float):
    base = timings["torch eager (cached)"]
    print(f"\n{'path':<36}{'median s/image':>15}{'vs eager':>10}{'GFLOP/s':>9}{'of matmul':>10}")
    for label, seconds in timings.items():
        achieved = flops / seconds
        peak = rate16 if "bf16" in label else rate32
        print(f"{label:<36}{seconds:>15.4f}{base / seconds:>9.2f}x{achieved / 1e9:>9.1f}"
              + (f"{achieved / peak:>10.2f}" if "tensorrt" not in label else f"{'':>10}"))
    ort_label = next((k for k in timings if k.startswith("onnxruntime")), None)
    print("(uncached counts as the cached path's FLOPs; 'of matmul' is against the FP32 rate, the BF16 rate for bf16)")
    print("goals:")
    if ort_label:
        print(f"  exported graph >= 2x faster than eager: {base / timings[ort_label]:.2f}x "
              f"({'met' if base / timings[ort_label] >= 2 else 'not met'})")
    frac = flops / base / rate32
    print(f"  cached path FLOP/s >= half the FP32 matmul rate: {frac:.2f} ({'met' if frac >= 0.5 else 'not met'})")
    if cfg.patch_nums == D.Config.d16().patch_nums and cfg.width == 1024:
        for label, seconds in timings.items():
            if not label.startswith("tensorrt"):
                print(f"  {label}: {seconds:.2f} s vs VAR-d16 class-conditional generation "
                      f"{VAR_D16_GENERATION_SECONDS} s here: {seconds / VAR_D16_GENERATION_SECONDS:.2f} of it "
                      f"({'beats it' if seconds < VAR_D16_GENERATION_SECONDS else 'slower'}"
                      f"{', half or better' if seconds <= VAR_D16_GENERATION_SECONDS / 2 else ''})")


# ----------------------------------------------------------------------------------------------
# --anchors: what published monocular depth models cost on the same machine, in the same run
# ----------------------------------------------------------------------------------------------
# Every anchor is built from its configuration class with random weights (the cost of a forward pass does not
# depend on the weights, and nothing is downloaded). Depth Anything V2 (Yang et al. 2024) is a DINOv2 ViT/14 with
# a DPT head; per size: the ViT's width, depth and heads, the four blocks the head reads (1-based: the official
# repository's intermediate_layer_idx plus one), the head's per-level widths (out_channels) and fusion width
# (features), as in the official model_configs and the published -hf configurations.
DEPTH_ANYTHING_V2 = {
    "S": dict(hidden=384, layers=12, heads=6, out_indices=[3, 6, 9, 12], neck=[48, 96, 192, 384], fusion=64),
    "B": dict(hidden=768, layers=12, heads=12, out_indices=[3, 6, 9, 12], neck=[96, 192, 384, 768], fusion=128),
    "L": dict(hidden=1024, layers=24, heads=16, out_indices=[5, 12, 18, 24], neck=[256, 512, 1024, 1024], fusion=256),
}
# --anchors-tiny: the same code paths at toy widths, ordered S < B < L like the real ones (a test, not a measurement)
DEPTH_ANYTHING_V2_TINY = {
    "S": dict(hidden=32, layers=4, heads=2, out_indices=[1, 2, 3, 4], neck=[8, 16, 32, 32], fusion=16),
    "B": dict(hidden=48, layers=4, heads=3, out_indices=[1, 2, 3, 4], neck=[12, 24, 48, 48], fusion=16),
    "L": dict(hidden=64, layers=8, heads=4, out_indices=[2, 4, 6, 8], neck=[16, 32, 64, 64], fusion=32),
}
DEPTH_ANYTHING_SIZE = 518  # its inference resolution: 37x37 patches of 14
MARIGOLD_RESOLUTION = 768  # Marigold's default processing resolution (the longer side; a square image here)
MARIGOLD_STEPS = (1, 4, 50)  # the few-step checkpoints' 1 and 4, the paper's 50 DDIM steps
DEPTH_PRO_SIZE = 1536  # Depth Pro's fixed network resolution


def depth_anything_v2(size: str, tiny: bool = False):
    """Depth Anything V2 S/B/L: transformers' DepthAnythingForDepthEstimation -> (model, input side)."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
    c = (DEPTH_ANYTHING_V2_TINY if tiny else DEPTH_ANYTHING_V2)[size]
    side = 56 if tiny else DEPTH_ANYTHING_SIZE
    backbone = Dinov2Config(hidden_size=c["hidden"], num_hidden_layers=c["layers"], num_attention_heads=c["heads"],
                            out_indices=c["out_indices"], reshape_hidden_states=False, image_size=side)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=c["hidden"],
                                 neck_hidden_sizes=c["neck"], fusion_hidden_size=c["fusion"],
                                 head_hidden_size=8 if tiny else 32)
    return DepthAnythingForDepthEstimation(config).eval(), side


def marigold(tiny: bool = False):
    """Marigold (Ke et al. 2024): Stable Diffusion 2's UNet with 8 input channels (the image's latent beside the
    noisy depth latent) and SD's VAE, as diffusers builds them -> (unet, vae, processing side, text embedding)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    if tiny:
        unet = UNet2DConditionModel(in_channels=8, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                    attention_head_dim=(2, 4), cross_attention_dim=32, use_linear_projection=True)
        vae = AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1,
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
        side = 32
    else:
        # stabilityai/stable-diffusion-2's unet/config.json, in_channels 4 -> 8 as Marigold widens its first conv.
        # (diffusers' attention_head_dim holds SD2's head counts 5/10/20/20: heads of 64 channels.)
        unet = UNet2DConditionModel(in_channels=8, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                                    layers_per_block=2, attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
                                    use_linear_projection=True, norm_num_groups=32,
                                    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        # SD's VAE (stable-diffusion-2's vae/config.json): 8x down, 4 latent channels
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        side = MARIGOLD_RESOLUTION
    # Marigold conditions on the empty prompt, whose CLIP embedding it computes once per pipeline, not per image
    text = torch.randn(1, 77, unet.config.cross_attention_dim)
    return unet.eval(), vae.eval(), side, text


def depth_pro(tiny: bool = False):
    """Depth Pro (Bochkovskii et al. 2024): transformers' DepthProForDepthEstimation, ViT-L/16 at 384 for the
    patch, image and field-of-view encoders (the FoV head runs: the official inference estimates the focal
    length when none is given) -> (model, input side)."""
    from transformers import DepthProConfig, DepthProForDepthEstimation, Dinov2Config
    if tiny:
        vit = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, patch_size=16, image_size=64)
        extra = dict(intermediate_hook_ids=[3, 1], intermediate_feature_dims=[16, 16],
                     scaled_images_feature_dims=[32, 32, 16], fusion_hidden_size=16)
    else:
        vit = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, patch_size=16, image_size=384)
        extra = {}  # the class defaults are apple/DepthPro's head: hooks 11 and 5, fusion 256
    config = DepthProConfig(patch_size=vit["image_size"], use_fov_model=True, image_model_config=Dinov2Config(**vit),
                            patch_model_config=Dinov2Config(**vit), fov_model_config=Dinov2Config(**vit), **extra)
    # the network's input: the largest of its three scales (ratios 0.25, 0.5, 1) is 4 ViT tiles wide
    return DepthProForDepthEstimation(config).eval(), 4 * vit["image_size"]


def depthart_int8_graph(graph: Path) -> Path:
    """The INT8 graph (export.to_int8, as export.py --int8 writes it) of an FP32 graph, cached beside it."""
    path = graph.with_name(graph.name.replace("-opset", "-int8-opset", 1) if "-opset" in graph.name
                           else graph.stem + "-int8.onnx")  # a cached graph's name: infer_trt.cached_graph's scheme
    if not path.exists():
        import onnx
        int8 = E.to_int8(onnx.load(str(graph)))
        E.save_graph(int8, path, external=E.initializer_bytes(int8) > E.EXTERNAL_DATA_BYTES)  # atomic, data first
        I.prune_stale_graphs(path)
    return path


def ort_matmul_rate(threads: int | None, n: int = 2048, reps: int = 7) -> float:
    """FLOP/s of ONNX Runtime's own n x n FP32 product (median of reps after 2 warm-up runs): its kernels (MLAS,
    chosen by cpuid) are not torch's (MKL, oneDNN), and can be faster, which is why an ONNX Runtime row can read
    above 1 against torch's rate."""
    from onnx import TensorProto, helper
    spec = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, n]) for name in "abc"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul", spec[:2], spec[2:])
    sess = E.ort_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), threads)
    feed = {k: np.random.default_rng(0).random((n, n), np.float32) for k in "ab"}
    return 2 * n ** 3 / time_interleaved({"matmul": (lambda i: sess.run(None, feed), reps, 2)})["matmul"]


PRODUCT_OPS = ("Gemm", "MatMul", "FusedMatMul", "Conv", "FusedConv")  # ONNX Runtime's matrix-product kernels


def ort_op_times(graph: str, size: int, threads: int | None) -> dict:
    """--ort-ops: ONNX Runtime's own profile of one run of a graph (after a warm-up run) -> {op type: seconds},
    largest first: where a graph's time goes, e.g. how much of it is matrix products (Gemm, MatMul, Conv)."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = E.ort_session(graph, threads, profile=str(Path(tmp) / "profile"))
        feed = {"image": E.sample_images(1, size).numpy()}
        sess.run(None, feed)  # warm-up: its kernels' times are left out below
        sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    last_run = [e["ts"] for e in events if e.get("name") == "model_run"][-1]
    seconds = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= last_run:
            op = e["args"]["op_name"]
            seconds[op] = seconds.get(op, 0.0) + e["dur"] / 1e6
    return dict(sorted(seconds.items(), key=lambda kv: -kv[1]))


def official_var_d16(var_repo: str):
    """VAR-d16 as its own code builds it (models.build_vae_var's arguments, without its global patching of
    reset_parameters), random weights -> generate(): one 256x256 image the way VAR's demo samples it (class 207,
    guidance 4 with the batch doubled for it, top-k 900, top-p 0.95)."""
    root = Path(var_repo).resolve()
    if not ((root / "models" / "var.py").is_file() and (root / "dist.py").is_file()):
        raise SystemExit(f"benchmark.py: error: --var-repo {var_repo}: not a checkout of FoundationVision/VAR "
                         "(no models/var.py and dist.py)")
    sys.path.insert(0, str(root))  # VAR's modules import `dist` and `models` from its root
    from models.var import VAR
    from models.vqvae import VQVAE
    pns = D.Config.d16().patch_nums
    vae = VQVAE(vocab_size=4096, z_channels=32, ch=160, test_mode=True, share_quant_resi=4, v_patch_nums=pns)
    var = VAR(vae_local=vae, num_classes=1000, depth=16, embed_dim=1024, num_heads=16, drop_rate=0.0,
              attn_drop_rate=0.0, drop_path_rate=0.0, norm_eps=1e-6, shared_aln=False, cond_drop_rate=0.1,
              attn_l2_norm=True, patch_nums=pns, flash_if_available=False, fused_if_available=False).eval()
    var.init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1)
    label_B = torch.tensor([207])
    return lambda: var.autoregressive_infer_cfg(B=1, label_B=label_B, g_seed=0, cfg=4.0, top_k=900, top_p=0.95)


def depthart_group(args):
    """DepthART: PyTorch eager FP32, and the FP32 / INT8 graphs in ONNX Runtime where given or --anchors-ort;
    with --var-repo, VAR-d16's own generation in the same rounds (the cost DepthART adds to its backbone)."""
    model, name = build_model(args)
    S, name = model.cfg.image_size, args.preset or name
    image = E.sample_images(1, S)
    parts = {"torch": (lambda: model.predict(image), None)}
    rows = [(f"DepthART {name}, PyTorch FP32 eager (KV cache)", f"{S}x{S}", {"torch": 1})]
    if args.var_repo:
        parts["var"] = (official_var_d16(args.var_repo), None)
        rows.append(("VAR-d16, its own code: class-conditional generation, guidance 4 (batch 2)", "256x256", {"var": 1}))
    graph, int8 = args.graph, args.int8_graph
    if args.anchors_ort and not graph:
        graph = graph_for(args, model, args.checkpoint)
    if args.anchors_ort and graph and not int8:
        int8 = depthart_int8_graph(Path(graph))
    for label, path in (("FP32", graph), ("INT8 dynamic (INT8 MatMul weights)", int8)):
        if path:
            # spin=False: ONNX Runtime's threads would otherwise spin on the cores the next PyTorch round needs
            sess, x = E.ort_session(str(path), args.threads, spin=False), image.numpy()
            # its FLOPs are the eager path's: the graph is the same cached rollout, traced
            parts[f"ort {label}"] = (lambda s=sess: s.run(None, {"image": x}), "torch")
            rows.append((f"DepthART {name}, ONNX Runtime CPU {label}", f"{S}x{S}", {f"ort {label}": 1}))
    return "DepthART", parts, rows


def depth_anything_group(size: str, tiny: bool):
    net, side = depth_anything_v2(size, tiny)
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    return (f"Depth Anything V2 {size}", {"forward": (lambda: net(pixel_values=x).predicted_depth, None)},
            [(f"Depth Anything V2 {size} (DINOv2 ViT-{size}/14 + DPT), PyTorch FP32", f"{side}x{side}", {"forward": 1})])


def marigold_group(tiny: bool):
    """Marigold per image: VAE encode of the image, N UNet steps, VAE decode of the depth latent (one ensemble
    member; the scheduler's arithmetic is negligible). Each part is timed once per round and rows are sums, so
    50 steps cost 50 timed UNet steps without running 50."""
    unet, vae, side, text = marigold(tiny)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, side, side, generator=g) * 2 - 1  # the VAE's input range
    L = side // 2 ** (len(vae.config.block_out_channels) - 1)  # the latent's side (8x down in SD's VAE)
    latent, noisy = torch.randn(2, 1, 4, L, L, generator=g)
    parts = {"VAE encode": (lambda: vae.encode(x).latent_dist.mean, None),
             "UNet step": (lambda: unet(torch.cat([latent, noisy], 1), 999, encoder_hidden_states=text).sample, None),
             "VAE decode": (lambda: vae.decode(noisy).sample, None)}
    rows = [(f"Marigold, {n} step{'s' if n > 1 else ''} (SD2 UNet + SD VAE), PyTorch FP32",
             f"{side}x{side} (latent {L}x{L})", {"VAE encode": 1, "UNet step": n, "VAE decode": 1})
            for n in MARIGOLD_STEPS]
    return "Marigold", parts, rows


def depth_pro_group(tiny: bool):
    net, side = depth_pro(tiny)
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    return ("Depth Pro", {"forward": (lambda: net(pixel_values=x).predicted_depth, None)},
            [("Depth Pro (DINOv2 ViT-L/16 patch, image and FoV encoders), PyTorch FP32", f"{side}x{side}",
              {"forward": 1})])


def anchor_groups(args, tiny: bool) -> list:
    """The cost table's models as builders, so that each group is built only when its turn comes and dropped
    after (no two large models share the memory). A builder returns (group, parts, rows); parts: {part: (fn(),
    its FLOPs: None to count them, or the part whose count it shares)}, each timed; rows: [(row, input, {part:
    times it runs per image})]: a row is a sum of timed parts."""
    groups = [lambda: depthart_group(args)]
    if "anchors" in args.skip:
        print("Depth Anything V2, Marigold, Depth Pro: left out (--skip anchors)")
        return groups
    groups += [lambda size=size: depth_anything_group(size, tiny) for size in "SBL"]
    groups.append(lambda: marigold_group(tiny))
    import transformers
    if "depth_pro" in args.skip:
        print("Depth Pro: left out (--skip depth_pro)")
    elif hasattr(transformers, "DepthProForDepthEstimation"):  # transformers >= 4.51
        groups.append(lambda: depth_pro_group(tiny))
    else:
        print(f"Depth Pro: left out (transformers {transformers.__version__} has no DepthProForDepthEstimation)")
    return groups


def cpu_name() -> str:
    """The CPU's model name (a table says what it ran on)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def figure(x: float) -> str:
    """Three significant digits, but whole numbers from 100 up (1,248 GFLOP, not 1.25e+03)."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def table_row(r: dict) -> str:
    return (f"| {r['model']} | {r['input']} | {r['seconds']:.3g}{' (*)' if r['composed'] else ''} | "
            f"{figure(r['gflop'])} | {figure(r['gflop'] / r['seconds'])} | {r['of_matmul']:.2f} ({r['matmul_gflops']:.0f}) |")


def anchors_table(args, tiny: bool) -> list:
    """--anchors: seconds, GFLOP and the fraction of the FP32 matmul rate per image, for DepthART and the anchors
    in one run. Groups run one after another; each group's parts are timed in interleaved rounds, and each
    group's fraction is read against the FP32 matmul rate measured just before it (a busy machine moves it)."""
    out = []
    for build in anchor_groups(args, tiny):
        group, parts, rows = build()
        rate = matmul_rate(torch.float32, n=512 if tiny else 2048)
        seconds_of, flops_of, t0 = {}, {}, time.perf_counter()
        for label, (fn, flops) in parts.items():  # the counted run is also the warm-up run
            if flops is None:
                with flop_counter() as counter:
                    fn()
                flops = counter.get_total_flops()
            else:
                fn()
                flops = flops_of[flops]
            flops_of[label] = flops
        reps = args.reps or (1 if group == "Depth Pro" and not tiny else 3)  # Depth Pro: ~12 TFLOP a call
        seconds_of = time_interleaved({label: (lambda i, f=fn: f(), reps, 0) for label, (fn, _) in parts.items()})
        for row, side, recipe in rows:
            seconds = sum(n * seconds_of[p] for p, n in recipe.items())
            flops = sum(n * flops_of[p] for p, n in recipe.items())
            composed = len(recipe) > 1 or max(recipe.values()) > 1
            out.append(dict(model=row, input=side, seconds=seconds, gflop=flops / 1e9, matmul_gflops=rate / 1e9,
                            of_matmul=flops / seconds / rate, reps=reps, composed=composed,
                            parts={p: dict(times=n, seconds=seconds_of[p], gflop=flops_of[p] / 1e9)
                                   for p, n in recipe.items()}))
        print(f"{group}: done in {time.perf_counter() - t0:.0f} s (FP32 matmul {rate / 1e9:.0f} GFLOP/s before it)\n"
              + "\n".join(table_row(r) for r in out[-len(rows):]), flush=True)  # a long run shows what it has
        del parts, fn  # the group's models go before the next group's are built
    print("\n| model | input | s / image | GFLOP / image | GFLOP/s | of the FP32 matmul rate (GFLOP/s then) |\n"
          "|---|---|---|---|---|---|")
    for r in out:
        print(table_row(r))
    if any(r["composed"] for r in out):
        print("(*) the sum of parts timed separately (medians): VAE encode + N x UNet step + VAE decode")
    var = next((r for r in out if r["model"].startswith("VAR-d16")), None)
    if var:  # timed in the same interleaved rounds as DepthART's rows, so the ratio survives a busy machine
        for r in out:
            if r["model"].startswith("DepthART"):
                r["of_var_d16"] = r["seconds"] / var["seconds"]
        print("against VAR-d16's own generation: " + ", ".join(
            f"{r['model'].split(', ', 1)[1]} {r['of_var_d16']:.2f}x" for r in out if "of_var_d16" in r))
    return out



@torch.no_grad()  # inference only; a decorator, so callers (tests) keep their grad mode
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"threads": torch.get_num_threads()}
    code = measure(args, results)
    if code == 0 and args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    return code


def ort_ops_table(args, results: dict) -> int:
    """--ort-ops: print ONNX Runtime's seconds per operator type for a DepthART graph, or a one-line error (2)."""
    if not Path(args.ort_ops).is_file():
        print(f"benchmark.py: error: --ort-ops {args.ort_ops}: no such file", file=sys.stderr)
        return 2
    import onnx
    try:
        inputs = onnx.load(args.ort_ops, load_external_data=False).graph.input  # the graph's file, not its weights
    except Exception as e:  # protobuf's DecodeError and kin: not an ONNX file
        print(f"benchmark.py: error: --ort-ops {args.ort_ops}: not an ONNX graph ({type(e).__name__})", file=sys.stderr)
        return 2
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim] if len(inputs) == 1 else []
    if len(dims) != 4 or not all(dims) or inputs[0].name != "image":
        print(f"benchmark.py: error: --ort-ops {args.ort_ops}: not a DepthART graph (one static input 'image', "
              "B x 3 x S x S)", file=sys.stderr)
        return 2
    size = dims[-1]
    results["ort_op_seconds"] = times = ort_op_times(args.ort_ops, size, args.threads)
    total, products = sum(times.values()), sum(times.get(op, 0.0) for op in PRODUCT_OPS)
    print(f"{Path(args.ort_ops).name}, {size}x{size}, {results['threads']} threads: {total:.2f} s in kernels, "
          f"{products / total:.0%} of it in matrix products ({', '.join(PRODUCT_OPS)})")
    for op, sec in times.items():
        print(f"  {op:24s} {sec:7.3f} s  {sec / total:4.0%}")
    return 0


def measure(args, results: dict) -> int:
    """The run that the arguments ask for, its figures added to results -> exit status."""
    if args.ort_ops:
        return ort_ops_table(args, results)
    if args.anchors and not args.export_only:
        results.update(cpu=cpu_name(), capability=torch.backends.cpu.get_cpu_capability(),
                       native_bf16=native_bf16(torch.device("cpu")), torch=torch.__version__, onnxruntime=ort.__version__)
        if "anchors" not in args.skip:
            results.update(transformers=version("transformers"), diffusers=version("diffusers"))
        results["ort_matmul_fp32_gflops"] = ort_matmul_rate(args.threads, n=512 if args.anchors_tiny else 2048) / 1e9
        print(f"{results['cpu']} (torch kernels: {results['capability']}, native BF16: {results['native_bf16']}), "
              f"{results['threads']} threads; " + ", ".join(f"{k} {results[k]}" for k in
                                                             ("torch", "onnxruntime", "transformers", "diffusers") if k in results)
              + "; random weights; one image per call, medians of timed runs after a warm-up run that counts the FLOPs; "
              f"ONNX Runtime's own FP32 matmul: {results['ort_matmul_fp32_gflops']:.0f} GFLOP/s", flush=True)
        results["anchors"] = anchors_table(args, tiny=args.anchors_tiny)
        return 0
    t0 = time.perf_counter()
    model, name = build_model(args)
    cfg = model.cfg
    results["model_seconds"] = time.perf_counter() - t0
    if args.export_only:
        E.export(model, args.export_only, batch=1, check=False, log=lambda s: print("  " + s))
        return 0
    heavy = cfg.width >= 512
    reps = args.reps or (3 if heavy else 20)
    if args.precisions:
        results["precisions"] = precision_table(model, args.world, args.threads, reps)
        return 0
    images = E.sample_images(args.images, cfg.image_size)
    if args.device:
        if args.device == "cuda" and not torch.cuda.is_available():
            print("benchmark.py: error: --device cuda: no CUDA GPU is visible to torch", file=sys.stderr)
            return 2
        device_benchmark(args, model, images, reps, results)
        return 0
    print(f"{name}: {cfg.image_size}x{cfg.image_size}, {len(cfg.patch_nums)} scales, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, built in {results['model_seconds']:.1f} s; "
          f"{torch.get_num_threads()} threads; {reps} timed runs per path, 1 image per call")

    rate32, rate16 = matmul_rate(torch.float32), matmul_rate(torch.bfloat16)
    results.update(matmul_fp32_flops=rate32, matmul_bf16_flops=rate16)
    print(f"matmul 2048x2048: FP32 {rate32 / 1e9:.0f} GFLOP/s, BF16 {rate16 / 1e9:.0f} GFLOP/s")
    flops, parts = count_flops(model, images[:1])
    results.update(flops_per_image=flops, flops_parts=parts)
    print(f"FLOPs per image (cached path): {flops / 1e9:.2f} G = "
          + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in parts.items()))

    runs, depth_ref = torch_paths(args, model, images, reps, heavy, results)  # accuracy first, untimed
    arrays = images.numpy()
    if "ort" not in args.skip:
        runs.update(ort_path(args, model, arrays, depth_ref, reps, results))
    if "trt" not in args.skip:
        runs.update(trt_paths(args, model, arrays, depth_ref, reps))
    timings = time_interleaved(runs)
    results["matmul_fp32_flops_end"] = rate32_end = matmul_rate(torch.float32)
    if abs(rate32_end / rate32 - 1) > 0.2:
        print(f"warning: the FP32 matmul rate moved from {rate32 / 1e9:.0f} to {rate32_end / 1e9:.0f} GFLOP/s during "
              f"the run: the machine was busy, absolute figures are unreliable (ratios less so: paths were interleaved)")
    results["seconds_per_image"] = timings
    report(cfg, timings, flops, rate32, rate16)
    return 0


if __name__ == "__main__":
    sys.exit(main())
