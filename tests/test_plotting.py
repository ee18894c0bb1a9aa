"""vgcore.plotting: every figure draws what it says (Agg backend, no display)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import vgcore
from vgcore import LSTM, MLP, RNN, plotting

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
    fixed = [r for r in d.recommended if r.flow_after is not None]
    assert labels[0] == "as given (vanishing)"
    assert len(labels) == 1 + len(fixed) + 1
    assert ax.get_title() == d.name


def test_saturation_plot():
    a, b = _flows()
    ax = plotting.plot_saturation([a, b], ["a", "b"])
    assert np.allclose(ax.get_lines()[1].get_ydata(), b.saturation)


# ------------------------------------------------------------------------------------------
# Jacobian analyses: the real result objects
def _rnn_seq(T=40, B=6, n_in=4, seed=0):
    return np.random.default_rng(seed).standard_normal((T, B, n_in))


def test_spectral_radius_plot_of_a_jacobian_spectrum():
    rnn = RNN.from_sizes(4, 8, seed=0)
    sp = vgcore.jacobian_spectrum(rnn, _rnn_seq())
    assert sp.spectral_radius.shape == (40, 6)
    ax = sp.plot()
    rho, sig, one = ax.get_lines()
    # the batch median per step, drawn at the steps
    assert np.array_equal(rho.get_xdata(), sp.steps)
    assert np.allclose(rho.get_ydata(), np.median(sp.spectral_radius, axis=1))
    assert np.allclose(sig.get_ydata(), np.median(sp.sigma_max, axis=1))
    assert sig.get_linestyle() == "--"
    assert one.get_ydata()[0] == 1.0  # the reference line at 1
    assert ax.get_yscale() == "log" and "time step" in ax.get_xlabel()
    # min-max bands over the batch, one per curve
    assert len(ax.collections) == 2
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].max() == pytest.approx(sp.spectral_radius.max())
    assert band[:, 1].min() == pytest.approx(sp.spectral_radius.min())
    # quantile bands, no sigma_max, given axes
    _, ax2 = plt.subplots()
    out = plotting.plot_spectral_radius(sp, ax=ax2, band=(0.25, 0.75), sigma_max=False)
    assert out is ax2 and len(ax2.get_lines()) == 2 and len(ax2.collections) == 1
    v = ax2.collections[0].get_paths()[0].vertices[:, 1]
    assert v.max() <= sp.spectral_radius.max() and "25-75%" in ax2.get_legend_handles_labels()[1][1]
    with pytest.raises(ValueError, match="band"):
        plotting.plot_spectral_radius(sp, band=(0.9, 0.1))


def test_spectral_radius_plot_of_an_mlp_skips_nonsquare_layers():
    m = MLP.from_sizes([16, 24, 24, 8], "tanh", seed=0)
    sp = vgcore.jacobian_spectrum(m, np.random.default_rng(0).standard_normal((5, 16)))
    ax = plotting.plot(sp)
    rho, sig, _ = ax.get_lines()
    assert np.array_equal(rho.get_xdata(), [1, 2, 3])  # layers l = steps + 1
    y = np.asarray(rho.get_ydata(), float)
    assert np.isnan(y[[0, 2]]).all() and y[1] == pytest.approx(np.median(sp.spectral_radius[1]))
    assert np.allclose(sig.get_ydata(), np.median(sp.sigma_max, axis=1))
    assert "layer" in ax.get_xlabel()


def test_lyapunov_plot_spectrum_and_convergence():
    rnn = RNN.from_sizes(4, 8, init={"name": "gaussian", "sigma_w2": 4.0}, seed=0)
    ly = vgcore.lyapunov(rnn, _rnn_seq(T=60), k=5)
    axes = ly.plot()
    assert len(axes) == 2
    spec, conv = axes
    mean, zero = spec.get_lines()
    assert np.array_equal(mean.get_xdata(), np.arange(1, 6))
    assert np.allclose(mean.get_ydata(), ly.exponents.mean(axis=0))
    assert np.allclose(mean.get_ydata(), ly.mean_exponents)
    assert zero.get_ydata()[0] == 0.0
    (dots,) = spec.collections  # every sample's exponents
    assert np.allclose(np.sort(dots.get_offsets()[:, 1]), np.sort(ly.exponents.ravel()))
    lines = conv.get_lines()
    assert len(lines) == 5 + 1  # every running estimate and the zero line
    assert np.array_equal(lines[0].get_xdata(), ly.record_steps)
    assert np.allclose(lines[0].get_ydata(), ly.running[:, :, 0].mean(axis=1))
    assert [ln.get_label() for ln in lines[:5]] == [f"lambda_{j}" for j in range(1, 6)]
    legend = [t.get_text() for t in conv.get_legend().get_texts()]
    assert legend == [f"lambda_{j}" for j in range(1, 6)]  # all of them in the legend
    assert len(conv.collections) == 5  # min-max band over the batch per estimate
    # one Axes: the spectrum only; top=
    _, ax = plt.subplots()
    assert plotting.plot_lyapunov(ly, ax=ax) is ax and len(ax.get_lines()) == 2
    _, pair = plt.subplots(1, 2)
    out = plotting.plot_lyapunov(ly, ax=pair, top=2)
    assert len(out[1].get_lines()) == 3
    # duck-typed objects: a 1-D spectrum and no running estimates
    single = plotting.plot_lyapunov(SimpleNamespace(exponents=np.array([0.3, -0.1])))
    assert len(single) == 1 and np.allclose(single[0].get_lines()[0].get_ydata(), [0.3, -0.1])
    with pytest.raises(AttributeError, match="exponents"):
        plotting.plot_lyapunov(SimpleNamespace(foo=1))


def test_lyapunov_plot_of_a_dead_layer_has_no_nan_warnings():
    m = MLP.from_sizes([8] * 6, "relu", init="kaiming_normal", seed=0)
    m.biases[2][:] = -50.0  # every unit of layer 3 off: the exponents are -inf
    ly = vgcore.lyapunov(m, np.random.default_rng(0).standard_normal((4, 8)), k=2)
    assert np.isneginf(ly.exponents).all()
    spec, _ = ly.plot()  # filterwarnings=error: no RuntimeWarning from the -inf values
    assert np.isneginf(spec.get_lines()[0].get_ydata()).all()


def test_singular_value_density_of_a_result():
    deep = MLP.from_sizes([16] * 31, "tanh", seed=0)
    sv = vgcore.jacobian_singular_values(deep, np.random.default_rng(0).standard_normal((3, 16)))
    ax = sv.plot(bins=25)
    assert len(ax.patches) == 25
    heights = np.array([b.get_height() for b in ax.patches])
    widths = np.array([b.get_width() for b in ax.patches])
    assert np.sum(heights * widths) == pytest.approx(1.0)  # a density
    lefts = np.array([b.get_x() for b in ax.patches])
    assert lefts[0] == pytest.approx(sv.log10_singular_values.min())
    assert lefts[-1] + widths[-1] == pytest.approx(sv.log10_singular_values.max())
    assert ax.get_lines()[0].get_xdata()[0] == 0.0  # sigma = 1
    (text,) = ax.texts
    iso = sv.isometry()
    assert f"10^{iso['log_mean_squared'] / np.log(10):+.2f}" in text.get_text()
    assert f"{iso['std_log_singular'] / np.log(10):.3g}" in text.get_text()
    assert "measured (16 values x 3 samples)" in ax.get_legend_handles_labels()[1]
    assert len(plotting.plot(sv, annotate=False).texts) == 0


def test_singular_value_density_far_outside_float_range():
    # 10^-400 cannot be a float; the logs are drawn directly
    res = SimpleNamespace(log_singular_values=np.log(10.0) * np.array([[-400.0, -410.0, -420.0]]))
    ax = plotting.plot_singular_values(res, bins=3)
    assert [round(b.get_x()) for b in ax.patches] == [-420, -413, -407]


def test_singular_value_density_duck_typed_and_arrays():
    sv = np.exp(np.random.default_rng(0).normal(size=500))
    ax = plotting.plot_singular_values(SimpleNamespace(singular_values=sv))
    assert len(ax.patches) == 60 and len(ax.texts) == 0
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


def test_mean_field_result_plots_its_phase_diagram():
    ax = vgcore.mean_field("tanh", 1.5, 0.0).plot()
    crit, star = ax.get_lines()[:2]
    # the critical line meets sigma_b2 = 0 at sigma_w2 = 1 (tanh); the point is the model's
    assert crit.get_xdata()[0] == pytest.approx(1.0, abs=1e-3) and crit.get_ydata()[0] == 0
    assert (star.get_xdata()[0], star.get_ydata()[0]) == (1.5, 0.0)
    many = vgcore.mean_field("leaky_relu", np.linspace(1, 9, 500), 0.2, negative_slope=0.1)
    ax = plotting.plot(many, max_points=20)
    marks = ax.get_lines()[1:]  # one marker per point
    assert len(marks) == 20 and max(m.get_xdata()[0] for m in marks) == 9.0
    assert ax.get_xlim()[1] >= 9
    assert "leaky_relu" in ax.get_title()


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


def test_theory_comparison_result_plots_itself():
    from vgcore.theory import compare_to_theory

    m = MLP.from_sizes([32] * 11, "tanh", init={"name": "gaussian", "sigma_w2": 1.5}, seed=0)
    flow = vgcore.gradient_flow(m, np.random.default_rng(0).standard_normal((8, 32)))
    cmp = compare_to_theory(flow, 1.5, 0.0, burn_in=2)
    _, ax = plt.subplots()
    assert cmp.plot(ax=ax) is ax
    assert np.allclose(ax.get_lines()[0].get_ydata(), cmp.measured_log_gain)
    assert ax.get_lines()[1].get_ydata()[0] == pytest.approx(cmp.theory_log_gain)
    assert np.allclose(plotting.plot(cmp).get_lines()[0].get_ydata(), cmp.measured_log_gain)


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
    # the Jacobian results are drawn by their own plot() methods
    rnn = RNN.from_sizes(4, 8, seed=0)
    x = _rnn_seq(T=10, B=2)
    calls = []
    for res in (
        vgcore.lyapunov(rnn, x, k=2),
        vgcore.jacobian_spectrum(rnn, x),
        vgcore.jacobian_singular_values(rnn, x),
    ):
        cls = type(res)
        orig = cls.plot

        def spy(self, *args, _orig=orig, **kw):
            calls.append(type(self).__name__)
            return _orig(self, *args, **kw)

        cls.plot = spy
        try:
            plotting.plot(res)
        finally:
            cls.plot = orig
    assert calls == ["LyapunovSpectrum", "JacobianSpectrum", "JacobianSingularValues"]
    with pytest.raises(TypeError, match="don't know how to plot"):
        plotting.plot(object())
