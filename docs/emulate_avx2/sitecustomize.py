"""Run anything as on a CPU without native BF16, from one that has it (AVX512-BF16 or AMX).

    PYTHONPATH=docs/emulate_avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python -m pytest -q tests

Python imports this file at start-up because it is on PYTHONPATH (the `site` module's sitecustomize hook), in
every process, subprocesses included. It makes torch.cpu's hardware queries answer False for BF16 and AMX, so
train.native_bf16 and everything that asks it take their AVX2 paths; the environment variables make PyTorch
dispatch its AVX2 kernels (ATEN_CPU_CAPABILITY), oneDNN use AVX2 only (so BF16 is emulated, as there) and MKL
too. ONNX Runtime has no such switch: its kernels keep using what the CPU has, so its timings here are not an
AVX2 machine's. torch itself is not imported here; the queries are replaced when torch.cpu is first imported.
"""
import importlib.abc
import sys

_NO = ("_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_amx_fp16_supported")


class _AnswerNoBF16(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "torch.cpu":
            return None
        spec = next((s for f in sys.meta_path if f is not self
                     for s in [getattr(f, "find_spec", lambda *a: None)(name, path, target)] if s), None)
        if spec is None or spec.loader is None:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            for query in _NO:
                setattr(module, query, lambda: False)
        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _AnswerNoBF16())
