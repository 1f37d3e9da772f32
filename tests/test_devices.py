"""Device names: auto follows the machine; bad names and absent GPUs are refused clearly."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from midiffusion.cli.translate import configure as translate_configure
from midiffusion.cli.translate import run as translate_run
from midiffusion.io.imaging import save_png
from midiffusion.pipeline.devices import resolve_device


def test_auto_and_cpu():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "mps", "CPU", ""])
def test_unknown_names_are_refused_with_the_accepted_list(name):
    with pytest.raises(ValueError, match=r"accepted: auto .*cpu, cuda or cuda:N"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_index_past_the_last_gpu_is_refused():
    with pytest.raises(ValueError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_translate_cli_reports_a_bad_device_and_writes_nothing(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    translate_configure(parser)
    src = tmp_path / "in.png"
    save_png(np.random.default_rng(0).random((32, 32), dtype=np.float32), src)
    out = tmp_path / "out.png"
    args = parser.parse_args([str(src), "-m", "t1w", "-o", str(out), "--device", "tpu"])
    assert translate_run(args) == 1
    assert "device 'tpu': accepted" in capsys.readouterr().err
    assert not out.exists()
