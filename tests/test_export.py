"""Tests of export.py on the tiny preset: one static graph, token-exact in ONNX Runtime, deployable."""
import contextlib
import copy
import hashlib
import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import depthart as D
import export as E
import zoo as Z
from conftest import mini_config

# Every operator the TensorRT 10 ONNX parser supports (marked "Y"), from onnx/onnx-tensorrt docs/operators.md
# at its "ONNX-TensorRT 10.1 GA release" commit (96e7811), which states that TensorRT 10 parses opsets 9 to 20.
TENSORRT10_ONNX_OPS = set("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil
Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max
MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return E.lively(Z.build(Z.preset("tiny")))


@pytest.fixture(scope="module")
def graphs(tiny, tmp_path_factory):
    """Each batch's (report, path) of export(), made once when a test first asks for it, in a folder of its own.
    Batch 2 (depth_scales and tokens outputs) keeps the weights inside the graph and the model as it was; batch 1
    is written the command line's way (keep_model=False: write, free the model's weights, then check the written
    files) with the weights streamed to NAME.onnx.data, from a copy of tiny (graphs.models[1]), which it leaves
    on the meta device."""
    made = {}

    def get(batch):
        if batch not in made:
            path = tmp_path_factory.mktemp("onnx") / f"tiny_b{batch}.onnx"
            if batch == 1:
                get.models[1] = copy.deepcopy(tiny)
                made[1] = E.export(get.models[1], path, external_data=True, check=True, keep_model=False), path
            else:
                made[batch] = E.export(tiny, path, batch=batch, all_scales=batch == 2, tokens=batch == 2, check=True), path
        return made[batch]
    get.models = {}
    return get


@pytest.fixture(scope="module")
def traced(tiny):
    """trace_apart(tiny) at batch 1, tidied as export() tidies it -> (graph with weight stubs, tensors)."""
    graph, tensors = E.trace_apart(tiny, 1)
    return E.tidy(graph, tensors), tensors


@pytest.fixture(scope="module")
def mini_checkpoint(tmp_path_factory):
    """A checkpoint of a random model smaller than tiny (conftest.mini_config: three scales, one block)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mini") / "mini.safetensors"
    Z.save_checkpoint(path, E.lively(Z.build(mini_config())), {"stage": "transformer"})
    return path


@pytest.fixture(scope="module", params=[1, 2], ids=["batch1", "batch2-all-scales"])
def exported(request, graphs):
    """(batch, report, graph): batch 1 plain (its weights read back from NAME.onnx.data), batch 2 with depth_scales
    and tokens outputs."""
    report, path = graphs(request.param)
    return request.param, report, onnx.load(str(path))


def test_ort_matches_pytorch_token_for_token(exported):
    batch, report, _ = exported
    check = report["fp32_check"]  # export() already asserted it; the figures are kept in the report
    assert check["token_agreement_per_scale"] == [1.0] * 6
    assert check["depth_max_abs_err"] <= 1e-4
    assert check["images"] >= 6
    if batch == 2:
        assert check["depth_scales_max_abs_err"] <= 1e-4


def test_graph_inputs_outputs_and_opset(exported):
    batch, _, graph = exported
    shape = lambda vi: [d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    assert [(i.name, shape(i)) for i in graph.graph.input] == [("image", [batch, 3, 64, 64])]
    outputs = {o.name: shape(o) for o in graph.graph.output}
    expected = {"depth": [batch, 1, 64, 64]}
    if batch == 2:
        expected.update(depth_scales=[batch, 6, 64, 64], tokens=[batch, 130])
    assert outputs == expected
    opset = [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")]
    assert opset == [E.OPSET] and E.OPSET_RANGE[0] <= E.OPSET <= E.OPSET_RANGE[1]


def test_no_loop_if_or_scatter_and_every_op_parses_in_tensorrt(exported):
    _, _, graph = exported
    ops = set(E.op_counts(graph))
    assert not ops & {"Loop", "If", "Scan", "ScatterND"}
    assert all(n.domain in ("", "ai.onnx") for n in graph.graph.node)
    assert ops <= TENSORRT10_ONNX_OPS, f"not in TensorRT 10's list: {ops - TENSORRT10_ONNX_OPS}"
    assert {"ArgMax", "ArgMin", "LayerNormalization", "Conv", "Softmax"} <= ops  # the whole pipeline is in there
    assert "Pad" not in ops  # the VQ-VAE's downsampling pads are the convolutions' own (fold_pads_into_convs)


def test_a_zero_pad_before_a_conv_becomes_its_padding_and_the_output_stays():
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 7, 7])
    w = onnx.numpy_helper.from_array(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), "w")
    const = lambda name, v: helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(  # noqa: E731
        np.array(v, np.float32 if name.startswith("v") else np.int64), name))
    conv = lambda i, o, **kw: helper.make_node("Conv", [i, "w"], [o], kernel_shape=[3, 3], **kw)  # noqa: E731
    nodes = [const("right_bottom", [0, 0, 0, 0, 0, 0, 1, 1]), const("channels", [0, 1, 0, 0, 0, 0, 0, 0]),
             const("v_one", 1.0),
             helper.make_node("Pad", ["x", "right_bottom"], ["p1"]), conv("p1", "folded", strides=[2, 2], pads=[1, 0, 0, 1]),
             helper.make_node("Pad", ["x", "right_bottom", "v_one"], ["p2"]), conv("p2", "ones"),  # fills with 1
             helper.make_node("Pad", ["x", "right_bottom"], ["p3"]), conv("p3", "shared"),  # two readers
             helper.make_node("Relu", ["p3"], ["shared_relu"])]
    outs = ["folded", "ones", "shared", "shared_relu"]
    graph = helper.make_graph(nodes, "pads", [x], [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
                              initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    feed = {"x": rng.standard_normal((1, 2, 7, 7)).astype(np.float32)}
    before = E.ort_session(model).run(None, feed)
    folded = E.prune(E.fold_pads_into_convs(copy.deepcopy(model)))
    ops = [(n.op_type, list(n.input)) for n in folded.graph.node if n.op_type in ("Pad", "Conv")]
    assert ("Conv", ["x", "w"]) in ops and [op for op, _ in ops].count("Pad") == 2  # the fill-1 and the shared Pad stay
    conv_folded = next(n for n in folded.graph.node if n.output[0] == "folded")
    assert next(a.ints for a in conv_folded.attribute if a.name == "pads") == [1, 0, 1, 2]  # begin h, w; end h, w
    after = E.ort_session(folded).run(None, feed)
    for b, a in zip(before, after):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    channel_pad = copy.deepcopy(model)  # padding the channel axis is not a convolution's padding (never run)
    channel_pad.graph.node[3].input[1] = "channels"
    assert [n.op_type for n in E.prune(E.fold_pads_into_convs(channel_pad)).graph.node].count("Pad") == 3


def test_every_value_has_a_static_shape(exported):
    _, _, graph = exported
    inferred = onnx.shape_inference.infer_shapes(graph, strict_mode=True)
    typed = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for node in inferred.graph.node:
        for name in node.output:
            dims = typed[name].type.tensor_type.shape.dim
            assert typed[name].type.tensor_type.HasField("shape"), name
            assert all(d.HasField("dim_value") for d in dims), f"{name} has a non-static shape"
    assert E.graph_problems(graph) == []


def test_weights_are_stored_once(exported, tiny):
    _, report, graph = exported
    ratio = E.initializer_bytes(graph) / E.parameter_bytes(tiny)
    print(f"initializer bytes / parameter bytes = {ratio:.3f}")
    assert 0.9 < ratio < 1.1  # 6 unrolled steps would give ~6 if weights were copied per step
    digests = [hashlib.sha256(onnx.numpy_helper.to_array(i).tobytes()).hexdigest() + str(i.data_type)
               + str(list(i.dims)) for i in graph.graph.initializer]
    assert len(digests) == len(set(digests)), "identical initializers should be shared"


def test_fp16_graph_is_half_inside_and_runs(exported, tiny):
    batch, _, graph = exported
    if batch != 2:
        pytest.skip("one FP16 check is enough: the batch-2 graph, which has the tokens output")
    half = E.to_fp16(graph)
    assert E.graph_problems(half) == []
    floats = [i for i in half.graph.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    resize_inputs = {x for n in half.graph.node if n.op_type == "Resize" for x in n.input[1:]}
    assert all(i.data_type == TensorProto.FLOAT16 or i.name in resize_inputs for i in floats)
    assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # float32 in and out
    assert half.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert 0.95 < E.initializer_bytes(half) / E.parameter_bytes(tiny, 2) < 1.1
    check = E.verify(tiny, half, batch, True, require_exact=False)
    print("FP16 token agreement per scale", check["token_agreement_per_scale"],
          "depth max/mean abs err", check["depth_max_abs_err"], check["depth_mean_abs_err"])
    assert check["token_agreement_per_scale"][0] == 1.0  # the 1x1 token survives half precision
    assert np.mean(check["token_agreement_per_scale"]) > 0.8
    assert check["depth_mean_abs_err"] < 0.05


def _types(model) -> dict:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return types


def _copies_of(weight, initializers) -> list:
    """The initializers holding this weight (or its transpose) in any float precision."""
    w = weight.detach().numpy()
    found = []
    for i in initializers:
        a = onnx.numpy_helper.to_array(i)
        if a.dtype in (np.float32, np.float16) and any(a.shape == x.shape and np.allclose(a, x, atol=1e-3)
                                                       for x in (w, w.T)):
            found.append(i)
    return found


def test_fp16_islands_decide_tokens_in_fp32_and_the_rest_is_half(exported, tiny):
    batch, _, graph = exported
    if batch != 2:
        pytest.skip("one check is enough: the batch-2 graph, which has the tokens output")
    islands = E.fp32_islands(graph)
    by_out = {n.output[0]: n for n in graph.graph.node}
    assert {n.output[0] for n in graph.graph.node if n.op_type in ("ArgMax", "ArgMin", "ReduceL2")} <= islands
    assert {by_out[o].op_type for o in islands} >= {"MatMul", "Sub", "ReduceSum", "Clip", "Div", "Conv"}  # Conv: Phi
    half = E.to_fp16(graph, keep_fp32=islands)
    assert E.graph_problems(half) == []
    types = _types(half)
    for node in half.graph.node:
        if node.op_type in ("ArgMax", "ArgMin", "ReduceL2", "Div") and node.output[0] in islands:
            assert types[node.input[0]] == TensorProto.FLOAT, node.name
        if node.op_type == "Clip" and by_out.get(node.input[0], node).op_type == "ReduceL2":  # F.normalize's eps
            eps = [onnx.numpy_helper.to_array(i) for i in half.graph.initializer if i.name == node.input[1]] or \
                  [onnx.numpy_helper.to_array(n.attribute[0].t) for n in half.graph.node if n.output[0] == node.input[1]]
            assert eps[0].dtype == np.float32 and eps[0] == np.float32(1e-12)
    weights = {i.name: i for i in half.graph.initializer}
    assert [w.data_type for w in _copies_of(tiny.var.head.weight, weights.values())] == [TensorProto.FLOAT]
    float_bytes = Counter()
    for w in weights.values():
        float_bytes[w.data_type] += E._tensor_nbytes(w)
    assert float_bytes[TensorProto.FLOAT16] > float_bytes[TensorProto.FLOAT]  # the bulk is half precision
    assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert all(o.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.INT64) for o in half.graph.output)
    check = E.verify(tiny, half, batch, True, require_exact=False, log=lambda s: None)
    assert check["token_agreement_per_scale"] == [1.0] * 6
    assert check["depth_max_abs_err"] < 0.01


def _normalize_graph(shape=(1, 4)):
    """F.normalize(x, dim=-1) as torch exports it: ReduceL2, Clip(min=1e-12), Expand, Div."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    nodes = [helper.make_node("ReduceL2", ["x"], ["n"], axes=[-1], keepdims=1, name="l2"),
             helper.make_node("Constant", [], ["eps"], value=onnx.numpy_helper.from_array(np.array(1e-12, np.float32))),
             helper.make_node("Clip", ["n", "eps"], ["c"], name="clip"),
             helper.make_node("Constant", [], ["shape"], value=onnx.numpy_helper.from_array(np.array(shape, np.int64))),
             helper.make_node("Expand", ["c", "shape"], ["e"], name="expand"),
             helper.make_node("Div", ["x", "e"], ["y"], name="div")]
    return helper.make_model(helper.make_graph(nodes, "normalize", [x], [y]), opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_zero_vector_normalizes_to_zero_in_the_fp16_graph_not_nan():
    graph, zero = _normalize_graph(), {"x": np.zeros((1, 4), np.float32)}
    assert E.fp32_islands(graph) == {"n", "c", "e", "y"}
    whole = E.ort_session(E.to_fp16(graph)).run(None, zero)[0]
    kept = E.ort_session(E.to_fp16(graph, keep_fp32=E.fp32_islands(graph))).run(None, zero)[0]
    assert np.isnan(whole).all()  # epsilon 1e-12 is 0 in FP16: 0 / 0
    assert (kept == 0).all()
    ones = E.ort_session(E.to_fp16(graph, keep_fp32=E.fp32_islands(graph))).run(None, {"x": np.ones((1, 4), np.float32)})
    assert np.allclose(ones[0], 0.5)


def test_int8_graph_quantizes_the_matmuls_keeps_the_head_and_runs(exported, tiny):
    batch, _, graph = exported
    if batch != 2:
        pytest.skip("one check is enough: the batch-2 graph, which has the tokens output")
    q = E.to_int8(graph)
    ops = E.op_counts(q)
    assert ops["MatMulInteger"] + ops["DynamicQuantizeMatMul"] > 20
    assert [w.data_type for w in _copies_of(tiny.var.head.weight, q.graph.initializer)] == [TensorProto.FLOAT]
    assert ops["ArgMax"] == ops["ArgMin"] == 6 and len(q.graph.initializer) > 0
    assert sum(E._tensor_nbytes(i) for i in q.graph.initializer) < E.initializer_bytes(graph)
    check = E.verify(tiny, q, batch, True, require_exact=False, log=lambda s: None)
    assert check["token_agreement_per_scale"][0] == 1.0
    assert np.mean(check["token_agreement_per_scale"]) > 0.7
    assert check["depth_mean_abs_err"] < 0.05


@pytest.mark.parametrize("flags, said", [(["--fp16", "--int8"], "choose one"),
                                         (["--fp16", "--fp16-keep", "head,tail"], "unknown part"),
                                         (["--int8", "--engine"], "ONNX Runtime on the CPU")])
def test_precision_flags_that_contradict_are_one_line(tmp_path, capsys, flags, said):
    with pytest.raises(SystemExit) as e:
        E.main(["--preset", "tiny", "--out", str(tmp_path / "x.onnx")] + flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and said in err[-1] and not (tmp_path / "x.onnx").exists()


def test_engine_flag_without_tensorrt_writes_onnx_and_fails_in_one_line(tmp_path, capsys, monkeypatch):
    def missing():
        raise E.EngineUnavailable("TensorRT is not installed")
    monkeypatch.setattr(E, "import_tensorrt", missing)  # also where TensorRT happens to be installed
    out = tmp_path / "tiny.onnx"
    code = E.main(["--preset", "tiny", "--out", str(out), "--engine", "--no-check", "--max-scale", "1"])  # a small graph
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "TensorRT" in ln]
    assert code != 0
    assert len(lines) == 1 and "no engine built" in lines[0] and str(out) in lines[0]
    assert E.graph_problems(onnx.load(str(out))) == []


def test_engine_name_changes_with_graph_tensorrt_and_gpu():
    a = E.engine_name(b"graph-1", "10.13.0", "NVIDIA H100 80GB HBM3", "9.0")
    assert a == E.engine_name(b"graph-1", "10.13.0", "NVIDIA H100 80GB HBM3", "9.0")
    others = [E.engine_name(b"graph-2", "10.13.0", "NVIDIA H100 80GB HBM3", "9.0"),
              E.engine_name(b"graph-1", "11.0.0", "NVIDIA H100 80GB HBM3", "9.0"),
              E.engine_name(b"graph-1", "10.13.0", "NVIDIA A100-SXM4-40GB", "8.0"),
              E.engine_name(b"graph-1", "10.13.0", "NVIDIA H100 80GB HBM3", "9.1")]
    assert len({a, *others}) == 5
    assert a.endswith(".engine") and "/" not in a and " " not in a
    assert hashlib.sha256(b"graph-1").hexdigest()[:16] in a and "trt10.13.0" in a and "sm90" in a


def test_graph_checker_catches_what_tensorrt_would_refuse():
    def graph_with(node, out_shape):
        g = helper.make_graph(
            [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4]),
                          helper.make_tensor_value_info("i", TensorProto.INT64, [1, 1]),
                          helper.make_tensor_value_info("u", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    scatter = graph_with(helper.make_node("ScatterND", ["x", "i", "u"], ["y"]), ["B", 4])
    problems = " ".join(E.graph_problems(scatter))
    assert "ScatterND" in problems and "static shape" in problems
    old = graph_with(helper.make_node("Relu", ["x"], ["y"]), ["B", 4])
    old.opset_import[0].version = 13
    assert "opset 13" in " ".join(E.graph_problems(old))


# ---------------------------------------------------------------------------------------------
# TensorRT engine building with a fake TensorRT (tests/conftest.py): timing caches, unwritable folders
# ---------------------------------------------------------------------------------------------
def test_timing_cache_is_keyed_by_tensorrt_and_gpu(fake_tensorrt, tmp_path):
    graph = tmp_path / "g.onnx"
    graph.write_bytes(b"graph")
    trt = fake_tensorrt("NVIDIA H100 80GB HBM3", "9.0")
    engine = E.build_engine(graph, tmp_path, log=lambda s: None)
    assert engine.is_file() and trt.built == 1 and trt.caches == [b""]
    h100_cache = tmp_path / "timing-trt10.9.0-nvidia-h100-80gb-hbm3-sm90.cache"
    assert h100_cache.read_bytes() == b"timings measured here"
    trt = fake_tensorrt("NVIDIA A100-SXM4-40GB", "8.0")  # another GPU: another engine, never the H100's timings
    other = E.build_engine(graph, tmp_path, log=lambda s: None)
    assert other != engine and trt.caches == [b""]
    assert (tmp_path / "timing-trt10.9.0-nvidia-a100-sxm4-40gb-sm80.cache").is_file()
    trt = fake_tensorrt("NVIDIA H100 80GB HBM3", "9.0")
    assert E.build_engine(graph, tmp_path, log=lambda s: None) == engine and trt.built == 0  # reused


def test_fp16_constrained_engine_pins_the_island_layers_to_fp32(exported, fake_tensorrt, tmp_path):
    batch, _, graph = exported
    if batch != 2:
        pytest.skip("one check is enough")
    path = tmp_path / "g.onnx"
    onnx.save(graph, str(path))
    trt = fake_tensorrt()  # TensorRT 10.9: weakly typed networks allowed
    engine = E.build_engine(path, tmp_path, log=lambda s: None, fp16_constrained=True)
    assert "-fp16c-" in engine.name and engine != E.engine_path_for(path, tmp_path)
    assert trt.config.flags == {trt.BuilderFlag.FP16, trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS}
    islands = E.fp32_islands(graph)
    pinned = [layer for layer in trt.network.layers if layer.precision == trt.float32]
    assert {layer.outputs[0].name for layer in pinned} == islands
    assert all(layer.output_types == {j: trt.float32 for j, t in enumerate(layer.outputs) if t.dtype == trt.float32}
               for layer in pinned)
    assert all(layer.precision is None for layer in trt.network.layers if layer.outputs[0].name not in islands)
    fake_tensorrt(version="11.0.0")  # TensorRT 11 is strongly typed: the constraints do not exist there
    with pytest.raises(E.EngineUnavailable, match="strongly typed"):
        E.build_engine(path, tmp_path, log=lambda s: None, fp16_constrained=True)


def test_a_rejected_or_failing_timing_cache_is_dropped_and_said(fake_tensorrt, tmp_path):
    graph = tmp_path / "g.onnx"
    graph.write_bytes(b"graph")
    cache = tmp_path / E.timing_cache_name("10.9.0", "NVIDIA H100 80GB HBM3", "9.0")
    cache.write_bytes(b"foreign timings")
    trt, lines = fake_tensorrt(accept_cache=False), []
    E.build_engine(graph, tmp_path / "a", timing_cache=cache, log=lines.append)
    assert trt.caches == [b"foreign timings", b""] and trt.built == 1
    assert any("does not fit" in ln for ln in lines)
    cache.write_bytes(b"foreign timings")
    trt, lines = fake_tensorrt(fail_with_cache=True), []
    E.build_engine(graph, tmp_path / "b", timing_cache=cache, log=lines.append)
    assert trt.built == 1 and any("retrying without it" in ln for ln in lines)


def test_an_unwritable_engine_folder_is_engine_unavailable(fake_tensorrt, tmp_path):
    graph = tmp_path / "g.onnx"
    graph.write_bytes(b"graph")
    (tmp_path / "a-file").write_text("x")
    fake_tensorrt()
    with pytest.raises(E.EngineUnavailable, match="cannot write the engine"):
        E.build_engine(graph, tmp_path / "a-file" / "engines", log=lambda s: None)


# ---------------------------------------------------------------------------------------------
# Command-line mistakes: one line, non-zero exit, nothing lost
# ---------------------------------------------------------------------------------------------
class FlipOneToken:
    """An ONNX Runtime session whose greedy tokens differ from PyTorch's at one position."""

    def __init__(self, session):
        self.session = session

    def get_outputs(self):
        return self.session.get_outputs()

    def run(self, names, feeds):
        out = self.session.run(names, feeds)
        i = [o.name for o in self.session.get_outputs()].index("tokens")
        out[i] = out[i].copy()
        out[i][0, -1] = (out[i][0, -1] + 1) % 512
        return out


def test_token_flips_say_what_they_mean_and_which_flag_accepts_them(mini_checkpoint, tmp_path, capsys, monkeypatch):
    real = E.ort_session
    monkeypatch.setattr(E, "ort_session", lambda m, threads=None, **kw: FlipOneToken(real(m, threads, **kw)))
    out, ckpt = tmp_path / "x.onnx", str(mini_checkpoint)  # three scales, one block: a small graph
    assert E.main(["--checkpoint", ckpt, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "near-tied logits" in err[0] and "--allow-token-flips" in err[0] and not out.exists()
    assert not list(tmp_path.iterdir())  # the refused graph left nothing behind, not even its staging folder
    assert E.main(["--checkpoint", ckpt, "--out", str(out), "--allow-token-flips"]) == 0
    agreement = json.loads(out.with_suffix(".json").read_text())["fp32_check"]["token_agreement_per_scale"]
    assert out.is_file() and agreement[-1] < 1.0 and agreement[0] == 1.0


@pytest.mark.parametrize("out", ["folder", "/proc/depthart-test/x.onnx"])
def test_unwritable_out_is_one_line_before_the_export(tmp_path, capsys, out):
    out = str(tmp_path) if out == "folder" else out
    assert E.main(["--preset", "tiny", "--out", out]) == 2
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1 and "export.py: error:" in captured.err
    assert "traced" not in captured.out  # refused before minutes of work


def test_a_normals_checkpoint_exports_with_parity(normals_export):
    """A small model (conftest.mini_config) with target normals: the graph outputs unit normals (and their per-scale maps) named
    after the target, token-exact and within 1e-3 of PyTorch (renormalizing a random decoder's short vectors
    magnifies float rounding; see export.verify). The export (tests/conftest.py) is
    `export.py --checkpoint normals.safetensors --all-scales`, run once for this test and test_infer's."""
    model, _, out, code = normals_export
    assert code == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["target"] == "normals" and report["outputs"] == ["normals", "normals_scales"]
    assert min(report["fp32_check"]["token_agreement_per_scale"]) == 1.0
    assert report["fp32_check"]["depth_max_abs_err"] <= 1e-3 and report["fp32_check"]["depth_mean_abs_err"] < 1e-5
    sess = E.ort_session(out)
    S, K = model.cfg.image_size, len(model.cfg.patch_nums)
    images = E.sample_images(1, S)
    normals, scales = sess.run(None, {"image": images.numpy()})
    assert normals.shape == (1, 3, S, S) and scales.shape == (1, K, 3, S, S)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(normals, model.predict(images).numpy(), atol=1e-3)


def test_the_trace_keeps_weights_apart_as_views_of_the_model(tiny, traced):
    """trace_apart holds no weight bytes in the graph and no copy of a weight beside the model: every tensor it
    keeps shares its storage with a parameter or buffer of the model (a transposed weight is a transposed view)."""
    graph, tensors = traced
    stubs = [i for i in graph.graph.initializer if E.is_stub(i)]
    assert {i.name for i in stubs} == set(tensors) and len(graph.SerializeToString()) < E.parameter_bytes(tiny) / 10
    storages = {t.untyped_storage().data_ptr() for t in list(tiny.parameters()) + list(tiny.buffers())}
    copies = {name for name, t in tensors.items() if t.untyped_storage().data_ptr() not in storages}
    products = {n.input[1] for n in graph.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")}
    assert products & set(tensors) and not products & copies  # the weights proper are views, transposed ones too
    # what is computed (position plus level embeddings per scale, a few Concats) is small beside the weights
    assert sum(tensors[name].numel() * tensors[name].element_size() for name in copies) < 0.05 * E.parameter_bytes(tiny)
    assert sum(E._tensor_nbytes(i) for i in stubs) == sum(t.numel() * t.element_size() for t in tensors.values())


def test_weights_streamed_to_external_data_give_the_same_graph(tiny, graphs, traced):
    """The lean path (the batch-1 graph of `graphs`): weights written one at a time into NAME.onnx.data from the
    model's tensors, the check run with the weights read from that file; the written graph computes what the
    in-memory graph does, bit for bit. Written the command line's way (keep_model=False: write, free the model's
    weights, then check the written files), which leaves the model on the meta device; test_export's batch-2
    graph and tests/test_release.py export with the model kept."""
    report, out = graphs(1)
    model = graphs.models[1]
    assert report["external_data"] and report["fp32_check"]["token_agreement_per_scale"] == [1.0] * 6
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny_b1.onnx", "tiny_b1.onnx.data"]  # nothing staged left
    assert all(p.is_meta for p in model.parameters()) and not any(p.is_meta for p in tiny.parameters())
    assert report["outputs"] == ["depth"] and [o.name for o in onnx.load(str(out), load_external_data=False).graph.output] == ["depth"]
    inits = onnx.load(str(out), load_external_data=False).graph.initializer
    external = [i for i in inits if E.is_stub(i)]
    assert external and all(len(i.raw_data) < 1024 for i in inits if not E.is_stub(i))
    images = E.sample_images(2, 64)[:1].numpy()
    graph, tensors = traced  # the same model traced and tidied, with its weights put inside the graph in memory
    in_memory = E.keep_outputs(E.fill_weights(copy.deepcopy(graph), tensors), report["outputs"])
    np.testing.assert_array_equal(E.ort_session(out, lean=True).run(None, {"image": images})[0],
                                  E.ort_session(in_memory).run(None, {"image": images})[0])


def test_shape_inference_without_weights_gives_the_same_graph(monkeypatch):
    """The exporter's whole-graph shape inference runs without the weights' values (at d16 they cost it 4.5 GB);
    no shape here comes from a weight's values, so the graph is the same byte for byte, and the pass is restored.
    A model smaller than tiny (conftest.mini_config, depthart.py's own) holds every kind of node and traces in half
    the time."""
    torch.manual_seed(0)
    mini = E.lively(D.DepthART(mini_config(image_shortcut=False)))
    jit_pass, weights_seen = torch._C._jit_pass_onnx_graph_shape_type_inference, []

    def spy(graph, params, opset):
        weights_seen.append(len(params))
        return jit_pass(graph, params, opset)
    monkeypatch.setattr(torch._C, "_jit_pass_onnx_graph_shape_type_inference", spy)
    lean_graph, lean_tensors = E.trace_apart(mini, 1)
    assert torch._C._jit_pass_onnx_graph_shape_type_inference is spy and weights_seen and not any(weights_seen)
    monkeypatch.setattr(E, "shape_inference_without_weights", contextlib.nullcontext)  # the exporter's own way
    graph, tensors = E.trace_apart(mini, 1)
    assert max(weights_seen) > 0 and lean_graph.SerializeToString() == graph.SerializeToString()
    assert lean_tensors.keys() == tensors.keys() and all(torch.equal(lean_tensors[k], tensors[k]) for k in tensors)
