"""Figures as a reader sees them: every mark inside the axes, scales set by what matters,
legends complete, titles naming the model, log axes naming their base, whole file names.

Checked programmatically on the drawn matplotlib objects (``tools/render_report.py`` renders a
whole report for a person to look at).
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest

import vgcore
from vgcore import MLP, RNN, plotting

mpl = pytest.importorskip("matplotlib")
mpl.use("Agg")
plt = pytest.importorskip("matplotlib.pyplot")
from vgcore.report import write_report  # noqa: E402
from vgcore.report._figures import make_figures, slug  # noqa: E402
from vgcore.theory.phases import phase_diagram, phase_diagram_around  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def tanh_diagram():
    return phase_diagram_around("tanh", [(2.78, 0.0)], correlation=False)


def _inside(ax, artist) -> bool:
    """Whether the artist's drawn extent lies inside the axes (display coordinates)."""
    ax.figure.canvas.draw()
    box = artist.get_window_extent(ax.figure.canvas.get_renderer())
    frame = ax.get_window_extent()
    return bool(
        box.x0 >= frame.x0 - 0.5
        and box.x1 <= frame.x1 + 0.5
        and box.y0 >= frame.y0 - 0.5
        and box.y1 <= frame.y1 + 0.5
    )


# ------------------------------------------------------------------------------------------
# phase diagram
def test_phase_diagram_colours_both_sides_fully(tanh_diagram):
    ax = plotting.plot_phase_diagram(tanh_diagram, point=(2.78, 0.0))
    (mesh,) = ax.collections
    lchi = np.log10(tanh_diagram.chi_1)
    # the chaotic side of tanh only reaches log10 chi_1 ~ 0.1: it must still reach full red
    assert 0.0 < lchi.max() < 0.3 and lchi.min() < -0.5
    assert mesh.norm(lchi.max()) == pytest.approx(1.0)
    assert mesh.norm(max(lchi.min(), -1.0)) == pytest.approx(0.0)
    assert mesh.norm(0.0) == pytest.approx(0.5)  # white at chi_1 = 1
    # the colour bar has ticks on both sides of 0
    cbar = mesh.colorbar
    ticks = np.asarray(cbar.get_ticks())
    assert (ticks > 0).any() and (ticks < 0).any()
    assert "log10" in cbar.ax.get_ylabel()


def test_phase_diagram_point_on_the_edge_is_inside_the_axes(tanh_diagram):
    ax = plotting.plot_phase_diagram(tanh_diagram, point=[(2.78, 0.0), (0.01, 0.0)])
    stars = [ln for ln in ax.get_lines() if ln.get_marker() not in ("None", None, "")]
    assert len(stars) == 2
    for star in stars:
        assert _inside(ax, star), star.get_label()
    # sigma_b^2 = 0 is strictly inside the y-range, not on its edge
    assert ax.get_ylim()[0] < 0.0


def test_phase_diagram_labels_are_readable(tanh_diagram):
    ax = plotting.plot_phase_diagram(tanh_diagram)
    labels = [t for t in ax.texts if t.get_text().startswith(("ordered", "chaotic"))]
    assert len(labels) == 2
    for t in labels:
        box = t.get_bbox_patch()
        assert box is not None  # a light box behind the text, whatever colour is under it
        assert np.mean(box.get_facecolor()[:3]) > 0.9
        assert _inside(ax, t)


def test_phase_diagram_critical_line_is_smooth(tanh_diagram):
    """The line leaves (1, 0) like a square root; it is solved on rows dense near 0, so no
    corner appears where it was drawn through a coarse grid (19 degrees before)."""
    ax = plotting.plot_phase_diagram(tanh_diagram)
    (line,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("critical line")]
    x, y = (np.asarray(v, float) for v in line.get_data())
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    pts = np.c_[(x - x0) / (x1 - x0), (y - y0) / (y1 - y0)]
    d = np.diff(pts, axis=0)
    turn = np.abs(np.diff(np.degrees(np.arctan2(d[:, 1], d[:, 0]))))
    assert turn.max() < 6.0
    assert x[0] == 1.0 and y[0] == 0.0  # tanh's bifurcation point, exactly


def test_phase_diagram_rows_are_dense_near_zero(tanh_diagram):
    sb = tanh_diagram.sigma_b2
    assert sb[0] == 0.0 and sb[-1] == pytest.approx(0.5)
    assert np.all(np.diff(sb) > 0) and np.diff(sb)[0] < np.diff(sb)[-1] / 50


def test_phase_grid_for_figures_skips_only_the_correlation_map():
    sw = np.array([0.5, 1.0, 1.5, 2.5, 4.0])
    sb = np.array([0.0, 0.05, 0.3])
    full = phase_diagram("tanh", sw, sb)
    fast = phase_diagram("tanh", sw, sb, correlation=False)
    assert fast.correlation is False and full.correlation is True
    for name in ("q_star", "chi_1", "chi_q", "xi_q", "critical_line"):
        assert np.array_equal(getattr(fast, name), getattr(full, name), equal_nan=True), name
    assert np.array_equal(fast.phase, full.phase)
    chaotic = full.phase == "chaotic"
    assert chaotic.any() and (~chaotic).any()
    for name in ("c_star", "chi_c", "xi_c"):
        a, b = getattr(fast, name), getattr(full, name)
        assert np.isnan(a[chaotic]).all(), name
        assert np.array_equal(a[~chaotic], b[~chaotic]), name


def test_phase_grid_starts_left_of_small_points():
    d = phase_diagram_around("sigmoid", [(0.3, 0.0)], correlation=False)
    assert d.sigma_w2[0] <= 0.15


# ------------------------------------------------------------------------------------------
# gradient histograms
def test_histogram_y_axis_is_set_by_the_hidden_layers():
    m = MLP.from_sizes([32] * 11, "tanh", init="xavier_normal", seed=0)
    x = np.random.default_rng(0).standard_normal((64, 32))
    flow = vgcore.gradient_flow(m, x, keep_grads=True)
    ax = plotting.plot_grad_histograms(flow)
    curves = {p.get_label(): p for p in ax.patches}
    out = [p for lab, p in curves.items() if lab.startswith("layer 10")]
    hidden = [p for lab, p in curves.items() if not lab.startswith("layer 10")]
    assert len(out) == 1 and len(hidden) >= 3
    peak_out = float(np.max(out[0].get_data().values))
    peak_hidden = max(float(np.max(p.get_data().values)) for p in hidden)
    top = ax.get_ylim()[1]
    assert peak_out > 2 * peak_hidden  # the output's spike (the precondition)
    assert peak_hidden <= top < 1.3 * peak_hidden
    assert "off the axis" in out[0].get_label()  # says that its peak is cut
    assert "log10" in ax.get_xlabel()


def test_histogram_keeps_its_range_without_a_spike():
    m = MLP.from_sizes([16] * 5, "tanh", seed=0)
    flow = vgcore.gradient_flow(
        m, np.random.default_rng(1).standard_normal((32, 16)), keep_grads=True
    )
    ax = plotting.plot_grad_histograms(flow, layers=[0, 1, 2])
    peak = max(float(np.max(p.get_data().values)) for p in ax.patches)
    assert ax.get_ylim()[1] >= peak and not any("off the axis" in p.get_label() for p in ax.patches)


# ------------------------------------------------------------------------------------------
# Lyapunov exponents
def test_lyapunov_legend_lists_every_exponent():
    rnn = RNN.from_sizes(4, 16, init={"name": "gaussian", "sigma_w2": 4.0}, seed=0)
    x = np.random.default_rng(0).standard_normal((40, 3, 4))
    ly = vgcore.lyapunov(rnn, x, k=8)
    spec, conv = plotting.plot(ly)  # what `vgcore lyapunov --plot` draws
    assert [t.get_text() for t in conv.get_legend().get_texts()] == [
        f"lambda_{j}" for j in range(1, 9)
    ]
    assert list(spec.get_xticks()) == list(range(1, 9))


def test_lyapunov_with_one_exponent_shows_the_batch():
    """k = 1 (what diagnose computes): one point per sample, not one dot on an index axis."""
    rnn = RNN.from_sizes(4, 16, seed=0)
    x = np.random.default_rng(0).standard_normal((40, 6, 4))
    ly = vgcore.lyapunov(rnn, x, k=1)
    spec, _ = ly.plot()
    pts = spec.get_lines()[0]
    assert np.array_equal(pts.get_xdata(), np.arange(1, 7))
    assert np.allclose(pts.get_ydata(), ly.exponents[:, 0])
    assert "sample" in spec.get_xlabel()
    lo, hi = spec.get_xlim()
    assert lo < 1 and hi > 6  # the x-axis spans the samples, not 0.96..1.04


# ------------------------------------------------------------------------------------------
# titles and axis labels
def _model_results():
    mlp = MLP.from_sizes([12] * 4, "tanh", seed=0)
    x = np.random.default_rng(0).standard_normal((5, 12))
    rnn = RNN.from_sizes(3, 10, seed=0)
    xs = np.random.default_rng(0).standard_normal((20, 4, 3))
    return [
        vgcore.jacobian_spectrum(mlp, x),
        vgcore.jacobian_singular_values(mlp, x),
        vgcore.jacobian_spectrum(rnn, xs),
        vgcore.jacobian_singular_values(rnn, xs),
        vgcore.lyapunov(rnn, xs, k=3),
    ]


def test_spectrum_and_singular_value_titles_name_the_model():
    for res in _model_results():
        ret = plotting.plot(res)
        ax = np.ravel(np.asarray(ret, dtype=object))[0]
        title = ax.get_title()
        if res.model.kind == "mlp":
            assert "MLP tanh, 3 layers of width 12" in title, title
        else:
            assert "RNN tanh, hidden size 10" in title, title
    custom = plotting.plot(_model_results()[0], title="my net")
    assert custom.get_title() == "my net"


def test_every_log_axis_names_its_base(tanh_diagram):
    m = MLP.from_sizes([12] * 4, "tanh", seed=0)
    x = np.random.default_rng(0).standard_normal((8, 12))
    flow = vgcore.gradient_flow(m, x, keep_grads=True)
    axes = []
    for res in _model_results():
        axes += list(np.ravel(np.asarray(plotting.plot(res), dtype=object)))
    axes += [
        plotting.plot_gradient_flow(flow),
        plotting.plot_grad_histograms(flow),
        plotting.plot_phase_diagram(tanh_diagram),
        plotting.plot(vgcore.theory.compare_to_theory(flow, 1.0, 0.0, burn_in=1)),
    ]
    axes += [a for ax in axes for a in ax.figure.axes]  # colour bars
    seen = 0
    for ax in axes:
        for label in (ax.get_xlabel(), ax.get_ylabel()):
            if re.search(r"\blog|\bln\b|lambda|exponent", label):
                seen += 1
                assert re.search(r"\blog10\b|\bln\b", label), label
        if ax.get_yscale() == "log":
            assert "log10" in ax.get_ylabel(), ax.get_ylabel()
    assert seen >= 8


# ------------------------------------------------------------------------------------------
# report figures
def test_figure_file_names_are_whole_and_unique(tmp_path):
    d = vgcore.diagnose(MLP.from_sizes([8] * 4, "tanh", seed=0), name="overview mlp")
    long = "Measured gradient gain per layer vs mean-field theory (MLP tanh L=50, Xavier)"
    extras = {long: SimpleNamespace(plot=lambda **kw: plotting._axes())}
    extras[long + " "] = extras[long]  # the same slug twice
    figs = make_figures([d], extras, tmp_path)
    stems = [f.path.removeprefix("figures/").removesuffix(".png") for f in figs]
    assert len(set(stems)) == len(stems)
    assert slug(long) in stems and f"{slug(long)}-2" in stems
    assert slug(long).endswith("mlp-tanh-l-50-xavier")  # not cut at 60 characters
    assert "overview-mlp" in stems and "overview-mlp-2" in stems  # the model's own
    very_long = "word " * 60
    s = slug(very_long)
    assert len(s) <= 120 and s != slug(very_long + "x") and s.startswith("word-word")


def test_healthy_model_caption_has_no_fixes(tmp_path):
    d = vgcore.diagnose(MLP.from_sizes([16] * 4, "tanh", init="xavier_normal", seed=0))
    assert d.verdict == "healthy" and not d.fixes
    rep = write_report([d], tmp_path / "r")
    md = rep.markdown.read_text()
    assert "checked fix" not in md


def test_demo_lyapunov_spectrum_replaces_the_top_exponent_figure(tmp_path):
    from vgcore import _summaries

    rnn = RNN.from_sizes(4, 16, init={"name": "gaussian", "sigma_w2": 4.0}, seed=0)
    x = np.random.default_rng(0).standard_normal((30, 12, 4))
    d = vgcore.diagnose(rnn, x, name="chaotic rnn")
    assert d.lyapunov is not None and d.lyapunov.exponents.shape[1] == 1
    extras = _summaries.demo_lyapunov([d], {d.name: x})
    ((caption, item),) = extras.items()
    assert item.section == d.name and item.replaces == "lyapunov"
    assert item.result.exponents.shape == (_summaries.DEMO_LYAPUNOV_BATCH, 8)
    rep = write_report([d], tmp_path / "r", extras=extras)
    names = sorted(p.name for p in rep.figures)
    assert names.count("chaotic-rnn-lyapunov.png") == 1 and len(names) == 3
    md = rep.markdown.read_text()
    assert caption in md and "Further analyses" not in md
    # in the model's section, before the data
    assert md.index("### chaotic rnn") < md.index(caption) < md.index("## Data")
