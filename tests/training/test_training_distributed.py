import os
import signal
import subprocess
import sys

import pytest
import torch

from phmdiff.training import distributed
from phmdiff.training.distributed import choose_device, cpu_has_bf16, resolve_amp


def test_auto_device_prefers_cuda_then_mps_then_cpu():
    device = choose_device("auto")
    if torch.cuda.is_available():
        assert device.type == "cuda"
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        assert device.type == "mps"
    else:
        assert device.type == "cpu"
    assert choose_device("cpu").type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_a_sentence():
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        choose_device("cuda")


def test_amp_choices():
    assert resolve_amp("bf16", torch.device("cpu")) == "bf16"
    assert resolve_amp("no", torch.device("cpu")) == "no"
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        resolve_amp("fp16", torch.device("cpu"))


def test_amp_auto_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch):
    assert not cpu_has_bf16("flags\t: fpu sse2 avx2 fma avx512f\n")
    assert cpu_has_bf16("flags\t: fpu avx2 avx512f avx512_bf16\n") and cpu_has_bf16("flags : amx_bf16 amx_tile")
    for native, expected in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(distributed, "native_bf16", lambda device, native=native: native)
        assert resolve_amp("auto", torch.device("cpu")) == expected
    with pytest.raises(ValueError, match="expected auto, bf16, fp16 or no"):
        resolve_amp("fp8", torch.device("cpu"))


_SCRIPT = r"""
import torch
from phmdiff.training.distributed import setup_accelerator, cleanup, is_main_process, world_size
acc = setup_accelerator("no", 1, "cpu")
assert torch.distributed.get_backend() == "gloo" and world_size() == 2
torch.manual_seed(0)
net = torch.nn.Linear(3, 1)
opt = torch.optim.SGD(net.parameters(), lr=0.1)
net, opt = acc.prepare(net, opt)
x = torch.randn(4, 3) * (acc.process_index + 1)  # different data per rank
acc.backward(net(x).square().mean())
opt.step()
w = acc.gather(acc.unwrap_model(net).weight.detach()[None])
assert torch.equal(w[0], w[1]), "ranks diverged"
import sys
# One write per line: both ranks share the pipe, and print's separate writes could interleave mid-line.
sys.stdout.write(f"rank {acc.process_index} main {is_main_process()}\n")
sys.stdout.flush()
cleanup()
"""


def test_two_process_cpu_ddp_with_gloo_exits_cleanly(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # never leave workers behind on a hang
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stderr[-2000:]
    assert "rank 0 main True" in stdout and "rank 1 main False" in stdout


def test_a_second_training_in_one_process_may_change_precision():
    """A benchmark trains several configs in one process: fp32 first, then bf16 autocast, must both be honoured."""
    from phmdiff.training.distributed import setup_accelerator

    assert setup_accelerator("no", device="cpu").mixed_precision == "no"
    assert setup_accelerator("bf16", device="cpu").mixed_precision == "bf16"
    assert setup_accelerator("no", device="cpu").mixed_precision == "no"
