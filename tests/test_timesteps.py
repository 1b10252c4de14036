"""The sigma -> U-Net timestep rule is the same bits on every machine, and it is the official
float32 arithmetic done with correctly rounded sqrt, exp and log (docs/timesteps.md)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import HOST, ROOT

pytestmark = pytest.mark.host

def dump() -> dict:
    """All 200 trailing schedules' sigmas and timesteps; run here and in fresh processes."""
    from comfyui_flashface.flashface_core.guidance.schedules import trailing_sigmas
    from comfyui_flashface.flashface_core.model.timesteps import OfficialTimestepSampling

    sampling = OfficialTimestepSampling(None)
    out = {}
    for steps in range(1, 201):
        sigmas = trailing_sigmas(sampling, steps)[:-1]
        out[str(steps)] = [sigmas.tolist(), sampling.timestep(sigmas).tolist()]
    return out


def _dump_in_fresh_process(**env) -> dict:
    """``dump()`` in a new Python with ``env`` set before torch loads (this module, imported there)."""
    script = "import json, sys; sys.path.insert(0, 'tests'); import test_timesteps; print(json.dumps(test_timesteps.dump()))"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=str(ROOT),
        env={**os.environ, "COMFYUI_PATH": str(HOST), **env},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_timesteps_do_not_depend_on_the_cpu_math_library_code_path():
    """MKL's float32 sqrt/exp/log give other last bits on its SSE path than on AVX-512/AVX2;
    that moved the timestep at half times (wrong at 80 and 160 steps there, at 16, 32, ... 192
    here). Threads and MKL's code path must not change a bit."""
    here = dump()
    assert _dump_in_fresh_process(OMP_NUM_THREADS="1", MKL_CBWR="SSE4_2") == here
    assert _dump_in_fresh_process(OMP_NUM_THREADS="2", MKL_CBWR="AVX2") == here


def _reference_timestep(table: np.ndarray, sigma: np.float32) -> int:
    """The official float32 round trip written out scalar by scalar: numpy float32 for
    + - * /, Python's float64 math rounded to float32 for sqrt, exp and log."""
    f = np.float32

    def sqrt(x):
        return f(math.sqrt(float(x)))

    s2 = f(sigma * sigma)
    vp = sqrt(f(s2 / f(f(1) + s2)))
    vp2 = f(vp * vp)
    log_sigma = f(math.log(float(sqrt(f(vp2 / f(f(1) - vp2))))))
    low = min(max(int((log_sigma >= table).sum()) - 1, 0), len(table) - 2)
    weight = min(max(f(f(table[low] - log_sigma) / f(table[low] - table[low + 1])), f(0)), f(1))
    return int(np.round(f(f(f(f(1) - weight) * f(low)) + f(weight * f(low + 1)))))


def _reference_sigma(table: np.ndarray, t: np.float32) -> np.float32:
    f = np.float32
    low, high, w = int(np.floor(t)), int(np.ceil(t)), f(t - f(np.floor(t)))
    return f(math.exp(float(f(f(f(f(1) - w) * table[low]) + f(w * table[high])))))


def test_rule_is_the_official_float32_arithmetic_with_correctly_rounded_functions():
    import torch

    from comfyui_flashface.flashface_core.guidance.schedules import trailing_sigmas
    from comfyui_flashface.flashface_core.model.timesteps import OfficialTimestepSampling, trailing_timesteps

    sampling = OfficialTimestepSampling(None)
    table = sampling.log_sigmas.float().numpy()
    for steps in range(1, 201):
        times = trailing_timesteps(steps).numpy()
        sigmas = trailing_sigmas(sampling, steps)[:-1]
        assert sigmas.numpy().tolist() == [_reference_sigma(table, t) for t in times]
        assert sampling.timestep(sigmas).tolist() == [_reference_timestep(table, s) for s in sigmas.numpy()]
    # a batch as the sampler sends it (sigma repeated per condition) gets one timestep each
    sigma = trailing_sigmas(sampling, 16)[5]
    assert sampling.timestep(sigma.repeat(3)).tolist() == [_reference_timestep(table, sigma.numpy())] * 3
    assert sampling.timestep(torch.tensor(1.0)).shape == ()
