"""benchmark.py --anchors at toy size: the table's rows, and FLOP figures that add up (never a speed); and
--skip anchors, DepthART against VAR-d16 alone, which needs no extra package."""
import importlib.util
import json

import onnx
import pytest
from onnx import TensorProto, helper

import benchmark

needs_anchors = pytest.mark.skipif(not (importlib.util.find_spec("transformers") and importlib.util.find_spec("diffusers")),
                                   reason="the anchors need requirements-anchors.txt (transformers, diffusers)")


def stand_in_graph(path):
    """A graph with DepthART tiny's input and a depth output: enough to wire the ONNX Runtime rows without the
    export (tens of seconds); its cost is not what the row reports (the row shares the eager path's FLOPs)."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 64, 64])
    depth = helper.make_tensor_value_info("depth", TensorProto.FLOAT, [1, 1, 64, 64])
    node = helper.make_node("ReduceMean", ["image"], ["depth"], axes=[1], keepdims=1)
    graph = helper.make_graph([node], "stand_in", [image], [depth])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)  # any ORT loads IR 8
    onnx.save(model, str(path))
    return str(path)


def test_skip_anchors_times_depthart_against_var_in_the_same_rounds(tmp_path, capsys, monkeypatch):
    graph = stand_in_graph(tmp_path / "g.onnx")
    generated = []  # VAR's own code is not here: a stand-in generation that counts its calls (and a matmul)
    monkeypatch.setattr(benchmark, "official_var_d16",
                        lambda repo: lambda: generated.append(benchmark.torch.ones(64, 64) @ benchmark.torch.ones(64, 64)))
    out = tmp_path / "var.json"
    assert benchmark.main(["--anchors-tiny", "--skip", "anchors", "--reps", "2", "--graph", graph, "--int8-graph", graph,
                           "--var-repo", "VAR", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["anchors"]
    assert [r["model"].split(",")[0] for r in rows] == ["DepthART tiny", "VAR-d16", "DepthART tiny", "DepthART tiny"]
    assert len(generated) == 3  # the counted warm-up run and two timed rounds
    assert rows[1]["gflop"] == pytest.approx(2 * 64 ** 3 / 1e9)
    var_s = rows[1]["seconds"]
    for r in rows[:1] + rows[2:]:
        assert r["of_var_d16"] == pytest.approx(r["seconds"] / var_s)
    assert "of_var_d16" not in rows[1] and "transformers" not in result and result["ort_matmul_fp32_gflops"] > 0
    assert result["capability"] == benchmark.torch.backends.cpu.get_cpu_capability()
    printed = capsys.readouterr().out
    assert "left out (--skip anchors)" in printed and "Marigold" not in printed.split("left out")[1]
    assert f"against VAR-d16's own generation: PyTorch FP32 eager (KV cache) {rows[0]['of_var_d16']:.2f}x" in printed


def test_ort_ops_profiles_a_graph_by_operator_type(tmp_path, capsys):
    graph = stand_in_graph(tmp_path / "g.onnx")
    out = tmp_path / "ops.json"
    assert benchmark.main(["--ort-ops", graph, "--threads", "1", "--json", str(out)]) == 0
    assert list(json.loads(out.read_text())["ort_op_seconds"]) == ["ReduceMean"]  # the stand-in's one node
    printed = capsys.readouterr().out
    assert "g.onnx, 64x64, 1 threads" in printed and "0% of it in matrix products" in printed
    assert benchmark.main(["--ort-ops", str(tmp_path / "missing.onnx")]) == 2
    assert capsys.readouterr().err.strip() == f"benchmark.py: error: --ort-ops {tmp_path / 'missing.onnx'}: no such file"
    (tmp_path / "text.onnx").write_text("<html>not a graph</html>")
    assert benchmark.main(["--ort-ops", str(tmp_path / "text.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "text.onnx: not an ONNX graph" in err[0], err
    other = onnx.load(graph)
    other.graph.input[0].name = other.graph.node[0].input[0] = "pixels"
    onnx.save(other, str(tmp_path / "other.onnx"))
    assert benchmark.main(["--ort-ops", str(tmp_path / "other.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other.onnx: not a DepthART graph" in err[0], err


@needs_anchors
def test_anchor_table_rows_and_flops(tmp_path, capsys):
    graph = stand_in_graph(tmp_path / "g.onnx")
    out = tmp_path / "anchors.json"
    assert benchmark.main(["--anchors-tiny", "--reps", "1", "--graph", graph, "--int8-graph", graph,
                           "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    models = [r["model"] for r in result["anchors"]]
    expected = ["DepthART tiny, PyTorch FP32 eager", "DepthART tiny, ONNX Runtime CPU FP32",
                "DepthART tiny, ONNX Runtime CPU INT8", "Depth Anything V2 S", "Depth Anything V2 B",
                "Depth Anything V2 L", "Marigold, 1 step", "Marigold, 4 steps", "Marigold, 50 steps"]
    assert len(models) in (len(expected), len(expected) + 1)
    assert all(m.startswith(e) for m, e in zip(models, expected)), models
    assert models[len(expected):] in ([], [m for m in models if m.startswith("Depth Pro")])  # where transformers has it
    rows = {e: r for e, r in zip(expected, result["anchors"])}
    for r in result["anchors"]:
        assert r["seconds"] > 0 and r["gflop"] > 0 and r["of_matmul"] > 0 and r["matmul_gflops"] > 0, r
    depthart = rows["DepthART tiny, PyTorch FP32 eager"]["gflop"]
    assert depthart == pytest.approx(1.21, rel=0.05)  # the tiny preset's count in the plain benchmark
    assert rows["DepthART tiny, ONNX Runtime CPU FP32"]["gflop"] == rows["DepthART tiny, ONNX Runtime CPU INT8"]["gflop"] == depthart
    da = [rows[f"Depth Anything V2 {s}"]["gflop"] for s in "SBL"]
    assert da[0] < da[1] < da[2]

    # Marigold's rows are the VAE encode, N UNet steps and the VAE decode, timed and counted once each
    one, four, fifty = (rows[f"Marigold, {n}"] for n in ("1 step", "4 steps", "50 steps"))
    step = one["parts"]["UNet step"]
    assert one["gflop"] < four["gflop"] < fifty["gflop"]
    assert four["gflop"] - one["gflop"] == pytest.approx(3 * step["gflop"])
    for n, r in ((1, one), (4, four), (50, fifty)):
        assert r["parts"]["UNet step"]["times"] == n and r["composed"]
        assert r["seconds"] == pytest.approx(sum(p["times"] * p["seconds"] for p in r["parts"].values()))
    assert result["cpu"] and result["transformers"] and result["diffusers"]

    printed = capsys.readouterr().out  # each group's rows as it finishes, then the whole table
    header = "| model | input | s / image | GFLOP / image |"
    assert header in printed
    table = printed.split(header)[1]
    assert table.count("| Marigold") == 3 and "(*) the sum of parts" in table
