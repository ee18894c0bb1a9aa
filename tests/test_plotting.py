"""vgcore.plotting: every figure draws what it says (Agg backend, no display)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import vgcore
from vgcore import LSTM, MLP, plotting

mpl = pytest.importorskip("matplotlib")
mpl.use("Agg")
plt = pytest.importorskip("matplotlib.pyplot")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _flows():
    x = np.random.default_rng(0).standard_normal((16, 24))
    a = vgcore.gradient_flow(MLP.from_sizes([24] * 9, "sigmoid"), x, keep_grads=True)
    b = vgcore.gradient_flow(MLP.from_sizes([24] * 9, "relu", init="kaiming_normal"), x)
    return a, b


def test_flow_plot_overlays_models_in_log10():
    a, b = _flows()
    ax = a.plot()
    (line,) = ax.get_lines()
    assert np.allclose(line.get_ydata(), a.log10_grad_norms)
    assert np.array_equal(line.get_xdata(), np.arange(9))
    ax = plotting.plot_gradient_flow([a, b], ["sigmoid", "relu"], relative=True)
    lines = ax.get_lines()
    assert [ln.get_label() for ln in lines[:2]] == ["sigmoid", "relu"]
    assert lines[0].get_ydata()[-1] == pytest.approx(0.0)  # relative to the output
    assert len(lines) == 3  # the 1e-6 threshold line
    assert lines[2].get_ydata()[0] == pytest.approx(-6.0)
    assert "layer" in ax.get_xlabel() and "log10" in ax.get_ylabel()


def test_flow_plot_errors():
    a, _ = _flows()
    with pytest.raises(ValueError, match="labels must have 2"):
        plotting.plot_gradient_flow([a, a], ["one"])
    with pytest.raises(ValueError, match="at least one"):
        plotting.plot_gradient_flow([])


def test_lstm_cell_curve_and_given_axes():
    m = LSTM.from_sizes(4, 8, seed=0)
    f = vgcore.gradient_flow(m, np.random.default_rng(0).standard_normal((10, 2, 4)))
    _, ax = plt.subplots()
    out = f.plot(ax=ax, cell=True)
    assert out is ax
    assert len(ax.get_lines()) == 2 and ax.get_lines()[1].get_linestyle() == "--"


def test_gradient_histograms_need_kept_grads(tmp_path):
    a, b = _flows()
    ax = plotting.plot_grad_histograms(a)
    assert len(ax.patches) == 6  # 6 layers, evenly spaced, ends included
    assert ax.get_legend().get_texts()[0].get_text() == "layer 0"
    ax.figure.savefig(tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="keep_grads=True"):
        plotting.plot_grad_histograms(b)
    with pytest.raises(ValueError, match="outside"):
        plotting.plot_grad_histograms(a, layers=[99])


def test_diagnosis_plot_shows_each_checked_fix():
    d = vgcore.diagnose(MLP.from_sizes([32] * 21, "sigmoid"))
    ax = d.plot()
    labels = [ln.get_label() for ln in ax.get_lines()]
    fixed = [r for r in d.recommendations if r.flow_after is not None]
    assert labels[0] == "as given (vanishing)"
    assert len(labels) == 1 + len(fixed) + 1
    assert ax.get_title() == d.name


def test_saturation_plot():
    a, b = _flows()
    ax = plotting.plot_saturation([a, b], ["a", "b"])
    assert np.allclose(ax.get_lines()[1].get_ydata(), b.saturation)


def test_spectral_radius_plot_duck_typed():
    res = SimpleNamespace(spectral_radius=np.linspace(0.5, 2.0, 30), spectral_norm=np.full(30, 2.5))
    ax = plotting.plot_spectral_radius(res)
    assert ax.get_yscale() == "log" and len(ax.get_lines()) == 3
    batch = SimpleNamespace(
        spectral_radius=np.abs(np.random.default_rng(0).normal(1, 0.1, (8, 20)))
    )
    ax = plotting.plot_spectral_radius(batch)
    assert len(ax.collections) == 1  # the 10-90% band


def test_lyapunov_plot_spectrum_and_convergence():
    hist = (
        np.cumsum(np.random.default_rng(0).normal(size=(50, 3)), axis=0) / np.arange(1, 51)[:, None]
    )
    res = SimpleNamespace(exponents=np.array([0.1, -0.2, -0.5]), history=hist)
    axes = plotting.plot_lyapunov(res)
    assert len(axes) == 2
    assert np.allclose(axes[0].get_lines()[0].get_ydata(), res.exponents)
    assert len(axes[1].get_lines()) == 4  # 3 running estimates + zero line
    single = plotting.plot_lyapunov(SimpleNamespace(exponents=np.array([0.3])))
    assert len(np.atleast_1d(single)) == 1
    with pytest.raises(AttributeError, match="exponents"):
        plotting.plot_lyapunov(SimpleNamespace(foo=1))


def test_singular_value_density():
    sv = np.exp(np.random.default_rng(0).normal(size=500))
    ax = plotting.plot_singular_values(SimpleNamespace(singular_values=sv))
    assert len(ax.patches) > 10
    plotting.plot_singular_values(sv)  # a plain array works too
    with pytest.raises(ValueError, match="no positive"):
        plotting.plot_singular_values(np.zeros(3))


def test_phase_diagram_marks_critical_line_and_point():
    sw = np.linspace(0.5, 4, 12)
    sb = np.linspace(0, 0.5, 6)
    chi = sw[None, :] / (1 + sb[:, None])  # a toy chi_1 (nb, nw)
    res = SimpleNamespace(
        sigma_w2=sw, sigma_b2=sb, chi1=chi, critical_sigma_w2=1 + sb, activation="toy"
    )
    ax = plotting.plot_phase_diagram(res, point=(2.0, 0.1))
    lines = ax.get_lines()
    assert np.allclose(lines[0].get_xdata(), 1 + sb)  # critical line
    assert lines[1].get_xdata()[0] == 2.0 and lines[1].get_label() == "your model"
    assert "toy" in ax.get_title()
    pts = plotting.plot_phase_diagram(res, point=[(1.0, 0.0), (3.0, 0.2)], labels=["a", "b"])
    assert [ln.get_label() for ln in pts.get_lines()[1:]] == ["a", "b"]


def test_theory_comparison_plot():
    res = SimpleNamespace(
        layers=np.arange(1, 11),
        measured_log_gain=np.linspace(-0.2, -0.1, 10),
        theory_log_gain=-0.15,
        burn_in=3,
        activation="tanh",
    )
    ax = plotting.plot(res)
    assert np.allclose(ax.get_lines()[0].get_ydata(), res.measured_log_gain)
    assert ax.get_lines()[1].get_ydata()[0] == pytest.approx(-0.15)
    assert "tanh" in ax.get_title()


def test_sweep_plot():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(
        {
            "depth": [1, 1, 2, 2],
            "act": ["a", "b", "a", "b"],
            "spread": [1.0, 2, 3, 4],
            "status": "ok",
        }
    )
    ax = plotting.plot_sweep(df, "depth", "spread", hue="act")
    assert len(ax.get_lines()) == 2


def test_dispatch():
    a, _ = _flows()
    assert plotting.plot(a).get_lines()
    assert len(plotting.plot(SimpleNamespace(exponents=np.array([0.1, -0.1])))) == 1
    with pytest.raises(TypeError, match="don't know how to plot"):
        plotting.plot(object())
