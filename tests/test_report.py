"""vgcore.report: a folder with figures, report.md, a self-contained report.html and data."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest

import vgcore
from vgcore import MLP, RNN
from vgcore.report import write_report


@pytest.fixture(scope="module")
def diagnoses():
    mlp = vgcore.diagnose(
        MLP.from_sizes([32] * 21, "sigmoid"), name="sigmoid | deep", keep_grads=True
    )
    rnn = vgcore.diagnose(RNN.from_sizes(8, 32, seed=0), steps=60, batch=4, name="rnn")
    return [mlp, rnn]


def _close():
    plt = pytest.importorskip("matplotlib.pyplot")
    plt.close("all")


def test_report_folder(tmp_path, diagnoses):
    pytest.importorskip("matplotlib")
    rep = write_report(diagnoses, tmp_path / "rep", title="T")
    out = tmp_path / "rep"
    assert rep.out == out and rep.markdown == out / "report.md" and rep.html == out / "report.html"
    # figures: two overviews, one per model, histograms for the model with kept gradients,
    # and the Lyapunov figure of each model that diagnose ran vgcore.lyapunov on
    names = sorted(p.name for p in rep.figures)
    assert "overview-mlp.png" in names and "overview-recurrent.png" in names
    assert any("histograms" in n for n in names) and len(names) == 7
    assert {"sigmoid-deep-lyapunov.png", "rnn-lyapunov.png"} <= set(names)
    for p in rep.figures:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000
    md = rep.markdown.read_text()
    assert md.startswith("# T\n")
    for p in rep.figures:
        assert f"](figures/{p.name})" in md
    assert "sigmoid \\| deep" in md and "| vanishing |" in md  # table cells escaped
    page = rep.html.read_text()
    assert page.count("data:image/png;base64,") == len(rep.figures)
    assert not re.search(r'src="(?!data:)', page)  # self-contained: no external images
    assert "<table>" in page and 'class="vanishing"' in page
    _close()


def test_report_lyapunov_figure_only_where_the_analysis_ran(tmp_path, diagnoses):
    pytest.importorskip("matplotlib")
    narrowing = vgcore.diagnose(MLP.from_sizes([16, 8, 8], "tanh"), name="narrowing")
    assert narrowing.lyapunov is None  # widths change: the gradient growth rate is used
    rep = write_report([diagnoses[1], narrowing], tmp_path)
    names = {p.name for p in rep.figures}
    assert "rnn-lyapunov.png" in names and not any(
        n.startswith("narrowing-") for n in names - {"narrowing.png"}
    )
    md = rep.markdown.read_text()
    assert "rnn: top Lyapunov exponent per step over the batch" in md
    lam, sd = diagnoses[1].evidence["lyapunov"], diagnoses[1].evidence["lyapunov_std"]
    assert f"top Lyapunov exponent: {lam:+.4f} ± {sd:.4f} over the batch per step" in md
    assert "backward gradient growth rate" in md  # the narrowing MLP's source
    _close()


def test_report_data_tables(tmp_path, diagnoses):
    rep = write_report(diagnoses, tmp_path, figures=False)
    assert rep.figures == [] and not (tmp_path / "figures").exists()
    files = {p.name: p for p in rep.data}
    assert set(files) == {"summary.csv", "gradient_norms.csv", "fixes.csv"}
    with files["summary.csv"].open() as fh:
        summary = list(csv.DictReader(fh))
    assert [r["model"] for r in summary] == ["sigmoid | deep", "rnn"]
    assert summary[0]["verdict"] == "vanishing"
    ev = diagnoses[1].evidence
    assert float(summary[1]["lyapunov_ln"]) == pytest.approx(ev["lyapunov"])
    assert float(summary[1]["lyapunov_ln_std"]) == pytest.approx(ev["lyapunov_std"])
    assert float(summary[0]["log10_gain"]) == pytest.approx(diagnoses[0].evidence["log10_gain"])
    with files["gradient_norms.csv"].open() as fh:
        norms = list(csv.DictReader(fh))
    assert len(norms) == 21 + 61
    first = [r for r in norms if r["model"] == "rnn"]
    lg = diagnoses[1].flow.log10_grad_norms
    assert np.allclose([float(r["log10_grad_norm"]) for r in first], lg)
    with files["fixes.csv"].open() as fh:
        recs = list(csv.DictReader(fh))
    assert len(recs) == sum(len(d.fixes) for d in diagnoses)
    assert recs[0]["rank"] == "1" and recs[0]["checked"] == "True"


def test_report_parquet(tmp_path, diagnoses):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    rep = write_report(diagnoses[:1], tmp_path, figures=False, data_format="parquet")
    df = pd.read_parquet(tmp_path / "data" / "gradient_norms.parquet")
    assert len(df) == 21 and df["index"].tolist() == list(range(21))
    assert {p.suffix for p in rep.data} == {".parquet"}


def test_report_extras_and_single_diagnosis(tmp_path, diagnoses):
    pytest.importorskip("matplotlib")
    from types import SimpleNamespace

    rnn, x = diagnoses[1].model, np.random.default_rng(0).standard_normal((20, 2, 8))
    extra = {
        "Lyapunov spectrum (toy)": SimpleNamespace(exponents=np.array([0.2, -0.1])),
        "Jacobian spectrum (rnn)": vgcore.jacobian_spectrum(rnn, x),
        "Singular values (rnn)": vgcore.jacobian_singular_values(rnn, x),
    }
    rep = write_report(diagnoses[0], tmp_path, extras=extra)
    for name in ("lyapunov-spectrum-toy", "jacobian-spectrum-rnn", "singular-values-rnn"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 2000
    assert "Further analyses" in rep.markdown.read_text()
    _close()


def test_report_without_matplotlib(tmp_path, diagnoses, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    rep = write_report(diagnoses, tmp_path)
    assert rep.figures == [] and "pip install 'vgcore[plot]'" in rep.notes[0]
    assert "vgcore[plot]" in rep.markdown.read_text() and rep.html.exists()


def test_report_errors(tmp_path, diagnoses):
    with pytest.raises(ValueError, match="at least one"):
        write_report([], tmp_path)
    with pytest.raises(ValueError, match="data_format"):
        write_report(diagnoses, tmp_path, data_format="xlsx")


def test_report_states_the_verdict_rule_and_unit_kinds(tmp_path):
    """The report says what the diagnosis says: the verdict thresholds it applied (with the
    rate rule) and inactive / dead units apart from saturated ones."""
    x = np.random.default_rng(0).normal(size=(32, 24))
    relu = MLP.from_sizes([24] * 9, "relu", seed=0)
    d = vgcore.diagnose(relu, x, name="relu", check=False)
    rep = write_report([d], tmp_path / "r", figures=False)
    text = rep.markdown.read_text()
    assert d.evidence["thresholds"] in text
    assert "at an average of 0.1 decades per layer or step" in text  # the rule, in the intro
    assert "inactive units" in text and "dead units" in text
    assert "| inactive |" in text.replace("  ", " ")


def test_report_evidence_is_the_summary_evidence(tmp_path):
    """One builder writes both: every evidence line of the report is a line of the summary
    (the report writes the mean's spread as ±), and the other way round."""
    rng = np.random.default_rng(0)
    gauss = {"name": "gaussian", "sigma_w2": 3.0}
    ds = [
        vgcore.diagnose(MLP.from_sizes([32] * 11, "tanh", init=gauss), name="mlp", check=False),
        vgcore.diagnose(
            RNN.from_sizes(4, 16, init=gauss, seed=1), rng.normal(size=(40, 3, 4)), name="rnn"
        ),
        vgcore.diagnose(vgcore.LSTM.from_sizes(4, 8), steps=30, batch=3, name="lstm"),
    ]
    md = write_report(ds, tmp_path / "r", figures=False).markdown.read_text()
    for d in ds:
        section = md.split(f"### {d.name}:")[1].split("\n### ")[0].split("\n## ")[0]
        items = [ln[2:] for ln in section.splitlines() if ln.startswith("- ")]
        items = [s.replace("±", "+/-") for s in items if not s.startswith("note: ")]
        summary = d.summary().splitlines()
        said = [ln[2:] for ln in summary if ln.startswith("  ") and not ln[2].isdigit()]
        assert items and set(items) <= set(said), set(items) - set(said)
        first_fact = summary.index("  " + items[0])
        facts = summary[first_fact : first_fact + len(items) - 1]
        assert [ln[2:] for ln in facts] == items[:-1]  # the same lines in the same order
        assert items[-1].startswith("verdict thresholds: ")  # last in both
    assert "gate saturation: i " in md and "weight scale: sigma_w2 = " in md
