"""Export DepthART to one static ONNX graph, check it against PyTorch, and build TensorRT engines.

The preset's scale schedule is fixed (tiny: 6 scales, d16: 10), so the whole of inference unrolls into a
single graph with static shapes: image encoding and the image prefix, every cached transformer step with
greedy argmax, the residual accumulation of the latent, and the decoder. The KV cache grows by
concatenation from step to step, which is a new static shape per step rather than a loop, so the graph
has no Loop, If or ScatterND node and TensorRT can compile it whole (a growing KV cache inside an ONNX
Loop has no static shape per iteration, which TensorRT needs).

    python export.py --checkpoint weights/depthart_small.safetensors --out depthart_small.onnx
    python export.py --preset tiny --out /tmp/tiny.onnx --batch 2 --all-scales --fp16
    python export.py --checkpoint weights/depthart_small.safetensors --max-scale 3 --out small_k3.onnx  # anytime
    python export.py --checkpoint ... --out model.onnx --engine          # needs TensorRT and a GPU

What the exporter writes and how it is checked:
  * the TorchScript tracer (torch.onnx.export(dynamo=False)) runs `DepthART.rollout` once and records
    every step of its Python loop; opset 17 (the first with LayerNormalization as one operator, which
    TensorRT 8.6+ and every ONNX Runtime since 1.12 parse; nothing in the model needs a newer opset);
  * a small clean-up pass folds the tracer's shape arithmetic (Shape -> Gather -> Concat chains over
    static shapes) into constants, drops Identity aliases and shares identical initializers;
  * the graph is refused if it holds a Loop, If, Scan or ScatterND node, an opset outside 17..20, or a
    value whose shape is not fully static after ONNX shape inference;
  * ONNX Runtime (CPU) runs it beside PyTorch on random and structured images: the tokens of every scale
    must be identical and the depth within 1e-4 (FP32); FP16 graphs report per-scale token agreement and
    the depth error instead;
  * the initializer bytes are compared with the model's parameter bytes: unrolling shares weights
    between steps, so the ratio stays near 1 (constant resampling matrices add a little, weights the
    graph never reads, like unused class-embedding rows, take a little away);
  * graphs with more than 512 MiB of weights (d16: 1.6 GB in FP32, 0.8 GB in FP16) keep them as ONNX
    external data in NAME.onnx.data beside NAME.onnx, so no size or batch meets protobuf's 2 GiB limit;
    ONNX Runtime and TensorRT read both files from the graph's path. Every check runs on the written files;
  * the weights never pass through the graph in memory (trace_apart): the tracer exports without them, the
    nodes that read only weights are computed in torch as views of the model's tensors, and save_graph streams
    each weight into NAME.onnx.data; PyTorch's answers on the check images are computed before ONNX Runtime
    loads the written graph without pre-packed weight copies; the exporter's own shape inference runs without
    the weights' values (shape_inference_without_weights), and the command line frees the model's weights before
    ONNX Runtime maps the written ones (export(keep_model=False)). That keeps the d16 export near one copy of
    the weights: 3.5 GB at its peak (README: `/usr/bin/time -v python export.py --preset d16`).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import dataclasses
import gc
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import depthart as D
import download
import zoo as Z
from data import atomic_write, writable_dir

OPSET = 17
OPSET_RANGE = (17, 20)  # what TensorRT 10's parser accepts (opset 9..20) intersected with what we allow
FORBIDDEN_OPS = {"Loop", "If", "Scan", "ScatterND", "ScatterElements", "Scatter"}
FOLD_MAX_ELEMENTS = 4096  # constant-fold only small results (shape arithmetic), never copies of weights
EXTERNAL_DATA_BYTES = 2**29  # graphs with more weight bytes than this store them in NAME.onnx.data


# ----------------------------------------------------------------------------------------------
# The unrolled inference module and its trace
# ----------------------------------------------------------------------------------------------
def file_sha256(path, chunk=1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class Unrolled(nn.Module):
    """image (B,3,H,W) in [0,1] -> depth (B,1,H,W) [, depth_scales (B,K,H,W)], tokens (B,L) int64.

    Exactly DepthART.predict (max_scale k: zoo.anytime_predict): tracing records each scale of the rollout as its
    own static step.
    `tokens` concatenates the greedy token maps of all scales (scale k is tokens[:, bounds[k]:bounds[k+1]]);
    it exists so that the export can be checked token for token, and is dropped unless asked for.
    A normals model (cfg.target "normals") outputs normals (B,3,H,W) [, normals_scales (B,K,3,H,W)] instead.
    """

    def __init__(self, model: D.DepthART, all_scales: bool = False, max_scale: int | None = None):
        super().__init__()
        self.model, self.all_scales, self.max_scale = model, all_scales, max_scale

    def forward(self, image_B3HW):
        m = self.model
        z, f_hats, _ = m.rollout(m.encode_image(image_B3HW), num_scales=self.max_scale)
        if self.all_scales:
            scales = m.decode_scales(f_hats)
            return Z.last_scale(scales), scales, torch.cat(z, 1)
        return m.decode(f_hats[-1]), torch.cat(z, 1)


def output_names(all_scales: bool, target: str = "depth") -> list[str]:
    """The graph's outputs, named after the target: depth[, depth_scales] or normals[, normals_scales], tokens."""
    return [target] + ([f"{target}_scales"] if all_scales else []) + ["tokens"]


def trace(model: D.DepthART, batch: int = 1, all_scales: bool = False, opset: int = OPSET, max_scale: int | None = None):
    """The whole graph as one onnx.ModelProto, weights inside (trace_apart, then every weight's bytes filled in)."""
    graph, tensors = trace_apart(model, batch, all_scales, opset, max_scale)
    return fill_weights(graph, tensors)


def trace_apart(model: D.DepthART, batch: int = 1, all_scales: bool = False, opset: int = OPSET,
                max_scale: int | None = None):
    """torch.onnx.export with the TorchScript tracer, weights kept apart -> (graph, tensors).

    The graph (with the `tokens` output) holds no weight bytes: every weight is an initializer stub (name, type,
    shape, ONNX external data with no file yet), and `tensors` maps each stub's name to the torch tensor that
    holds its values, a view of the model's parameters where it can be (a transposed weight is a transposed
    view), so the export never holds a second copy of the weights. save_graph streams them to NAME.onnx.data.

    How: the tracer exports with export_params=False (weights stay graph inputs named after the state dict) and
    without its own constant folding, which would build a transposed copy of every MatMul weight in memory;
    fold_weights then computes in torch, as that folding did, every node that reads only weights and constants.
    """
    S = model.cfg.image_size
    image = torch.rand(batch, 3, S, S, generator=torch.Generator().manual_seed(0))
    unrolled = Unrolled(model, all_scales, max_scale).eval()
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings(), shape_inference_without_weights():
        warnings.simplefilter("ignore")  # TracerWarnings about Python ints from shapes: shapes are fixed here
        torch.onnx.export(unrolled, (image,), buf, dynamo=False, export_params=False,
                          opset_version=opset, input_names=["image"], output_names=output_names(all_scales, model.cfg.target),
                          do_constant_folding=False)
    graph = onnx.load_from_string(buf.getvalue())
    del buf
    state = {name: t.detach() for name, t in unrolled.state_dict(keep_vars=True).items()}
    weights = [i.name for i in graph.graph.input if i.name != "image"]
    if missing := [w for w in weights if w not in state]:
        raise RuntimeError(f"the tracer made graph inputs that are not model weights: {', '.join(missing[:5])}")
    tensors = {w: state[w] for w in weights}
    image_input = [i for i in graph.graph.input if i.name == "image"]
    del graph.graph.input[:]
    graph.graph.input.extend(image_input)
    graph = share_initializers(fold_weights(graph, tensors), tensors)
    return graph, tensors


@contextlib.contextmanager
def shape_inference_without_weights():
    """torch.onnx.export's TorchScript path runs ONNX shape inference over the whole graph with every weight's
    value at hand (its params_dict), and keeps values it derives from them: at d16 that pass alone took resident
    memory from 3.0 to 7.5 GB. Every shape here is static and none is computed from a weight's values (the
    weights are graph inputs with traced shapes), so the pass runs on shapes alone; tests/test_export.py checks
    that the graph comes out byte-identical either way."""
    jit_pass = torch._C._jit_pass_onnx_graph_shape_type_inference
    torch._C._jit_pass_onnx_graph_shape_type_inference = lambda graph, params, opset: jit_pass(graph, {}, opset)
    try:
        yield
    finally:
        torch._C._jit_pass_onnx_graph_shape_type_inference = jit_pass


def _stub(name: str, tensor: torch.Tensor):
    """An initializer with name, type and shape whose bytes live elsewhere (ONNX external data, file not yet set)."""
    t = TensorProto(name=name, dims=list(tensor.shape),
                    data_type=helper.np_dtype_to_tensor_dtype(np.dtype(str(tensor.dtype).removeprefix("torch."))))
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="")
    return t


def is_stub(init) -> bool:
    return init.data_location == TensorProto.EXTERNAL


def _const_arrays(graph) -> dict:
    return {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.graph.node
            if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value"}


def _torch_op(node, args: list, consts: dict):
    """ONNX node -> its output, computed with torch on torch tensors, or None for an op left to the graph.

    The ops torch.onnx.export's folding computes on this model's weights; reductions (ReduceSum of the codebook
    squared) it leaves to the runtime, and so does this, so the graph computes what it computed before."""
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    op, x = node.op_type, args[0]

    def axes_input(i):  # opset 13+: axes is an input
        return [int(v) for v in consts[node.input[i]].reshape(-1)] if len(node.input) > i and node.input[i] else None
    if op == "Identity":
        return x
    if op == "Transpose":
        return x.permute(a.get("perm", list(range(x.dim()))[::-1]))
    if op == "Unsqueeze":
        for axis in sorted(ax % (x.dim() + len(axes_input(1))) for ax in axes_input(1)):
            x = x.unsqueeze(axis)
        return x
    if op == "Squeeze":
        axes = axes_input(1)
        return x.squeeze() if axes is None else x.squeeze(tuple(ax % x.dim() for ax in axes))
    if op == "Concat":
        return torch.cat(args, a["axis"])
    if op in ("Add", "Sub", "Mul", "Div", "Pow"):
        return {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "Pow": torch.pow}[op](x, args[1])
    if op == "Slice":
        starts, ends, axes, steps = (axes_input(i) for i in (1, 2, 3, 4))
        index = [slice(None)] * x.dim()
        for start, end, axis, step in zip(starts, ends, axes or range(len(starts)), steps or [1] * len(starts)):
            if step <= 0:
                return None  # torch slices forward only; such a node stays in the graph
            index[axis % x.dim()] = slice(start, end, step)  # Python slicing clamps as ONNX does
        return x[tuple(index)]
    if op == "Gather":
        axis = a.get("axis", 0) % x.dim()
        idx = args[1].long() % x.shape[axis]
        return x.index_select(axis, idx.reshape(-1)).reshape(x.shape[:axis] + idx.shape + x.shape[axis + 1:])
    return None


def fold_weights(graph, tensors: dict):
    """Compute in torch every node whose inputs are all weights (names in `tensors`) or Constants, at least one a
    weight: its outputs join `tensors` (views where the op allows), the node leaves the graph, and the weights
    the graph still reads become initializer stubs. The same values torch.onnx.export's constant folding would
    store (the same torch kernels on the same bytes), without a copy of the weights."""
    consts = _const_arrays(graph)
    nodes = []
    for node in graph.graph.node:
        ins = [i for i in node.input if i]
        value = None
        if node.domain == "" and len(node.output) == 1 and any(i in tensors for i in ins) \
                and all(i in tensors or i in consts for i in ins):
            args = [tensors[i] if i in tensors else torch.from_numpy(np.array(consts[i])) for i in node.input if i]
            value = _torch_op(node, args, consts)
        if value is None:
            nodes.append(node)
        else:
            tensors[node.output[0]] = value
    del graph.graph.node[:]
    graph.graph.node.extend(nodes)
    read = {i for n in graph.graph.node for i in n.input}
    for name in [k for k in tensors if k not in read]:
        del tensors[name]
    inits = [i for i in graph.graph.initializer if not is_stub(i)] + [_stub(name, t) for name, t in tensors.items()]
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(inits)
    return prune(graph)  # drops nodes no output needs (Constants that only fed folds)


def fill_weights(graph, tensors: dict):
    """Put every stub's bytes (from `tensors`) inside the graph, in place: a graph like any other."""
    for init in graph.graph.initializer:
        if is_stub(init):
            init.raw_data = np.ascontiguousarray(tensors[init.name].numpy()).tobytes()
            init.data_location = TensorProto.DEFAULT
            del init.external_data[:]
    return graph


# ----------------------------------------------------------------------------------------------
# Graph clean-up: fold static shape arithmetic, drop aliases, share identical initializers
# ----------------------------------------------------------------------------------------------
def _static_shapes(model) -> dict:
    g = model.graph
    shapes = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(d.dim_value for d in dims)
    for init in g.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def fold_shape_arithmetic(model):
    """Replace Shape nodes of statically shaped values, and small computations on constants only, by
    Constant nodes. Initializers (weights) are never inputs to a fold, so no weight is ever copied."""
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = _static_shapes(model)
    opsets = {o.domain: o.version for o in model.opset_import}
    consts, nodes = {}, []
    for node in model.graph.node:
        values = None
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Shape" and node.input[0] in shapes:
            attrs = {a.name: a.i for a in node.attribute}
            dims = shapes[node.input[0]]
            values = [np.array(dims[attrs.get("start", 0):attrs.get("end", len(dims))], dtype=np.int64)]
        elif node.domain == "" and node.input and all(i == "" or i in consts for i in node.input):
            values = ReferenceEvaluator(node, opsets=opsets).run(None, {i: consts[i] for i in node.input if i})
            if any(np.asarray(v).size > FOLD_MAX_ELEMENTS for v in values):
                values = None
        if values is None:
            nodes.append(node)
            continue
        for name, value in zip(node.output, values):
            value = np.asarray(value)
            consts[name] = value
            nodes.append(helper.make_node("Constant", [], [name], name=f"{node.name or name}_folded",
                                          value=numpy_helper.from_array(value, name)))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _rename_inputs(model, mapping: dict):
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in mapping:
                node.input[i] = mapping[name]


def drop_identities(model):
    """Identity nodes only alias a value (the tracer emits them for reused constants): rewire consumers."""
    outputs = {o.name for o in model.graph.output}
    alias, keep = {}, []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.output[0] not in outputs:
            alias[node.output[0]] = alias.get(node.input[0], node.input[0])
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    _rename_inputs(model, alias)
    return model


def share_initializers(model, tensors: dict | None = None):
    """Initializers with identical type, shape and bytes become one (unrolled steps read the same weight).
    tensors: the bytes of the stubs of a graph that keeps its weights apart (trace_apart); a shared stub's copies
    leave it, in place. Stubs are shared among stubs only, inline initializers among inline ones."""
    seen, alias, keep = {}, {}, []
    for init in model.graph.initializer:
        stub = is_stub(init)
        if stub and tensors is None:  # bytes not at hand: left as they are
            keep.append(init)
            continue
        data = memoryview(np.ascontiguousarray(tensors[init.name].numpy())) if stub else \
            init.raw_data or numpy_helper.to_array(init).tobytes()
        key = (stub, init.data_type, tuple(init.dims), hashlib.sha256(data).digest())
        if key in seen:
            alias[init.name] = seen[key]
        else:
            seen[key] = init.name
            keep.append(init)
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    _rename_inputs(model, alias)
    for name in alias.keys() & (tensors or {}).keys():
        del tensors[name]
    return model


def prune(model):
    """Remove nodes and initializers no graph output depends on."""
    needed = {o.name for o in model.graph.output}
    keep = []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    del model.graph.node[:]
    model.graph.node.extend(reversed(keep))
    inits = [i for i in model.graph.initializer if i.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    return model


def fold_pads_into_convs(model):
    """A zero Pad whose only reader is a Conv becomes that Conv's own padding. torch has no asymmetric convolution
    padding, so VAR's stride-2 downsampling (F.pad right and bottom, then the convolution) traces as Pad + Conv;
    ONNX Runtime's CPU Pad then copies each full-resolution activation, about 6% of the d16 graph's kernel time
    (`benchmark.py --ort-ops`). ONNX's Conv takes begin and end pads per spatial axis, and the zeros are the same."""
    consts = _const_arrays(model)
    readers = Counter(i for node in model.graph.node for i in node.input)
    outputs = {o.name for o in model.graph.output}
    zero_pads = {}  # Pad output -> (its input, the spatial begin and end pads)
    for node in model.graph.node:
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
        if node.op_type != "Pad" or node.domain or mode != b"constant" or len(node.input) < 2 \
                or node.input[1] not in consts:  # (before opset 11 the pads were an attribute: left alone)
            continue
        value = node.input[2] if len(node.input) > 2 else ""
        if (value and (value not in consts or np.any(consts[value] != 0))) or (len(node.input) > 3 and node.input[3]):
            continue  # a non-zero fill, or an axes input
        pads = consts[node.input[1]].astype(np.int64)
        r = len(pads) // 2
        if r >= 3 and not pads[:2].any() and not pads[r:r + 2].any() and (pads >= 0).all() \
                and readers[node.output[0]] == 1 and node.output[0] not in outputs:
            zero_pads[node.output[0]] = (node.input[0], pads[2:r], pads[r + 2:])
    for node in model.graph.node:
        if node.op_type != "Conv" or node.domain or node.input[0] not in zero_pads:
            continue
        attrs = {a.name: a for a in node.attribute}
        if "auto_pad" in attrs and attrs["auto_pad"].s not in (b"", b"NOTSET"):
            continue
        source, begin, end = zero_pads[node.input[0]]
        own = list(attrs["pads"].ints) if "pads" in attrs else [0] * (2 * len(begin))
        k = len(own) // 2
        merged = [int(x) for x in np.concatenate([np.add(own[:k], begin), np.add(own[k:], end)])]
        if "pads" in attrs:
            node.attribute.remove(attrs["pads"])
        node.attribute.append(helper.make_attribute("pads", merged))
        node.input[0] = source  # the Pad now has no reader: prune removes it
    return model


def tidy(model, tensors: dict | None = None):
    """The clean-up pass: fold shape arithmetic, drop aliases, share initializers, prune, re-infer shapes.
    tensors: the weights of a graph that keeps them apart (trace_apart), which fold_weights extends in place
    as folded shape arithmetic lets more weight-only nodes fold (a Slice of the position embedding)."""
    for _ in range(8):  # each round's folds can make more shapes static for the next
        count = len(model.graph.node)
        model = fold_shape_arithmetic(model)
        if tensors is not None:
            model = fold_weights(model, tensors)
        model = prune(drop_identities(model))
        del model.graph.value_info[:]
        if len(model.graph.node) == count:
            break
    model = prune(share_initializers(fold_pads_into_convs(model), tensors))
    del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def keep_outputs(model, names):
    """A copy of the graph with only the named outputs (and what they need)."""
    model = copy.deepcopy(model)
    outputs = [o for o in model.graph.output if o.name in names]
    del model.graph.output[:]
    model.graph.output.extend(outputs)
    return prune(model)


# ----------------------------------------------------------------------------------------------
# Checks: deployable operators, static shapes, weight bytes
# ----------------------------------------------------------------------------------------------
def op_counts(model) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def graph_problems(model) -> list[str]:
    """Everything that would stop a static TensorRT build: forbidden operators, opset, non-static shapes."""
    problems = []
    forbidden = sorted(set(op_counts(model)) & FORBIDDEN_OPS)
    if forbidden:
        problems.append(f"forbidden operators: {', '.join(forbidden)}")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        problems.append(f"opset {opset} outside {OPSET_RANGE[0]}..{OPSET_RANGE[1]}")
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    shapes = _static_shapes(inferred)
    produced = [o for n in inferred.graph.node for o in n.output if o]
    dynamic = [name for name in produced + [i.name for i in inferred.graph.input] if name not in shapes]
    if dynamic:
        problems.append(f"{len(dynamic)} values without a static shape, e.g. {', '.join(dynamic[:5])}")
    return problems


def initializer_bytes(model) -> int:
    """Bytes of every constant the graph holds: initializers plus Constant node tensors."""
    total = sum(len(i.raw_data) or _tensor_nbytes(i) for i in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    total += len(a.t.raw_data) or _tensor_nbytes(a.t)
    return total


def _tensor_nbytes(t) -> int:
    if is_stub(t):
        return int(np.prod(t.dims, dtype=np.int64)) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return numpy_helper.to_array(t).nbytes


def parameter_bytes(model: nn.Module, bytes_per_element: int | None = None) -> int:
    return sum(p.numel() * (bytes_per_element or p.element_size()) for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# FP16 with FP32 islands (TensorRT 11 is strongly typed: a graph's tensor types are its precision)
# ----------------------------------------------------------------------------------------------
# Where half precision changes what the graph decides. The shipped small model's logits reach ~20, where FP16
# steps by 0.0156, and its best two logits lie within 0.01 at ~2.6% of positions, so the head's product and
# ArgMax stay FP32; the codebook distance |f|^2 + |e|^2 - 2 f.e cancels, so it and ArgMin stay FP32; F.normalize's
# epsilon 1e-12 is 0 in FP16 (a zero vector would give NaN), so the L2 normalizations stay FP32. Measured on the
# shipped model (README, Inference, export and TensorRT: benchmark.py --precisions), those three alone left the
# 8x8 tokens at 99.4% agreement; the multi-scale residual quantization (rest - eta scale after scale, through the
# resampling matrices and Phi) and the transformer's residual stream (its sums, AdaLN modulations, LayerNorms and
# softmax: what torch.autocast also keeps FP32) had to join them before every token of 50 images matched. The
# products that carry the FLOPs (every MatMul, Gemm and Conv outside the islands, the encoder and decoder whole)
# stay FP16. Normalization statistics alone ("norms") did not help.
FP16_KEEP = ("head", "codebook", "l2norm", "quantizer", "stream")  # the default of export.py --fp16
FP16_KEEP_CHOICES = FP16_KEEP + ("norms",)
NORM_OPS = {"LayerNormalization", "InstanceNormalization", "GroupNormalization"}
QUANTIZER_SCOPES = ("/quantize/", "/qresi_ls", "/resample")  # tracer scopes of depthart.ResidualQuantizer and its parts
TRANSFORMER_SCOPES = ("/var/", "/word_embed", "/image_shortcut", "/lvl_embed", "/class_emb")  # depthart.VAR's
PRODUCTS = {"MatMul", "Gemm", "Conv"}
_LOGIT_PATH = {"Slice", "Cast", "Add", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten"}
_DISTANCE_PATH = {"Sub", "Add", "Mul", "ReduceSum", "MatMul", "Gemm", "Pow", "Neg"}


def fp32_islands(model, keep=FP16_KEEP) -> set[str]:
    """The nodes (by first output) an FP16 graph keeps in FP32, by part:
      head       ArgMax and the logits' path up to and including the head's MatMul/Gemm;
      codebook   ArgMin and the distance formula above it (Sub, Add, Mul, ReduceSum, MatMul), up to the
                 Reshape/Transpose that flattens the latent;
      l2norm     ReduceL2 and the Clip (epsilon), Expand and Div of F.normalize below it;
      quantizer  every node the tracer scoped inside the VQ-VAE's quantizer (QUANTIZER_SCOPES);
      stream     every node of the transformer (TRANSFORMER_SCOPES) and of the rollout's own arithmetic (the
                 unscoped nodes: code lookups, latent sums) except the products (MatMul, Gemm, Conv);
      norms      LayerNormalization, InstanceNormalization, GroupNormalization."""
    unknown = set(keep) - set(FP16_KEEP_CHOICES)
    if unknown:
        raise ValueError(f"unknown FP32 part(s) {', '.join(sorted(unknown))}; choose from {', '.join(FP16_KEEP_CHOICES)}")
    g = model.graph
    producer = {o: n for n in g.node for o in n.output if o}
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    kept = set()

    def climb(node, allowed, stop_after=()):
        todo, seen = [node], set()
        while todo:
            n = todo.pop()
            if n.output[0] in seen:
                continue
            seen.add(n.output[0])
            kept.add(n.output[0])
            if n.op_type not in stop_after:
                todo += [producer[i] for i in n.input if i in producer and producer[i].op_type in allowed]

    for n in g.node:
        if n.op_type == "ArgMax" and "head" in keep:
            climb(n, _LOGIT_PATH | {"MatMul", "Gemm"}, stop_after={"MatMul", "Gemm"})
        elif n.op_type == "ArgMin" and "codebook" in keep:
            climb(n, _DISTANCE_PATH)
        elif n.op_type == "ReduceL2" and "l2norm" in keep:
            todo = [n]
            while todo:
                m = todo.pop()
                kept.add(m.output[0])
                if m.op_type != "Div":
                    todo += [c for c in consumers.get(m.output[0], []) if c.op_type in ("Clip", "Expand", "Div")]
        elif n.op_type in NORM_OPS and "norms" in keep:
            kept.add(n.output[0])
        elif "quantizer" in keep and n.op_type != "Constant" and n.name.startswith(QUANTIZER_SCOPES):
            kept.add(n.output[0])
        elif "stream" in keep and n.op_type not in PRODUCTS | {"Constant"} \
                and (n.name.startswith(TRANSFORMER_SCOPES) or n.name.count("/") == 1):
            kept.add(n.output[0])
    return kept


def to_fp16(model, keep_io_fp32: bool = True, keep_fp32=()):
    """FP32 graph -> FP16 graph, except the nodes named (by first output) in keep_fp32, which stay FP32.

    Float initializers and Constants become float16 where an FP16 node reads them and stay float32 where a
    kept node does (both copies exist when both do, so a kept Clip keeps its 1e-12); Casts to float in FP16
    code cast to float16; a Cast is inserted wherever a value crosses between the two precisions. TensorRT 11
    builds FP16 kernels only where the graph's tensors are FP16 (its networks are strongly typed), so the
    kept nodes run FP32 there too. With keep_io_fp32 the input `image` and float outputs stay float32.
    Resize's `roi` and `scales` inputs stay float32 by the ONNX spec.
    """
    model = copy.deepcopy(model)
    g = model.graph
    keep_fp32 = set(keep_fp32)
    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    typed = onnx.shape_inference.infer_shapes(model)
    elem = {vi.name: vi.type.tensor_type.elem_type
            for vi in list(typed.graph.input) + list(typed.graph.value_info) + list(typed.graph.output)}
    elem.update({i.name: i.data_type for i in g.initializer})
    fp32_only = {name for n in g.node if n.op_type == "Resize" for name in n.input[1:3] if name}

    def half(t, name):
        a = numpy_helper.to_array(t)
        return numpy_helper.from_array(np.clip(a, -65504, 65504).astype(np.float16), name)

    # constants: name -> the name of its float16 copy (made on first use by an FP16 node)
    constants = {i.name: i for i in g.initializer if i.data_type == FLOAT}
    constants.update({n.output[0]: n.attribute[0].t for n in g.node if n.op_type == "Constant"
                      and n.attribute[0].name == "value" and n.attribute[0].t.data_type == FLOAT})
    halves, new_inits, nodes, casts = {}, [], [], {}
    home = {vi.name: FLOAT if keep_io_fp32 else HALF for vi in g.input}  # each float value's precision
    for vi in g.input:
        if vi.type.tensor_type.elem_type == FLOAT and not keep_io_fp32:
            vi.type.tensor_type.elem_type = HALF

    def as_precision(name, want):
        if elem.get(name) != FLOAT or name in fp32_only:
            return name
        if name in constants:
            if want == FLOAT:
                return name
            if name not in halves:
                halves[name] = name + "__fp16"
                new_inits.append(half(constants[name], halves[name]))
            return halves[name]
        if home.get(name, want) == want:
            return name
        key = (name, want)
        if key not in casts:
            casts[key] = f"{name}__to_{'fp32' if want == FLOAT else 'fp16'}"
            nodes.append(helper.make_node("Cast", [name], [casts[key]], name=casts[key], to=want))
        return casts[key]

    for node in g.node:
        if node.op_type == "Constant" and node.output[0] in constants:
            nodes.append(node)  # read as float32 by kept nodes; FP16 nodes read its __fp16 initializer copy
            continue
        want = FLOAT if node.output[0] in keep_fp32 else HALF
        node.input[:] = [as_precision(i, want) if i else i for i in node.input]
        for a in node.attribute:
            if want == HALF and a.type == onnx.AttributeProto.TENSOR and a.t.data_type == FLOAT:
                a.t.CopyFrom(half(a.t, a.t.name))
            if want == HALF and node.op_type == "Cast" and a.name == "to" and a.i == FLOAT:
                a.i = HALF
        for o in node.output:
            if elem.get(o) == FLOAT:
                home[o] = want
        nodes.append(node)
    g.initializer.extend(new_inits)
    for vi in g.output:
        if vi.type.tensor_type.elem_type != FLOAT:
            continue
        want = FLOAT if keep_io_fp32 else HALF
        if home.get(vi.name, want) != want:
            inner = vi.name + "__inner"
            for node in nodes:
                node.output[:] = [inner if o == vi.name else o for o in node.output]
                node.input[:] = [inner if i == vi.name else i for i in node.input]
            nodes.append(helper.make_node("Cast", [inner], [vi.name], name=f"{vi.name}_cast", to=want))
    del g.node[:]
    g.node.extend(nodes)
    model = prune(model)  # float32 constants that only FP16 nodes read are gone
    del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


INT8_KEEP = ("head", "codebook", "quantizer")  # what export.py --int8 leaves in FP32


def to_int8(model, keep=INT8_KEEP, per_channel: bool = True):
    """FP32 graph -> INT8 graph for ONNX Runtime's CPU provider: dynamic quantization (onnxruntime.quantization.
    quantize_dynamic, https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html) of every
    MatMul and Gemm with a constant weight: INT8 weights (per output channel), activations quantized on the fly
    per call. The nodes of fp32_islands(keep) stay FP32: the head's product before ArgMax, the codebook
    distances, the quantizer (the same parts that decide tokens in FP16). Convolutions are left FP32 (dynamic
    ConvInteger has no fast CPU kernel)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    model = copy.deepcopy(model)
    kept = fp32_islands(model, keep)
    exclude = [n.name for n in model.graph.node if n.output[0] in kept]
    # quantize_dynamic rewrites Gemm(transB=1) as MatMul by transposing B in place, once per node: a weight the
    # unrolled steps share (head_nm.ada_lin, six Gemms) would be transposed six times. Transpose it once here.
    inits, transposed = {i.name: i for i in model.graph.initializer}, {}
    for n in model.graph.node:
        attrs = {a.name: a for a in n.attribute}
        if n.op_type == "Gemm" and n.input[1] in inits and "transB" in attrs and attrs["transB"].i == 1:
            if n.input[1] not in transposed:
                transposed[n.input[1]] = numpy_helper.from_array(
                    np.ascontiguousarray(numpy_helper.to_array(inits[n.input[1]]).T), n.input[1] + "__T")
                model.graph.initializer.append(transposed[n.input[1]])
            n.input[1] = transposed[n.input[1]].name
            attrs["transB"].i = 0
    model = prune(model)
    big = initializer_bytes(model) > EXTERNAL_DATA_BYTES  # d16: past protobuf's 2 GiB once quantized beside FP32
    with tempfile.TemporaryDirectory(prefix="depthart-int8.") as d:
        src, dst = Path(d) / "fp32.onnx", Path(d) / "int8.onnx"
        onnx.save_model(model, str(src), save_as_external_data=big, location="fp32.onnx.data")
        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul", "Gemm"], per_channel=per_channel,
                         weight_type=QuantType.QInt8, nodes_to_exclude=exclude, use_external_data_format=big,
                         extra_options={"MatMulConstBOnly": True, "DefaultTensorType": TensorProto.FLOAT})
        return onnx.load(str(dst))


# ----------------------------------------------------------------------------------------------
# Verification against PyTorch with ONNX Runtime on the CPU
# ----------------------------------------------------------------------------------------------
def sample_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """n test images (n,3,S,S) in [0,1]: uniform noise, then structured ones (ramps, a checkerboard,
    a step edge, a box-room-like perspective, stripes), cycling.

    No flat image: a constant input leaves the VQ-VAE's GroupNorms normalizing a near-zero variance, so
    even PyTorch alone changes its tokens under 1e-6 input noise; no two runtimes can agree there.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    room = (1 - (2 * yy - 1).abs().maximum((2 * xx - 1).abs()))  # brighter toward the centre of a box
    kinds = [
        lambda: torch.rand(3, size, size, generator=g),
        lambda: torch.stack((yy, xx, 1 - yy)),
        lambda: (((yy * 8).floor() + (xx * 8).floor()) % 2).expand(3, -1, -1),
        lambda: torch.stack((0.2 + 0.6 * (xx > 0.4), 0.3 + 0.2 * yy, 0.5 + 0.3 * (xx > 0.4))),
        lambda: torch.stack((room, room * 0.8 + 0.1, 1 - room)),
        lambda: (torch.sin(xx * 20) * 0.5 + 0.5).expand(3, -1, -1) * torch.rand(3, 1, 1, generator=g),
    ]
    return torch.stack([kinds[i % len(kinds)]() for i in range(n)]).clamp(0, 1).float()


def save_graph(graph, path, external: bool, tensors: dict | None = None):
    """Write a graph atomically: NAME.onnx alone, or with external=True NAME.onnx plus NAME.onnx.data holding
    every initializer (ONNX external data, beyond protobuf's 2 GiB). The graph in memory keeps its weights.

    A graph with weights kept apart (trace_apart) takes their bytes from `tensors`: with external=True they
    are streamed into NAME.onnx.data one weight at a time (never the whole file in memory), each weight of
    1 MiB or more at a 4 KiB-aligned offset so that ONNX Runtime can map it from the file."""
    path, data_name = Path(path), Path(path).name + ".data"
    if any(is_stub(i) for i in graph.graph.initializer):
        if external:
            return _save_streamed(graph, tensors, path, data_name)
        graph = fill_weights(copy.deepcopy(graph), tensors)
    if not external:
        data = graph.SerializeToString()
        atomic_write(path, lambda tmp: tmp.write_bytes(data))
        (path.parent / data_name).unlink(missing_ok=True)  # a stale external-data file of an earlier export
        return
    tmp_dir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        onnx.save_model(graph, str(tmp_dir / path.name), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
        onnx.load_external_data_for_model(graph, str(tmp_dir))  # save_model moved the weights out: back in
        for name in (data_name, path.name):  # the data first: NAME.onnx never points at a missing file
            with open(tmp_dir / name, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp_dir / name, path.parent / name)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _save_streamed(graph, tensors: dict, path: Path, data_name: str):
    graph = copy.deepcopy(graph)  # small: the weights are not in it; the caller's stubs stay stubs
    tmp_dir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        with open(tmp_dir / data_name, "wb") as f:
            for init in graph.graph.initializer:
                if not is_stub(init):
                    continue
                array = np.ascontiguousarray(tensors[init.name].numpy())  # a copy only of a transposed view
                del init.external_data[:]
                if array.nbytes < 1024:  # save_model's size_threshold: small tensors stay in the graph
                    init.raw_data, init.data_location = array.tobytes(), TensorProto.DEFAULT
                    continue
                if array.nbytes >= 1 << 20 and f.tell() % 4096:
                    f.write(bytes(4096 - f.tell() % 4096))
                offset = f.tell()
                f.write(memoryview(array))
                for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(array.nbytes))):
                    init.external_data.add(key=key, value=value)
            f.flush()
            os.fsync(f.fileno())
        data = graph.SerializeToString()
        del graph
        atomic_write(tmp_dir / path.name, lambda tmp: tmp.write_bytes(data))
        for name in (data_name, path.name):  # the data first: NAME.onnx never points at a missing file
            os.replace(tmp_dir / name, path.parent / name)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def release_freed_memory():
    """Hand memory that Python and PyTorch have freed back to the system (glibc's malloc_trim): glibc keeps a
    freed heap for reuse, which after tracing d16 is about 1 GB of resident memory nothing uses. No-op elsewhere."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        pass


def graph_files(path) -> list[Path]:
    """The files of a written graph: NAME.onnx [and NAME.onnx.data]."""
    path = Path(path)
    return [path] + [p for p in [path.with_name(path.name + ".data")] if p.exists()]


def ort_session(model_or_path, threads: int | None = None, lean: bool = False, spin: bool = True,
                profile: str | None = None):
    """An ONNX Runtime CPU session. lean (export's check): no memory arena and no pre-packed copies of the
    MatMul weights, so a graph whose weights are external data costs little more than its mapped file.
    spin=False: its threads sleep between runs instead of spinning, for timings interleaved with PyTorch's.
    profile: ONNX Runtime's profiler on, its JSON written under this prefix (session.end_profiling())."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if profile:
        so.enable_profiling, so.profile_file_prefix = True, profile
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if lean:
        so.enable_cpu_mem_arena = False
        so.add_session_config_entry("session.disable_prepacking", "1")
    data = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


class ParityError(RuntimeError):
    """The graph in ONNX Runtime does not reproduce PyTorch; .report holds the figures."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


class TokenFlips(ParityError):
    """Some greedy tokens differ between ONNX Runtime and PyTorch (near-tied logits)."""


def references(model: D.DepthART, batch: int, all_scales: bool, rounds: int | None = None,
               max_scale: int | None = None) -> dict:
    """PyTorch's answers on verify's test images: `rounds` batches of images, tokens per scale, depth [and
    depth after every scale]; with the model's layout (target, patch_nums, bounds), all a check needs, so
    that the model can be freed before ONNX Runtime loads the graph."""
    rounds = rounds or max(2, -(-6 // batch))  # enough batches to see all six kinds of test image
    pool = sample_images(rounds * batch, model.cfg.image_size)
    out = {"target": model.cfg.target, "patch_nums": list(model.cfg.patch_nums[:max_scale]), "bounds": list(model.bounds),
           "batch": batch, "all_scales": all_scales, "images": [], "tokens": [], "depth": [], "scales": []}
    for r in range(rounds):
        images = pool[r * batch:(r + 1) * batch]
        with torch.no_grad():  # one rollout gives the tokens and what model.predict decodes from it
            z, f_hats, _ = model.rollout(model.encode_image(images), num_scales=max_scale)
            out["images"].append(images.numpy())
            out["tokens"].append([zk.numpy() for zk in z])
            out["depth"].append(model.decode(f_hats[-1]).numpy())  # = Z.anytime_predict(model, images, max_scale)
            if all_scales:  # = Z.anytime_predict(model, images, max_scale, all_scales=True)
                out["scales"].append(model.decode_scales(f_hats).numpy())
    return out


def verify(model: D.DepthART | None, onnx_model, batch: int, all_scales: bool, rounds: int | None = None,
           require_exact: bool = True, log=print, max_scale: int | None = None, refs: dict | None = None,
           lean: bool = False) -> dict:
    """Run the graph (with its `tokens` output) in ONNX Runtime beside PyTorch on `rounds` batches.

    Returns per-scale token agreement (fraction of equal tokens), the depth's max |error| and, with
    require_exact, raises TokenFlips unless every token matches, ParityError unless depth is within 1e-4.
    (For a normals model "depth" in the report is the normals output: the same check on unit vectors.)
    refs: PyTorch's answers from references() (then model may be None); lean: ort_session(lean=True).
    """
    refs = refs or references(model, batch, all_scales, rounds, max_scale)
    sess = ort_session(onnx_model, lean=True) if lean else ort_session(onnx_model)
    target, patch_nums, bounds = refs["target"], refs["patch_nums"], refs["bounds"]
    names = [o.name for o in sess.get_outputs()]
    K, rounds = len(patch_nums), len(refs["images"])
    equal, total = np.zeros(K, dtype=np.int64), np.zeros(K, dtype=np.int64)
    depth_err = scales_err = depth_sum = 0.0
    for r in range(rounds):
        z, ref_depth = refs["tokens"][r], refs["depth"][r]
        out = dict(zip(names, sess.run(None, {"image": refs["images"][r]})))
        for k in range(K):
            equal[k] += int((out["tokens"][:, bounds[k]:bounds[k + 1]] == z[k]).sum())
            total[k] += z[k].size
        diff = np.abs(out[target].astype(np.float32) - ref_depth)
        depth_err, depth_sum = max(depth_err, float(diff.max())), depth_sum + float(diff.mean()) / rounds
        if all_scales:
            scales_err = max(scales_err, float(np.abs(out[f"{target}_scales"].astype(np.float32)
                                                      - refs["scales"][r]).max()))
    del sess
    agree = equal / total
    report = {"token_agreement_per_scale": [round(float(a), 6) for a in agree],
              "depth_max_abs_err": depth_err, "depth_mean_abs_err": depth_sum, "images": rounds * batch}
    if all_scales:
        report["depth_scales_max_abs_err"] = scales_err
    log(f"  compared {rounds} batches of {batch} images ({rounds * batch} in all: noise, ramps, checkerboard, "
        f"step edge, box room, stripes) against PyTorch")
    log("  tokens equal per scale: " + " ".join(f"{pn}x{pn}:{a:.4f}" for pn, a in zip(patch_nums, agree)))
    log(f"  depth |ORT - torch|: max {depth_err:.2e}, mean {depth_sum:.2e}" + (f", depth_scales {scales_err:.2e}" if all_scales else ""))
    if require_exact and not (equal == total).all():
        raise TokenFlips(
            f"ONNX Runtime and PyTorch chose different tokens at {int((total - equal).sum())} of {int(total.sum())} "
            f"positions (agreement per scale {' '.join(f'{a:.4f}' for a in agree)}): near-tied logits, which an "
            "undertrained model has many of, flip under float reordering; pass --allow-token-flips to accept "
            "this and write the graph (the agreement is kept in its .json report)", report)
    # Normals are decoder outputs renormalized to unit length, which magnifies the rounding of a short
    # decoder vector (an untrained or coarse-scale one) by 1 / its length: 1e-3 there (0.06 degrees).
    tol = 1e-3 if target == "normals" else 1e-4
    if require_exact and not (depth_err <= tol and scales_err <= tol):
        raise ParityError(f"ONNX Runtime {target} differs from PyTorch by up to {max(depth_err, scales_err):.2e} "
                          f"(tolerance {tol:g}) with identical tokens: the graph computes something else", report)
    return report


# ----------------------------------------------------------------------------------------------
# The export, end to end
# ----------------------------------------------------------------------------------------------
def verify_written(model: D.DepthART | None, graph, external: bool, where, tensors: dict | None = None, **kw) -> dict:
    """verify() on the graph as written to disk (in a temporary folder in `where`), loaded from its path;
    tensors: the bytes of a graph whose weights are kept apart (save_graph)."""
    with tempfile.TemporaryDirectory(dir=where, prefix=".verify.") as d:
        save_graph(graph, Path(d) / "graph.onnx", external, tensors)
        return verify(model, Path(d) / "graph.onnx", **kw)


def export(model: D.DepthART, out_path, batch: int = 1, all_scales: bool = False, tokens: bool = False,
           fp16: bool = False, check: bool = True, exact: bool = True, external_data: bool | None = None,
           fp16_keep=FP16_KEEP, int8: bool = False, log=print, max_scale: int | None = None,
           keep_model: bool = True) -> dict:
    """Trace, tidy, check and save one graph (written atomically); returns a report dict.

    external_data: store the weights in NAME.onnx.data (None: when they exceed EXTERNAL_DATA_BYTES).
    fp16_keep: with fp16, the parts that stay FP32 (fp32_islands; () converts the whole graph).
    int8: write the INT8 graph (to_int8) for ONNX Runtime on the CPU; its agreement is reported, not required.

    exact=False reports token agreement and depth error instead of failing on them: greedy argmax over
    near-tied logits (an undertrained model, a codebook with near-duplicate codes) can flip under float
    reordering, so inference on a user's checkpoint warns rather than refuses.

    max_scale k (anytime depth): the graph stops after the first k scales and decodes that partial sum.

    keep_model=False (the command line, which has no further use for the model): an FP32 export's weights are
    written, then the model's are freed (it is left on the meta device), then ONNX Runtime checks the written
    files, so the export never holds the weights twice (d16: the difference between 4.4 and under 4 GB).
    """
    K = len(model.cfg.patch_nums)
    if max_scale is not None and not 1 <= max_scale <= K:
        raise ValueError(f"max_scale {max_scale}: this model has scales 1..{K}")
    max_scale = None if max_scale == K else max_scale  # all scales: the same graph as without it
    model = model.eval()
    out_path = Path(out_path)
    t0 = time.perf_counter()
    graph, tensors = trace_apart(model, batch, all_scales, max_scale=max_scale)  # weights stay in the model
    graph = tidy(graph, tensors)
    ops = op_counts(graph)
    log(f"traced and tidied {model.cfg.image_size}x{model.cfg.image_size}, batch {batch}, {len(model.cfg.patch_nums[:max_scale])} of {K} scales "
        f"in {time.perf_counter() - t0:.1f} s: {sum(ops.values())} nodes, opset {OPSET}")
    problems = graph_problems(graph)
    if problems:
        raise RuntimeError("exported graph is not deployable: " + "; ".join(problems))
    report = {"batch": batch, "image_size": model.cfg.image_size, "target": model.cfg.target, "all_scales": all_scales, "opset": OPSET,
              "max_scale": max_scale or K,
              "operators": dict(sorted(ops.items())), "fp16": fp16, "int8": int8}
    pbytes = parameter_bytes(model)
    report["weight_bytes_ratio_fp32"] = initializer_bytes(graph) / pbytes
    log(f"  constants {initializer_bytes(graph) / 2**20:.2f} MiB vs parameters {pbytes / 2**20:.2f} MiB: "
        f"ratio {report['weight_bytes_ratio_fp32']:.3f}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    external = initializer_bytes(graph) > EXTERNAL_DATA_BYTES if external_data is None else external_data
    if check:  # PyTorch's answers first, then ONNX Runtime on the written files with the weights mapped from disk
        refs = references(model, batch, all_scales, max_scale=max_scale)
        release_freed_memory()  # the trace's and the rollout's freed heap, before ORT maps the weights
    wanted = output_names(all_scales, model.cfg.target)[:-1] + (["tokens"] if tokens else [])
    if check and not keep_model and not (fp16 or int8):
        report["fp32_check"] = _write_then_check(model, graph, tensors, out_path, external, wanted, refs=refs,
                                                 batch=batch, all_scales=all_scales, require_exact=exact, log=log)
        return _finish(report, out_path, wanted, False, False, t0, log, model.cfg.target)
    if check:
        report["fp32_check"] = verify_written(None, graph, external, out_path.parent, tensors, batch=batch, refs=refs,
                                              all_scales=all_scales, require_exact=exact, log=log, lean=True)
        if not exact and min(report["fp32_check"]["token_agreement_per_scale"]) < 1:
            log("  warning: ONNX Runtime and PyTorch disagree on some near-tied tokens (figures above)")
    if fp16 or int8:  # these rewrite the weights: they go into the graph (the lean path is FP32's)
        graph, tensors = fill_weights(graph, tensors), None
    if fp16:
        islands = fp32_islands(graph, fp16_keep)
        graph = to_fp16(graph, keep_fp32=islands)
        report["fp16_fp32_parts"], report["fp16_fp32_nodes"] = list(fp16_keep), len(islands)
        log(f"  FP16 graph with {len(islands)} nodes kept FP32 ({', '.join(fp16_keep) or 'none: all FP16'})")
        problems = graph_problems(graph)
        if problems:
            raise RuntimeError("FP16 graph is not deployable: " + "; ".join(problems))
        report["weight_bytes_ratio_fp16"] = initializer_bytes(graph) / parameter_bytes(model, 2)
        external = initializer_bytes(graph) > EXTERNAL_DATA_BYTES if external_data is None else external_data
        log(f"  FP16 graph: constants {initializer_bytes(graph) / 2**20:.2f} MiB, ratio to FP16 parameters "
            f"{report['weight_bytes_ratio_fp16']:.3f}; input and outputs stay float32")
        if check:
            log("  FP16 in ONNX Runtime (CPU) vs PyTorch FP32; ORT runs ops it has no CPU FP16 kernel for in FP32 "
                "(casts inserted), so this shows FP16 storage rounding rather than GPU FP16 arithmetic:")
            try:
                report["fp16_check"] = verify_written(None, graph, external, out_path.parent, batch=batch, refs=refs,
                                                      all_scales=all_scales, require_exact=False, log=log)
            except Exception as e:  # an ORT CPU build that cannot run some FP16 op: say so, keep the graph
                report["fp16_check"] = f"not run: ONNX Runtime CPU failed on the FP16 graph ({type(e).__name__}: {e})"
                log("  " + report["fp16_check"])
    if int8:
        if fp16:
            raise ValueError("--fp16 and --int8 are two different graphs: choose one")
        graph = to_int8(graph)
        ops8 = op_counts(graph)
        report["int8_quantized_matmuls"] = ops8["MatMulInteger"] + ops8["DynamicQuantizeMatMul"]
        log(f"  INT8 graph: {report['int8_quantized_matmuls']} MatMuls with INT8 weights (dynamic quantization); "
            f"{', '.join(INT8_KEEP)} stay FP32")
        if check:
            report["int8_check"] = verify_written(None, graph, external, out_path.parent, batch=batch, refs=refs,
                                                  all_scales=all_scales, require_exact=False, log=log)
    graph = keep_outputs(graph, wanted)
    save_graph(graph, out_path, external, tensors)
    return _finish(report, out_path, wanted, fp16, int8, t0, log, model.cfg.target)


def _finish(report, out_path, wanted, fp16, int8, t0, log, target) -> dict:
    files = graph_files(out_path)
    report.update(path=str(out_path), outputs=wanted, external_data=files[-1] != out_path, sha256=file_sha256(out_path),
                  megabytes=round(sum(f.stat().st_size for f in files) / 2**20, 2),
                  export_seconds=round(time.perf_counter() - t0, 1))
    log(f"wrote {' + '.join(str(f) for f in files)} ({report['megabytes']} MB, outputs {', '.join(wanted)}, "
        f"{'float16' if fp16 else 'int8 weights' if int8 else 'float32'} inside, float32 image in and {target} out)")
    return report


def _write_then_check(model, graph, tensors: dict, out_path: Path, external: bool, wanted, **check) -> dict:
    """export(keep_model=False): stage the graph (with its tokens output) beside out_path, free the model's
    weights, check the staged files with ONNX Runtime, then drop the outputs not wanted (the weights file stays
    as written: pruning an output removes no weight) and move the files into place, the data first."""
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.name}.") as d:
        staged = Path(d) / out_path.name
        save_graph(graph, staged, external, tensors)
        tensors.clear()
        model.to("meta")  # frees every parameter and buffer: ONNX Runtime maps the written copy instead
        release_freed_memory()
        report = verify(None, staged, refs=check.pop("refs"), lean=True, **check)
        final = keep_outputs(onnx.load(str(staged), load_external_data=False), wanted)
        if len(final.graph.initializer) != len(graph.graph.initializer):
            raise RuntimeError("pruning the check's outputs dropped weights; export with keep_model=True")
        data = final.SerializeToString()
        atomic_write(staged, lambda tmp: tmp.write_bytes(data))
        if not external:
            (out_path.parent / (out_path.name + ".data")).unlink(missing_ok=True)  # a stale file of an earlier export
        for f in reversed(graph_files(staged)):  # the data first: NAME.onnx never points at a missing file
            os.replace(f, out_path.parent / f.name)
    return report


# ----------------------------------------------------------------------------------------------
# TensorRT engines (TensorRT 10 / 11 Python API)
# ----------------------------------------------------------------------------------------------
class EngineUnavailable(RuntimeError):
    """TensorRT or a CUDA GPU is missing here."""


def import_tensorrt():
    """TensorRT is optional (it needs an NVIDIA GPU): imported here, only where an engine is built or run."""
    try:
        import tensorrt as trt
    except ImportError:
        raise EngineUnavailable("TensorRT is not installed (pip install tensorrt on a machine with an NVIDIA GPU)") from None
    return trt


def gpu_description() -> tuple[str, str]:
    """(GPU name, compute capability like '9.0') of device 0, or EngineUnavailable."""
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        return torch.cuda.get_device_name(0), f"{major}.{minor}"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        name, cc = [s.strip() for s in out.splitlines()[0].split(",")]
        return name, cc
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        raise EngineUnavailable("no CUDA GPU found (torch.cuda is unavailable and nvidia-smi gives no GPU)") from None


def refuse_stage1(checkpoint):
    """Inference needs a trained transformer: a stage-1 (VQ-VAE only) checkpoint is a ValueError."""
    if Path(checkpoint).suffix == ".safetensors" and Z.checkpoint_meta(checkpoint).get("stage") == "vqvae":
        raise ValueError(f"{checkpoint} is a stage-1 (VQ-VAE only) checkpoint: its transformer is untrained, so its "
                         "depth would be noise; pass a stage-2 checkpoint (train.py --stage transformer)")


def engine_name(onnx_bytes: bytes, trt_version: str, gpu_name: str, compute_capability: str, tag: str = "") -> str:
    """depthart-<graph sha256[:16]>-trt<version>-<gpu>-sm<cc>.engine: a different graph, TensorRT or GPU
    gives a different file, so an engine built elsewhere is never loaded (it would not deserialize)."""
    digest = hashlib.sha256(onnx_bytes).hexdigest()[:16]
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower() or "gpu"
    cc = compute_capability.replace(".", "")
    return f"depthart-{digest}{tag}-trt{trt_version}-{gpu}-sm{cc}.engine"


def engine_path_for(onnx_path, engine_dir=None, tag: str = "") -> Path:
    """Where the engine for this graph on this machine lives (needs TensorRT and a GPU to know)."""
    trt = import_tensorrt()
    name, cc = gpu_description()
    onnx_path = Path(onnx_path)
    files = graph_files(onnx_path)  # with external data, the weights are in the second file
    key = onnx_path.read_bytes() if len(files) == 1 else "".join(file_sha256(f) for f in files).encode()
    return Path(engine_dir or onnx_path.parent) / engine_name(key, trt.__version__, name, cc, tag)


def build_engine(onnx_path, engine_dir=None, workspace_mib: int = 4096, timing_cache=None, log=print,
                 fp16_constrained: bool = False) -> Path:
    """Build (or reuse) the TensorRT engine of an ONNX graph; returns its path.

    Precision comes from the graph: a float32 graph builds float32 kernels (TF32 cleared, so tokens can
    match PyTorch FP32 exactly), an FP16 graph (export.py --fp16, FP32 islands included) builds FP16 kernels
    where its tensors are FP16 and FP32 ones where they are FP32 (strongly typed network). fp16_constrained
    (TensorRT 10 only, whose networks may be weakly typed): from a float32 graph, BuilderFlag.FP16 lets TensorRT
    choose FP16 anywhere except the layers of fp32_islands(graph), which are pinned to FP32 with the layer
    precision API and OBEY_PRECISION_CONSTRAINTS (constrain_layers). The timing cache is read from and
    written back to `timing_cache` (default: beside the engine).
    """
    trt = import_tensorrt()
    major = int(trt.__version__.split(".")[0])
    if fp16_constrained and (major >= 11 or not hasattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS")):
        raise EngineUnavailable(f"TensorRT {trt.__version__} networks are strongly typed, so layer precision "
                                "constraints do not apply: build the engine from the --fp16 graph instead")
    path = engine_path_for(onnx_path, engine_dir, "-fp16c" if fp16_constrained else "")
    if path.exists():
        log(f"engine {path} exists (same graph, TensorRT and GPU): reusing it")
        return path
    timing_cache = Path(timing_cache or path.parent / timing_cache_name(trt.__version__, *gpu_description()))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0  # TensorRT 11: networks are strongly typed and explicit-batch by default
    if major < 11 and not fp16_constrained and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # TensorRT 10: precision from the graph
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # FP32 must mean FP32 for token parity
    if fp16_constrained:
        pinned = constrain_layers(trt, network, fp32_islands(onnx.load(str(onnx_path), load_external_data=False)))
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        log(f"FP16 engine with {pinned} of {network.num_layers} layers pinned to FP32 (OBEY_PRECISION_CONSTRAINTS)")
    cached = timing_cache.read_bytes() if timing_cache.is_file() else b""
    if cached and not _use_timing_cache(config, cached):
        log(f"timing cache {timing_cache} does not fit this TensorRT and GPU: building without it")
        cached = b""
    if not cached and not _use_timing_cache(config, b""):
        raise RuntimeError("TensorRT refused an empty timing cache")
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None and cached:  # a stale or foreign cache can make a build fail after it ran
        log(f"engine build failed with timing cache {timing_cache}: retrying without it")
        cached = b""
        if not _use_timing_cache(config, b""):
            raise RuntimeError("TensorRT refused an empty timing cache")
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: tmp.write_bytes(memoryview(serialized)))
    except OSError as e:  # a read-only folder: callers fall back to ONNX Runtime
        raise EngineUnavailable(f"cannot write the engine to {path} ({e.strerror or e})") from None
    try:
        atomic_write(timing_cache, lambda tmp: tmp.write_bytes(memoryview(config.get_timing_cache().serialize())))
    except OSError as e:
        log(f"timing cache not saved to {timing_cache} ({e.strerror or e}); the engine was")
    log(f"built {path} in {time.perf_counter() - t0:.0f} s (timing cache {timing_cache})")
    return path


def constrain_layers(trt, network, fp32_outputs: set) -> int:
    """Pin to FP32 the layers that compute the ONNX values in fp32_outputs (fp32_islands' names): TensorRT's
    ONNX parser names each ITensor after its ONNX value. Layer-level precision control as the TensorRT developer
    guide describes it for weakly typed networks (https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/
    precision-control.html, "Reduced Precision in Weakly-Typed Networks"): ILayer.precision sets the precision a layer computes in, ILayer.set_output_type the
    type of its outputs, and BuilderFlag.OBEY_PRECISION_CONSTRAINTS makes the builder keep both (without it they
    are preferences). Returns the number of layers pinned."""
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not any(t.name in fp32_outputs for t in outputs):
            continue
        layer.precision = trt.float32
        for j, t in enumerate(outputs):
            if t.dtype in (trt.float32, trt.float16):
                layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def timing_cache_name(trt_version: str, gpu_name: str, compute_capability: str) -> str:
    """timing-trt<version>-<gpu>-sm<cc>.cache: timings measured on one GPU never steer a build on another."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower() or "gpu"
    return f"timing-trt{trt_version}-{gpu}-sm{compute_capability.replace('.', '')}.cache"


def _use_timing_cache(config, data: bytes) -> bool:
    """Install a timing cache built from data; False if TensorRT rejects it (set_timing_cache's result)."""
    cache = config.create_timing_cache(data)
    return cache is not None and bool(config.set_timing_cache(cache, ignore_mismatch=False))


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def lively(model: D.DepthART, seed: int = 0) -> D.DepthART:
    """Random weights whose transformer is not an identity: VAR's init scales every residual branch by
    ~1e-5 (depthart.init_from_scratch), so a random model would predict nearly the same tokens for any image."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in model.var.blocks:
            b.ada_lin[-1].weight.copy_(torch.randn(b.ada_lin[-1].weight.shape, generator=g) * 0.05)
            b.ada_lin[-1].bias.copy_(torch.randn(b.ada_lin[-1].bias.shape, generator=g) * 0.3)
        model.var.head.weight.copy_(torch.randn(model.var.head.weight.shape, generator=g) * 0.2)
        model.var.pos_1LC.copy_(torch.randn(model.var.pos_1LC.shape, generator=g) * 0.5)
        if model.cfg.image_shortcut:
            w = model.var.image_shortcut.weight
            w.copy_(torch.randn(w.shape, generator=g) * 0.3)
    return model.eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a .safetensors checkpoint: ours, or the DepthART release's model.safetensors "
                                          "(or its name, release, after `python download.py release`)")
    p.add_argument("--download", action="store_true", help="download a --checkpoint name (release) that is not here yet")
    src.add_argument("--preset", help="tiny, small, d16 or release with random (non-trivial) weights, to test the pipeline")
    p.add_argument("--target", choices=tuple(Z.TARGETS), default="depth", help="--preset: what the random model predicts")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--batch", type=int, default=1, help="batch size, fixed in the graph (default 1)")
    p.add_argument("--all-scales", action="store_true", help="also output depth_scales (B,K,H,W): depth after every scale "
                                                               "(normals_scales (B,K,3,H,W) for a normals model)")
    p.add_argument("--max-scale", type=int, metavar="K", help="anytime depth: stop after the first K scales and "
                                                               "decode that partial sum (default: all scales)")
    p.add_argument("--tokens", action="store_true", help="also output tokens (B,L) int64: greedy tokens of all scales")
    p.add_argument("--fp16", action="store_true", help="write an FP16 graph (float32 input and outputs) whose "
                                                         "token-deciding parts stay FP32 (--fp16-keep)")
    p.add_argument("--fp16-keep", default=",".join(FP16_KEEP),
                   help=f"--fp16: the parts kept FP32, comma-separated, from {', '.join(FP16_KEEP_CHOICES)}, or none "
                        f"(the whole graph in FP16; flips tokens); default {','.join(FP16_KEEP)}")
    p.add_argument("--int8", action="store_true", help="write an INT8 graph for ONNX Runtime on the CPU (dynamic "
                                                         "quantization of the MatMuls; head, codebook, quantizer FP32)")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison with PyTorch")
    p.add_argument("--allow-token-flips", action="store_true",
                   help="write the graph even if some near-tied greedy tokens differ from PyTorch (undertrained "
                        "models); the per-scale agreement is reported")
    p.add_argument("--external-data", action="store_true",
                   help="store the weights in OUT.data (default: when over 512 MiB, e.g. d16 and the release)")
    p.add_argument("--engine", action="store_true", help="also build a TensorRT engine next to the graph")
    p.add_argument("--engine-fp16-constrained", action="store_true",
                   help="--engine from the FP32 graph as an FP16 engine whose token-deciding layers TensorRT must keep "
                        "FP32 (layer precision constraints; TensorRT 10 only: TensorRT 11 builds from --fp16 graphs)")
    p.add_argument("--engine-dir", help="where engines go (default: beside the graph)")
    p.add_argument("--workspace-mib", type=int, default=4096, help="TensorRT workspace limit (default 4096 MiB)")
    p.add_argument("--timing-cache", help="TensorRT timing cache file (default: beside the engine)")
    args = p.parse_args(argv)
    args.fp16_keep = () if args.fp16_keep.strip() == "none" else tuple(k.strip() for k in args.fp16_keep.split(",") if k.strip())
    if unknown := set(args.fp16_keep) - set(FP16_KEEP_CHOICES):
        p.error(f"--fp16-keep: unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(FP16_KEEP_CHOICES)} or none")
    if args.fp16 and args.int8:
        p.error("--fp16 and --int8 are two different graphs: choose one")
    if args.engine_fp16_constrained and (args.fp16 or args.int8 or not args.engine):
        p.error("--engine-fp16-constrained builds an --engine from the FP32 graph: drop --fp16/--int8, add --engine")
    if args.int8 and args.engine:
        p.error("--int8 graphs are for ONNX Runtime on the CPU; TensorRT engines come from FP32 or --fp16 graphs")
    if args.checkpoint:
        args.checkpoint = str(download.resolve_arg(args.checkpoint, args.download, prog="export.py"))
    try:
        return run(args)
    except (ValueError, OSError, RuntimeError) as e:  # ParityError, EngineUnavailable are RuntimeErrors
        print(f"export.py: error: {e}", file=sys.stderr)
        return 2


@torch.no_grad()  # inference only; a decorator, so callers (tests) keep their grad mode
def run(args) -> int:
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; name the .onnx file to write")
    writable_dir(out.parent)  # before minutes of export, not after
    if args.checkpoint:
        refuse_stage1(args.checkpoint)
        model = Z.load(args.checkpoint)
    else:
        cfg = dataclasses.replace(Z.preset(args.preset), target=args.target)
        torch.manual_seed(0)
        model = lively(Z.build(cfg))
        print(f"preset {args.preset}: random weights (residual branches scaled up so the transformer is not an identity)")
    report = export(model, args.out, batch=args.batch, all_scales=args.all_scales, tokens=args.tokens,
                    fp16=args.fp16, check=not args.no_check, exact=not args.allow_token_flips,
                    external_data=args.external_data or None, fp16_keep=args.fp16_keep, int8=args.int8,
                    max_scale=args.max_scale, keep_model=False)
    print("operators: " + ", ".join(f"{k} {v}" for k, v in report["operators"].items()))
    Path(args.out).with_suffix(".json").write_text(json.dumps(report, indent=1))
    if args.engine:
        try:
            build_engine(args.out, args.engine_dir, args.workspace_mib, args.timing_cache,
                         fp16_constrained=args.engine_fp16_constrained)
        except EngineUnavailable as e:
            print(f"no engine built: {e}; the ONNX graph {args.out} was written")
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
