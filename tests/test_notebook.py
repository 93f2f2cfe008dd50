"""Run analysis.ipynb headless on generated results.tsv files and check what it prints and saves."""

import re
import struct
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


def _run_notebook(workdir, tsv, monkeypatch):
    """Execute the notebook with cwd = workdir and RESULTS_TSV = tsv; return all printed text."""
    monkeypatch.setenv("RESULTS_TSV", str(tsv))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Probe cell appended at the end: reports which interpreter and directory the kernel used.
    nb.cells.append(nbformat.v4.new_code_cell(
        "import os, sys\nprint('PROBE', sys.executable, os.getcwd(), os.environ.get('RESULTS_TSV'))"))
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
    else:
        assert "top improvements: none" in text
