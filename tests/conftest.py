"""Shared test helpers: a fake TensorRT module for the engine-building paths (no GPU needed), a model smaller than
the tiny preset, a small normals model exported once, command lines started before their tests need them, and a
folder of generated photographs (photo textures)."""
import subprocess
import types

import pytest


def make_fake_tensorrt(version="10.9.0", accept_cache=True, fail_with_cache=False):
    """A module with the slice of the TensorRT 10/11 Python API that export.build_engine uses.

    Records every timing cache it is given (trt.caches) and every engine built (trt.built); set_timing_cache
    rejects non-empty caches unless accept_cache; a build with a non-empty cache fails if fail_with_cache."""
    trt = types.ModuleType("tensorrt")
    trt.__version__, trt.accept_cache, trt.fail_with_cache = version, accept_cache, fail_with_cache
    trt.caches, trt.built = [], 0

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class TimingCache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return b"timings measured here"

    class Config:
        cache = None

        def __init__(self):
            self.flags = set()

        def set_flag(self, flag):
            self.flags.add(flag)

        def set_memory_pool_limit(self, pool, size):
            pass

        def clear_flag(self, flag):
            pass

        def create_timing_cache(self, data):
            trt.caches.append(bytes(data))
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            if cache.data and not trt.accept_cache:
                return False
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            trt.network = Network()
            return trt.network

        def create_builder_config(self):
            trt.config = Config()
            return trt.config

        def build_serialized_network(self, network, config):
            if trt.fail_with_cache and config.cache is not None and config.cache.data:
                return None
            trt.built += 1
            return b"serialized engine"

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):  # one layer per ONNX node, its tensors named after the node's outputs
            import onnx
            try:
                nodes = onnx.load(str(path), load_external_data=False).graph.node
            except Exception:  # the tests whose "graph" is a few placeholder bytes
                nodes = []
            for node in nodes:
                self.network.layers.append(Layer(node.name, node.output, "ArgM" in node.op_type))
            return True

    class Tensor:
        def __init__(self, name, dtype):
            self.name, self.dtype = name, dtype

    class Layer:
        def __init__(self, name, outputs, integer):
            self.name, self.precision, self.output_types = name, None, {}
            self.outputs = [Tensor(o, trt.int64 if integer else trt.float32) for o in outputs]
            self.num_outputs = len(self.outputs)

        def get_output(self, i):
            return self.outputs[i]

        def set_output_type(self, i, dtype):
            self.output_types[i] = dtype

    class Network:
        def __init__(self):
            self.layers = []

        @property
        def num_layers(self):
            return len(self.layers)

        def get_layer(self, i):
            return self.layers[i]

    trt.float32, trt.float16, trt.int64 = "float32", "float16", "int64"
    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)
    trt.BuilderFlag = types.SimpleNamespace(TF32=0, FP16=1, OBEY_PRECISION_CONSTRAINTS=2)
    trt.network = None
    return trt


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """Install a fake TensorRT and a fake GPU; returns a function (gpu name, capability, **options) -> module."""
    import export as E

    def install(gpu="NVIDIA H100 80GB HBM3", cc="9.0", **options):
        trt = make_fake_tensorrt(**options)
        monkeypatch.setitem(__import__("sys").modules, "tensorrt", trt)
        monkeypatch.setattr(E, "gpu_description", lambda: (gpu, cc))
        return trt
    return install


def mini_config(**changes):
    """A model smaller than the tiny preset (32x32 images, three scales, one block, 64 codes; the image shortcut
    of the CPU presets) that still holds every kind of node the exporter meets, and exports, checks and runs in
    well under half of tiny's time: for tests whose assertions do not depend on the model's size."""
    import zoo as Z
    return Z.Config(**{**dict(image_size=32, patch_nums=(1, 2, 4), vocab_size=64, vae_ch=16, vae_ch_mult=(1, 2, 4, 4),
                              vae_res_blocks=1, depth=1, width=32, heads=2, num_classes=0, image_shortcut=True),
                       **changes})


@pytest.fixture(scope="session")
def normals_export(tmp_path_factory):
    """A small random normals model (mini_config, lively, seed 0), its checkpoint and `export.py --checkpoint ...
    --all-scales` of it, once per session -> (model, checkpoint, graph, export.main's exit code). test_export checks
    the export; test_infer runs the same graph through the command line rather than exporting it a second time."""
    import torch
    import export as E
    import zoo as Z
    torch.manual_seed(0)
    model = E.lively(Z.build(mini_config(target="normals")))
    folder = tmp_path_factory.mktemp("normals")
    checkpoint, graph = folder / "normals.safetensors", folder / "normals.onnx"
    Z.save_checkpoint(checkpoint, model, {"stage": "transformer", "target": "normals"})
    return model, checkpoint, graph, E.main(["--checkpoint", str(checkpoint), "--out", str(graph), "--all-scales"])


class Started:
    """A command line started before its test needs it: subprocess.Popen(argv, **kwargs), its output captured as
    text. A fresh interpreter spends its first seconds importing torch on one core; started as a module begins,
    it does so beside the module's first tests, which leave the other core (nearly) idle, and its test reads
    result() later."""

    def __init__(self, argv, **kwargs):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)

    def result(self, timeout=120) -> subprocess.CompletedProcess:
        """Wait for the command -> subprocess.CompletedProcess (returncode, stdout, stderr), as subprocess.run."""
        out, err = self.proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)

    def stop(self):
        """End the command if its test did not wait for it (deselected, or failed before)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


def selected(request, name: str) -> bool:
    """Whether the test function `name` of the requesting module runs in this session (-k, node ids, -m)."""
    return any(getattr(item, "module", None) is request.module and getattr(item, "originalname", None) == name
               for item in request.session.items)


def photo_folder(path, n=3):
    """A folder of n small generated photographs (noise at a few pixels' scale, PNG and JPEG, not square)."""
    import numpy as np
    from PIL import Image
    from scipy import ndimage
    path.mkdir()
    rng = np.random.default_rng(7)
    for i in range(n):
        pic = ndimage.gaussian_filter(rng.random((48 + 8 * i, 40, 3)), (1.5, 1.5, 0))
        pic = (255 * np.clip((pic - pic.mean()) * 8 + 0.5, 0, 1)).astype(np.uint8)
        Image.fromarray(pic).save(path / f"photo{i}.{'jpg' if i == 2 else 'png'}")
    return path
