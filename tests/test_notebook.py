"""Run analysis.ipynb headless on generated results.tsv files and check what it prints and saves."""

import json
import os
import random
import re
import struct
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from common import ROOT
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from audit import HEADER

NOTEBOOK = ROOT / "analysis.ipynb"

# Each case: rows as (commit, val_bpb, memory_gb, status, description).
CASES = {
    "baseline_only": [
        ("a1b2c3d", "0.997900", "44.0", "keep", "baseline"),
    ],
    "with_crashes": [
        ("a1b2c3d", "0.997900", "44.0", "keep", "baseline"),
        ("9a8b7c6", "0.995400", "44.0", "discard", "baseline (seed 43)"),  # the noise check: not a decision
        ("0123456", "0.993200", "44.2", "keep", "raise MATRIX_LR to 0.05"),
        ("c3d4e5f", "1.005000", "44.0", "discard",
         "swap relu^2 for GELU in the MLP, which made things worse"),
        ("d4e5f6a", "0.000000", "0.0", "crash", "double the model width (OOM)"),
        ("e5f6a7b", "0.989100", "47.9", " Keep ", "depth 10 with a smaller device batch"),
        ("f6a7b8c", "0.000000", "0.0", "crash", "typo in the rotary code"),
        ("a7b8c9d", "0.990500", "47.9", "discard", "warmdown ratio 0.6"),
    ],
    "no_keep_after_baseline": [
        ("a1b2c3d", "0.997900", "44.0", "keep", "baseline"),
        ("b2c3d4e", "1.002000", "44.0", "discard", "lower embedding lr"),
        ("c3d4e5f", "0.000000", "0.0", "crash", "fp8 matmuls"),
        ("d4e5f6a", "0.999000", "44.1", "discard", "more heads"),
    ],
    "baseline_crashed": [
        ("a1b2c3d", "0.000000", "0.0", "crash", "baseline"),
    ],
    # A small computer's night: the first baseline run timed out (the setup was then fixed), and the CPU's
    # seed rerun differs by 0.06; then one kept gain of 0.131
    "crash_before_baseline": [
        ("a1b2c3d", "0.000000", "0.0", "crash", "baseline (timeout)"),
        ("b2c3d4e", "1.500000", "1.9", "keep", "baseline"),
        ("c3d4e5f", "1.560000", "1.9", "discard", "baseline (seed 43)"),
        ("d4e5f6a", "1.369000", "1.9", "keep", "DEPTH 3"),
    ],
}


def _baseline_index(rows):
    """The first run with a score: the notebook's baseline, whatever rows come before it."""
    return next((k for k, r in enumerate(rows) if r[3].strip().lower() != "crash" and float(r[1]) > 0), None)


def _write_tsv(path, rows):
    lines = [HEADER] + ["\t".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")


# The figure as drawn: the y limits, the axes' and every label's box in pixels (the text itself, not the box
# padding or the leader line), the title, the x ticks in view, and each scatter's points as heights in axes
# fractions (0 bottom, 1 top) by legend label, from a cell appended after the notebook's own.
FIGURE_PROBE = """
import json
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.text import Text
canvas = FigureCanvasAgg(fig)  # plt.show() closed the notebook's own canvas
canvas.draw()  # places the annotations
renderer = canvas.get_renderer()
to_axes = ax.transAxes.inverted()
scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
heights = {c.get_label(): [float(y) for _, y in to_axes.transform(c.get_offset_transform().transform(
    c.get_offsets()))] for c in scatters}
xlo, xhi = ax.get_xlim()
legend = [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else []
print('FIGURE', json.dumps(dict(ylim=ax.get_ylim(), axes=ax.get_window_extent(renderer).bounds, legend=legend,
                                labels=[Text.get_window_extent(t, renderer).bounds for t in ax.texts],
                                title=fig.get_suptitle(), heights=heights,
                                xticks=[float(t) for t in ax.get_xticks() if xlo <= t <= xhi])))
"""


def _figure(text):
    return json.loads(re.search(r"^FIGURE (.*)$", text, re.MULTILINE).group(1))


def _run_notebook(workdir, tsv, monkeypatch, probe=""):
    """Execute the notebook with cwd = workdir and RESULTS_TSV = tsv; return all printed text."""
    monkeypatch.setenv("RESULTS_TSV", str(tsv))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Probe cell appended at the end: reports which interpreter and directory the kernel used.
    nb.cells.append(nbformat.v4.new_code_cell(
        "import os, sys\nprint('PROBE', sys.executable, os.getcwd(), os.environ.get('RESULTS_TSV'))" + probe))
    client = NotebookClient(nb, kernel_name="python3", timeout=120,
                            resources={"metadata": {"path": str(workdir)}})
    client.execute()  # raises CellExecutionError if any cell fails
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                text.append(out["text"])
    return "".join(text)


def _first_error(workdir, tsv, monkeypatch):
    """Execute the notebook until a cell fails; return (its index among code cells, its error output, the
    number of code cells run)."""
    monkeypatch.setenv("RESULTS_TSV", str(tsv))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=120,
                            resources={"metadata": {"path": str(workdir)}})
    with pytest.raises(CellExecutionError):
        client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    failed = [k for k, c in enumerate(code) if any(o.output_type == "error" for o in c.outputs)]
    ran = sum(c.execution_count is not None for c in code)
    return failed[0], next(o for o in code[failed[0]].outputs if o.output_type == "error"), ran


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "progress.png is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _value(text, label):
    match = re.search(rf"^{re.escape(label)}: *(\S+)", text, re.MULTILINE)
    assert match, f"notebook did not print {label!r}:\n{text}"
    return match.group(1)


def test_notebook_is_clean():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, \
                "commit the notebook with outputs cleared"


@pytest.mark.parametrize("case", sorted(CASES))
def test_notebook_runs(case, tmp_path, monkeypatch):
    rows = CASES[case]
    tsv = tmp_path / "data" / "results.tsv"
    tsv.parent.mkdir()
    _write_tsv(tsv, rows)
    workdir = tmp_path / "work"
    workdir.mkdir()

    text = _run_notebook(workdir, tsv, monkeypatch)

    # The kernel is this virtual environment's Python, running in the directory we asked for.
    probe = re.search(r"^PROBE (\S+) (\S+) (\S+)$", text, re.MULTILINE)
    assert probe, text
    assert Path(probe.group(1)).resolve() == Path(sys.executable).resolve()
    assert Path(probe.group(2)).resolve() == workdir.resolve()
    assert probe.group(3) == str(tsv)

    # The plot is written beside the results file (not into the working directory), as a PNG of sensible size.
    png = tsv.parent / "progress.png"
    assert png.is_file() and not (workdir / "progress.png").exists()
    assert f"saved {png}\n" in text
    width, height = _png_size(png)
    assert 1000 <= width <= 4000 and 500 <= height <= 2500, (width, height)

    # Counts per status (statuses are normalised: " Keep " counts as keep).
    statuses = [r[3].strip().lower() for r in rows]
    base = _baseline_index(rows)
    experiments = [r for k, r in enumerate(rows) if base is not None and k >= base
                   and not (k > base and r[4].endswith(" (seed 43)"))]
    assert int(_value(text, "total experiments")) == len(experiments)
    for status in ("keep", "discard", "crash"):
        assert int(_value(text, status)) == statuses.count(status)

    kept = [float(r[1]) for r, s in zip(rows, statuses) if s == "keep" and float(r[1]) > 0]
    assert int(_value(text, "kept experiments")) == len(kept)

    if base is None:
        assert "baseline" in text and "no improvement to report" in text
        assert "best kept val_bpb" not in text
        return

    baseline = float(rows[base][1])
    best = min(kept)
    assert float(_value(text, "baseline val_bpb")) == pytest.approx(baseline, abs=1e-6)
    assert float(_value(text, "best kept val_bpb")) == pytest.approx(best, abs=1e-6)
    assert float(_value(text, "improvement")) == pytest.approx(baseline - best, abs=1e-6)

    if len(kept) > 1:
        assert "top improvements (how much each lowered the best val_bpb):" in text
        # Commit hashes made of digits keep their leading zero.
        if case == "with_crashes":
            assert "0123456" in text
            assert "keep rate after the baseline: 2/4" in text
            assert float(_value(text, "noise floor")) == pytest.approx(0.0025)  # the pair's gap, above 0.001
    else:
        assert "top improvements: none" in text


# -----------------------------------------------------------------------------
# A realistic night: does the chart stay readable?

IDEAS = ["raise MATRIX_LR to {}", "lower EMBEDDING_LR to {}", "WARMDOWN_RATIO {}",
         "depth {} with DEVICE_BATCH_SIZE 64",
         "swap relu^2 for SwiGLU in the MLP with the hidden size scaled to keep the parameter count the same",
         "window pattern SSL", "muon momentum warmup over {} steps", "x0 lambda init {}",
         "softcap {} instead of 15", "value embeddings on every layer", "GQA with {} kv heads",
         "rotary base {}00", "Adam beta2 {}"]


def overnight_rows(seed=0, n=120):
    """The baseline and its seed-43 rerun, 8 keeps in the first 15 runs and 12 later, smaller, ones; discards
    near the best, 4 runs far worse, 3 crashes. Rows as the agent writes them."""
    rng = random.Random(seed)
    rows = [(0.9979, "keep", "baseline"), (0.9986, "discard", "baseline (seed 43)")]
    keeps = set(rng.sample(range(2, 15), 8)) | set(rng.sample(range(15, n), 12))
    crashes = set(rng.sample(sorted(set(range(3, n)) - keeps), 3))
    far = set(rng.sample(sorted(set(range(3, n)) - keeps - crashes), 4))
    best = rows[0][0]
    for i in range(2, n):
        idea = rng.choice(IDEAS).replace("{}", str(rng.randint(2, 20)))
        if i in crashes:
            rows.append((0.0, "crash", idea + " (OOM)"))
        elif i in keeps:
            best -= rng.uniform(0.002, 0.006) if i < 15 else rng.uniform(0.0003, 0.0015)
            rows.append((best, "keep", idea))
        else:
            worse = rng.uniform(0.05, 0.4) if i in far else abs(rng.gauss(0, 0.004))
            rows.append((best + worse, "discard", idea))
    return [(f"{rng.getrandbits(28):07x}", f"{v:.6f}",
             "0.0" if s == "crash" else f"{rng.uniform(43, 48):.1f}", s, d) for v, s, d in rows]


def test_overnight_chart_fits_the_data_and_labels_do_not_overlap(tmp_path, monkeypatch):
    rows = overnight_rows()
    _write_tsv(tmp_path / "results.tsv", rows)
    text = _run_notebook(tmp_path, tmp_path / "results.tsv", monkeypatch, FIGURE_PROBE)
    figure = _figure(text)

    width, height = _png_size(tmp_path / "progress.png")
    assert 1500 <= width <= 2500 and 900 <= height <= 2000, (width, height)

    # The y axis spans the baseline (and its rerun) to the best, with small margins: no third of it left empty
    bottom, top = figure["ylim"]
    rerun, best = 0.9986, min(float(r[1]) for r in rows if r[3] == "keep")  # the baseline 0.9979 lies between
    assert bottom < best and rerun < top
    assert (best - bottom) / (top - bottom) < 0.06 and (top - rerun) / (top - bottom) < 0.08
    assert "4 runs scored too high to fit" in text  # the far-worse runs are marked on the edge instead

    # Every kept run has a label; no two labels overlap; all lie inside the axes
    labels = figure["labels"]
    assert len(labels) == sum(r[3] == "keep" for r in rows) == 20 + 1
    ax0, ay0, aw, ah = figure["axes"]
    for k, (x, y, w, h) in enumerate(labels):
        assert ax0 <= x and x + w <= ax0 + aw and ay0 <= y and y + h <= ay0 + ah, (k, labels[k])
        for x2, y2, w2, h2 in labels[:k]:
            assert x + w <= x2 or x2 + w2 <= x or y + h <= y2 or y2 + h2 <= y, "labels overlap"

    # The noise floor is the baseline pair's difference (at least 0.001), and the rerun is not an experiment
    assert float(_value(text, "noise floor")) == pytest.approx(0.001)
    assert _value(text, "seed reruns") == "1"
    assert "keep rate after the baseline: 20/115 " in text


def test_crashes_are_marked_on_the_top_edge_above_every_score_and_label(tmp_path, monkeypatch):
    _write_tsv(tmp_path / "results.tsv", overnight_rows())
    figure = _figure(_run_notebook(tmp_path, tmp_path / "results.tsv", monkeypatch, FIGURE_PROBE))
    crashes = next(ys for label, ys in figure["heights"].items() if label.startswith("crash"))
    assert len(crashes) == 3 and min(crashes) > 0.95  # in the top 5% of the axes, the worse end
    ax0, ay0, aw, ah = figure["axes"]
    label_tops = [(y + h - ay0) / ah for x, y, w, h in figure["labels"]]
    assert max(figure["heights"]["kept"] + label_tops) < min(crashes)


def test_one_run_reads_in_the_singular(tmp_path, monkeypatch):
    _write_tsv(tmp_path / "results.tsv", CASES["baseline_only"])
    text = _run_notebook(tmp_path, tmp_path / "results.tsv", monkeypatch, FIGURE_PROBE)
    assert f"loaded 1 row from {tmp_path / 'results.tsv'}" in text
    assert _figure(text)["title"] == "autoresearch: 1 experiment, 1 kept"


# -----------------------------------------------------------------------------
# A crashed first row: the first run with a score is the baseline (issue 24, items 2 and 7)


@pytest.fixture(scope="session")
def after_a_crash(tmp_path_factory):
    """The notebook's printed text and figure for CASES["crash_before_baseline"], run once for these tests."""
    folder = tmp_path_factory.mktemp("after_a_crash")
    _write_tsv(folder / "results.tsv", CASES["crash_before_baseline"])
    with pytest.MonkeyPatch.context() as monkeypatch:
        text = _run_notebook(folder, folder / "results.tsv", monkeypatch, FIGURE_PROBE)
    return text, _figure(text)


def test_the_first_run_with_a_score_is_the_baseline(after_a_crash):
    text, _ = after_a_crash
    assert _value(text, "baseline val_bpb") == "1.500000"
    assert _value(text, "improvement") == "0.131000"  # not "no improvement": the crash was no baseline
    # The decisions after it: one keep; the baseline itself and its seed rerun are no decisions
    assert "keep rate after the baseline: 1/1 = 100.0%" in text


def test_rows_before_the_baseline_and_seed_reruns_are_not_experiments(after_a_crash):
    text, figure = after_a_crash
    assert _value(text, "total experiments") == "2"
    assert "(2 rows left out: seed reruns and rows before the baseline)" in text
    assert figure["title"] == "autoresearch: 2 experiments, 2 kept"


def test_no_discarded_legend_entry_without_a_discarded_point(after_a_crash):
    _, figure = after_a_crash  # its only discard is the seed rerun, which has a marker of its own
    assert "discarded" not in figure["legend"] and "discarded" not in figure["heights"]
    assert "rerun with another seed" in figure["legend"] and "crash (1)" in figure["legend"]


def test_the_noise_band_below_the_best_stays_inside_the_axis(after_a_crash):
    text, figure = after_a_crash
    noise = float(_value(text, "noise floor"))
    assert noise == pytest.approx(0.06)  # 1.56 - 1.50: a loaded CPU's seed pair
    bottom, top = figure["ylim"]
    assert bottom <= 1.369 - noise and top >= 1.56


def test_top_improvements_are_positive_gains(after_a_crash):
    text, _ = after_a_crash
    assert re.search(r"^  0\.131000  #3 +d4e5f6a +DEPTH 3$", text, re.MULTILINE), text
    assert "-0.131" not in text


@pytest.mark.parametrize("n", [1, 3])
def test_x_ticks_are_whole_run_numbers(n, tmp_path, monkeypatch):
    _write_tsv(tmp_path / "results.tsv", CASES["with_crashes"][:n])
    ticks = _figure(_run_notebook(tmp_path, tmp_path / "results.tsv", monkeypatch, FIGURE_PROBE))["xticks"]
    assert ticks and all(t == int(t) and 0 <= t <= n - 1 for t in ticks), ticks


# -----------------------------------------------------------------------------
# A malformed results file stops the first code cell with one line


def test_comma_separated_file_stops_with_one_line(tmp_path, monkeypatch):
    tsv = tmp_path / "results.tsv"
    tsv.write_text("\n".join(",".join(row) for row in [HEADER.split("\t")] + CASES["with_crashes"]) + "\n")
    cell, error, ran = _first_error(tmp_path, tsv, monkeypatch)
    assert cell == 0 and ran == 1
    assert error.traceback == [f"ResultsFileError: {tsv} must be tab-separated: the five columns "
                               "commit val_bpb memory_gb status description separated by tabs "
                               "(its first line has no tab)"]


def test_an_empty_file_is_called_empty_in_one_line(tmp_path, monkeypatch):
    tsv = tmp_path / "results.tsv"
    tsv.write_text("")
    cell, error, ran = _first_error(tmp_path, tsv, monkeypatch)
    assert cell == 0 and ran == 1
    assert error.traceback == [f"ResultsFileError: {tsv} is empty: its first line must be the five columns "
                               "commit val_bpb memory_gb status description separated by tabs (program.md's "
                               "setup writes it)"]


def test_missing_columns_are_named_in_one_line(tmp_path, monkeypatch):
    tsv = tmp_path / "results.tsv"
    keep = [0, 1, 4]  # commit, val_bpb, description: no memory_gb, no status
    rows = [HEADER.split("\t")] + CASES["with_crashes"]
    tsv.write_text("\n".join("\t".join(row[k] for k in keep) for row in rows) + "\n")
    cell, error, ran = _first_error(tmp_path, tsv, monkeypatch)
    assert cell == 0 and ran == 1
    assert error.traceback == [f"ResultsFileError: {tsv} has no memory_gb or status column: its first line "
                               "must be the five columns commit val_bpb memory_gb status description "
                               "separated by tabs"]


# -----------------------------------------------------------------------------
# README's commands for the notebook


def _run_readme_headless_command(workdir):
    """Run README's headless command in workdir, with its environment variables, as this venv's jupyter."""
    line = next(ln for ln in (ROOT / "README.md").read_text().splitlines() if "jupyter nbconvert" in ln)
    words = line.split("  #")[0].split()
    k = words.index("uv")
    assert words[k:k + 4] == ["uv", "run", "jupyter", "nbconvert"] and "--stdout" in words, line
    env = {key: value for key, value in os.environ.items() if key != "RESULTS_TSV"} | dict(
        w.split("=", 1) for w in words[:k])
    (workdir / "analysis.ipynb").write_bytes(NOTEBOOK.read_bytes())
    jupyter = Path(sys.executable).parent / "jupyter"  # what uv run finds: this environment's
    return subprocess.run([str(jupyter), *words[k + 3:]], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=180)


def test_readme_headless_command_prints_the_results(tmp_path):
    _write_tsv(tmp_path / "results.tsv", CASES["with_crashes"])
    out = _run_readme_headless_command(tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    # 8 rows, 1 seed rerun: 7 experiments
    assert "total experiments: 7" in out.stdout and "best kept val_bpb: 0.989100" in out.stdout
    # The chart is saved and its full path printed; the markdown links no file that does not exist
    assert (tmp_path / "progress.png").is_file() and f"saved {tmp_path / 'progress.png'}" in out.stdout
    links = re.findall(r"\]\(([^)]+)\)", out.stdout)
    assert all((tmp_path / link).is_file() for link in links), links
    assert "analysis_files/" not in out.stdout


def test_the_chart_shows_inline_in_jupyter(tmp_path, monkeypatch):
    monkeypatch.delenv("MPLBACKEND", raising=False)  # as under jupyter lab: the kernel's inline backend
    monkeypatch.setenv("RESULTS_TSV", str(tmp_path / "results.tsv"))
    _write_tsv(tmp_path / "results.tsv", CASES["with_crashes"])
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=120,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [out for cell in nb.cells for out in cell.get("outputs", [])]
    assert sum("image/png" in out.get("data", {}) for out in outputs) == 1


def test_readme_headless_command_ends_with_the_one_line_for_a_bad_file(tmp_path):
    (tmp_path / "results.tsv").write_text("commit,val_bpb,memory_gb,status,description\n"
                                          "a1b2c3d,0.997900,44.0,keep,baseline\n")
    out = _run_readme_headless_command(tmp_path)
    assert out.returncode != 0 and "KeyError:" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ResultsFileError: results.tsv must be tab-separated"), out.stderr[-3000:]


def test_readme_headless_command_ends_with_one_line_for_a_missing_file(tmp_path):
    out = _run_readme_headless_command(tmp_path)  # no results.tsv in the folder
    # Above it nbconvert prints its own traceback and the cell; the cell's error is that one line
    assert out.returncode != 0 and "FileNotFoundError:" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last == ("ResultsFileError: results.tsv not found: run the notebook where the agent's results.tsv "
                    "is, or set RESULTS_TSV to its path"), out.stderr[-3000:]


def test_readme_lab_command_works():
    assert "uv run jupyter lab analysis.ipynb" in (ROOT / "README.md").read_text()
    jupyter = Path(sys.executable).parent / "jupyter"
    lab = subprocess.run([str(jupyter), "lab", "--version"], capture_output=True, text=True, timeout=120)
    assert lab.returncode == 0 and re.fullmatch(r"4\.\d+\.\d+\s*", lab.stdout), lab.stdout + lab.stderr
