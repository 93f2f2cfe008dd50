"""Run analysis.ipynb headless on generated results.tsv files and check what it prints and saves."""

import json
import random
import re
import struct
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "analysis.ipynb"
HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription"

# Each case: rows as (commit, val_bpb, memory_gb, status, description).
CASES = {
    "baseline_only": [
        ("a1b2c3d", "0.997900", "44.0", "keep", "baseline"),
    ],
    "with_crashes": [
        ("a1b2c3d", "0.997900", "44.0", "keep", "baseline"),
        ("9a8b7c6", "0.995400", "44.0", "discard", "baseline (seed 43)"),  # the noise check: not a decision
        ("0123456", "0.993200", "44.2", "keep", "raise MATRIX_LR to 0.05"),
        ("c3d4e5f", "1.005000", "44.0", "discard", "swap relu^2 for GELU in the MLP, which made things worse"),
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
}


def _write_tsv(path, rows):
    lines = [HEADER] + ["\t".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")


# The figure as drawn: the y limits, the axes' and every label's box in pixels (the text itself, not the box
# padding or the leader line), from a cell appended after the notebook's own.
FIGURE_PROBE = """
import json
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text
canvas = FigureCanvasAgg(fig)  # plt.show() closed the notebook's own canvas
canvas.draw()  # places the annotations
renderer = canvas.get_renderer()
print('FIGURE', json.dumps(dict(ylim=ax.get_ylim(), axes=ax.get_window_extent(renderer).bounds,
                                labels=[Text.get_window_extent(t, renderer).bounds for t in ax.texts])))
"""


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
            assert cell.outputs == [] and cell.execution_count is None, "commit the notebook with outputs cleared"


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

    # The plot is written to the working directory as a PNG of sensible size.
    png = workdir / "progress.png"
    assert png.is_file()
    width, height = _png_size(png)
    assert 1000 <= width <= 4000 and 500 <= height <= 2500, (width, height)

    # Counts per status (statuses are normalised: " Keep " counts as keep).
    statuses = [r[3].strip().lower() for r in rows]
    assert int(_value(text, "total experiments")) == len(rows)
    for status in ("keep", "discard", "crash"):
        assert int(_value(text, status)) == statuses.count(status)

    kept = [float(r[1]) for r, s in zip(rows, statuses) if s == "keep" and float(r[1]) > 0]
    assert int(_value(text, "kept experiments")) == len(kept)

    if statuses[0] == "crash":
        assert "baseline" in text and "no improvement to report" in text
        assert "best kept val_bpb" not in text
        return

    baseline = float(rows[0][1])
    best = min(kept)
    assert float(_value(text, "baseline val_bpb")) == pytest.approx(baseline, abs=1e-6)
    assert float(_value(text, "best kept val_bpb")) == pytest.approx(best, abs=1e-6)
    assert float(_value(text, "improvement")) == pytest.approx(baseline - best, abs=1e-6)

    if len(kept) > 1:
        assert "top improvements:" in text
        # Commit hashes made of digits keep their leading zero.
        if case == "with_crashes":
            assert "0123456" in text
            assert "keep rate after the baseline: 2/4" in text
            assert float(_value(text, "noise floor")) == pytest.approx(0.0025)  # the pair's gap, above 0.001
    else:
        assert "top improvements: none" in text


# -----------------------------------------------------------------------------
# A realistic night: does the chart stay readable?

IDEAS = ["raise MATRIX_LR to {}", "lower EMBEDDING_LR to {}", "WARMDOWN_RATIO {}", "depth {} with DEVICE_BATCH_SIZE 64",
         "swap relu^2 for SwiGLU in the MLP with the hidden size scaled to keep the parameter count the same",
         "window pattern SSL", "muon momentum warmup over {} steps", "x0 lambda init {}", "softcap {} instead of 15",
         "value embeddings on every layer", "GQA with {} kv heads", "rotary base {}00", "Adam beta2 {}"]


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
            rows.append((best + (rng.uniform(0.05, 0.4) if i in far else abs(rng.gauss(0, 0.004))), "discard", idea))
    return [(f"{rng.getrandbits(28):07x}", f"{v:.6f}", "0.0" if s == "crash" else f"{rng.uniform(43, 48):.1f}", s, d)
            for v, s, d in rows]


def test_overnight_chart_fits_the_data_and_labels_do_not_overlap(tmp_path, monkeypatch):
    rows = overnight_rows()
    _write_tsv(tmp_path / "results.tsv", rows)
    text = _run_notebook(tmp_path, tmp_path / "results.tsv", monkeypatch, FIGURE_PROBE)
    figure = json.loads(re.search(r"^FIGURE (.*)$", text, re.MULTILINE).group(1))

    width, height = _png_size(tmp_path / "progress.png")
    assert 1500 <= width <= 2500 and 900 <= height <= 2000, (width, height)

    # The y axis spans the baseline (and its rerun) to the best, with small margins: no third of it left empty
    bottom, top = figure["ylim"]
    baseline, rerun, best = 0.9979, 0.9986, min(float(r[1]) for r in rows if r[3] == "keep")
    assert bottom < best and rerun < top
    assert (best - bottom) / (top - bottom) < 0.06 and (top - rerun) / (top - bottom) < 0.08
    assert "4 run(s) scored too high to fit" in text  # the far-worse runs are marked on the edge instead

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


# -----------------------------------------------------------------------------
# README's commands for the notebook


def test_readme_headless_command_prints_the_results(tmp_path):
    readme = (ROOT / "README.md").read_text()
    command = "uv run jupyter nbconvert --to markdown --no-input --execute --stdout analysis.ipynb"
    assert command in readme
    assert "uv run jupyter lab analysis.ipynb" in readme
    rows = CASES["with_crashes"]
    _write_tsv(tmp_path / "results.tsv", rows)
    (tmp_path / "analysis.ipynb").write_bytes(NOTEBOOK.read_bytes())
    # The same command inside this environment (uv run is the venv's jupyter)
    jupyter = Path(sys.executable).parent / "jupyter"
    out = subprocess.run([str(jupyter), *command.split()[3:]], cwd=tmp_path, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "total experiments: 8" in out.stdout and "best kept val_bpb: 0.989100" in out.stdout
    assert (tmp_path / "progress.png").is_file()
    lab = subprocess.run([str(jupyter), "lab", "--version"], capture_output=True, text=True, timeout=120)
    assert lab.returncode == 0 and re.fullmatch(r"4\.\d+\.\d+\s*", lab.stdout), lab.stdout + lab.stderr
