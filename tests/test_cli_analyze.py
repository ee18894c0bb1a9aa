"""`vgcore analyze --module PKG.MOD:FACTORY --input-shape ...`: a report for any torch module,
and errors that name the argument."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("torch")

from vgcore.cli import main

NETS = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self, w):
            super().__init__()
            self.lin = nn.Linear(w, w)
            self.act = nn.Sigmoid()

        def forward(self, x):
            return self.act(self.lin(x))

    class Net(nn.Module):
        def __init__(self, w=8, depth=12):
            super().__init__()
            self.blocks = nn.ModuleList([Layer(w) for _ in range(depth)])

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return x

    def make():
        torch.manual_seed(0)
        return Net().double()

    def broken():
        raise RuntimeError("no weights here")

    def not_a_module():
        return 42

    torch.manual_seed(1)
    INSTANCE = Net(4, 3)
    NUMBER = 7
    """
)


@pytest.fixture
def nets(tmp_path, monkeypatch):
    pkg = tmp_path / "src"
    pkg.mkdir()
    (pkg / "h5nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(pkg))
    sys.modules.pop("h5nets", None)
    yield pkg
    sys.modules.pop("h5nets", None)


FLAGS = ("--input-shape", "6,8", "--seed", "4", "--json", "--output")


def test_report_from_a_factory_in_a_subprocess(nets, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "rep"
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(nets), env.get("PYTHONPATH", "")])
    r = subprocess.run(
        [sys.executable, "-m", "vgcore", "analyze", "--module", "h5nets:make", *FLAGS, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    (d,) = doc["diagnoses"]
    assert d["name"] == "h5nets:make" and d["verdict"] == "vanishing"
    assert d["evidence"]["block_names"] == [f"blocks.{i}" for i in range(12)]
    assert d["recommended"][0]["fix"] in ("ReLU + He init", "GELU + He init")
    assert doc["report"] == str(out / "report.html")
    md = (out / "report.md").read_text()
    assert "h5nets:make: vanishing" in md and "| blocks.11 |" in md
    assert len(list((out / "figures").glob("*.png"))) == 3


def _input_oracle(seed: int, shape: tuple[int, ...]):
    """The CLI's inputs: standard normal float64 draws from a CPU generator seeded ``seed``."""
    import torch

    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_in_process_numbers_seed_blocks_and_dtype(nets, tmp_path, capsys):
    import h5nets

    import vgcore

    out = tmp_path / "r"
    argv = ["analyze", "--module", "h5nets:make", "--input-shape", "5,8", "--seed", "2"]
    argv += ["--blocks", "blocks.0,blocks.6", "--out", str(out), "--no-check", "--json"]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    (d,) = doc["diagnoses"]
    # blocks.0 runs to blocks.6's input, blocks.6 to its own output, then the rest ("after")
    assert d["evidence"]["block_names"] == ["blocks.0", "blocks.6", "after"]
    # the same numbers from the library on the same module and inputs (float64)
    want = vgcore.diagnose(
        h5nets.make(), _input_oracle(2, (5, 8)), blocks=["blocks.0", "blocks.6"], check=False
    )
    full = _flow64(h5nets.make(), 5, seed=2)
    np.testing.assert_allclose(d["evidence"]["log10_grad_norms"], full[[0, 6, 7, 12]], rtol=1e-10)
    np.testing.assert_allclose(
        d["evidence"]["log10_grad_norms"], want.evidence["log10_grad_norms"], rtol=1e-12
    )
    # --dtype float32 converts the module (and the inputs follow it)
    assert (
        main(
            [
                *("analyze", "--module", "h5nets:make", "--input-shape", "5,8", "--dtype"),
                *("float32", "--out", str(tmp_path / "r32"), "--no-check", "--json"),
            ]
        )
        == 0
    )
    (d32,) = json.loads(capsys.readouterr().out)["diagnoses"]
    g32 = np.asarray(d32["evidence"]["log10_grad_norms"])
    # float32 against float64 autograd (the float32 tolerance of CONTRIBUTING.md)
    np.testing.assert_allclose(g32, _flow64(h5nets.make(), 5), rtol=1e-4)


def _flow64(net, batch, seed=0):
    """log10 ||dL/dh_i|| over the 12 layers by autograd in float64, the CLI's inputs."""
    x = _input_oracle(seed, (batch, 8)).requires_grad_(True)
    hs = [x]
    for b in net.blocks:
        h = b(hs[-1])
        h.retain_grad()
        hs.append(h)
    (0.5 * (hs[-1] ** 2).sum()).backward()
    return np.array([math.log10(float(h.grad.norm())) for h in hs])


def test_an_instance_attribute_is_accepted(nets, tmp_path, capsys):
    assert (
        main(
            [
                *("analyze", "--module", "h5nets:INSTANCE", "--input-shape", "2,4"),
                *("--out", str(tmp_path / "i"), "--no-check", "--json"),
            ]
        )
        == 0
    )
    (d,) = json.loads(capsys.readouterr().out)["diagnoses"]
    assert len(d["evidence"]["block_names"]) == 3


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--module", "h5nets", "--input-shape", "2,8"], 2, r"--module must be PKG\.MOD:FACTORY"),
        (["--module", "h5nets:make"], 2, r"--module needs --input-shape"),
        (
            ["--module", "no_such_pkg.mod:make", "--input-shape", "2,8"],
            2,
            r"--module no_such_pkg\.mod:make: cannot import 'no_such_pkg\.mod'",
        ),
        (["--module", "h5nets:missing", "--input-shape", "2,8"], 2, r"has no attribute 'missing'"),
        (
            ["--module", "h5nets:NUMBER", "--input-shape", "2,8"],
            2,
            r"'NUMBER' is a int, not a torch",
        ),
        (
            ["--module", "h5nets:not_a_module", "--input-shape", "2,8"],
            2,
            r"not_a_module\(\) returned a int, not a torch\.nn\.Module",
        ),
        (["--module", "h5nets:broken", "--input-shape", "2,8"], 1, r"calling broken\(\) failed"),
        (["--module", "h5nets:make", "--input-shape", "2,x"], 2, r"--input-shape must be comma"),
        (["--module", "h5nets:make", "--input-shape", "2,7"], 1, r"--input-shape 2,7"),
        (
            ["--module", "h5nets:make", "--input-shape", "2,8", "--depth", "3"],
            2,
            r"--depth does not apply with --module",
        ),
        (
            ["--module", "h5nets:make", "--input-shape", "2,8", "--dtype", "float16"],
            2,
            r"--dtype must be float32 or float64",
        ),
        (
            ["--module", "h5nets:make", "--input-shape", "2,8", "--blocks", "nope"],
            2,
            r"--blocks: 'nope' is not a submodule",
        ),
        (["--input-shape", "2,8"], 2, r"--input-shape applies only with --module"),
        (
            ["--module", "h5nets:make", "--input-shape", "2,8", "--out", "a", "--report", "b"],
            2,
            r"give the report folder once",
        ),
    ],
)
def test_bad_arguments_are_named(nets, tmp_path, capsys, monkeypatch, argv, code, message):
    import re

    monkeypatch.chdir(tmp_path)
    assert main(["analyze", *argv, "--no-check"]) == code
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not (tmp_path / "vgcore-report").exists() or code == 1
