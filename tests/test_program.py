"""program.md must agree with what train.py prints and with the results.tsv format the notebook reads."""

import os
import re
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription"

# The summary block as the specification gives it: labels, alignment and decimals are fixed.
SUMMARY = """---
val_bpb:          0.997900
training_seconds: 300.1
total_seconds:    325.9
peak_vram_mb:     45060.2
mfu_percent:      39.80
total_tokens_M:   499.6
num_steps:        953
num_params_M:     50.3
depth:            8"""
LABELS = [line.split(":")[0] for line in SUMMARY.splitlines()[1:]]


def _read(name):
    path = ROOT / name
    # Deliberately not a skip: the suite is meaningless without these files.
    assert path.is_file(), f"{name} is missing from {ROOT}"
    return path.read_text(encoding="utf-8")


def _code_blocks(markdown):
    return re.findall(r"^```[^\n]*\n(.*?)^```", markdown, re.MULTILINE | re.DOTALL)


def _printed_label(source, label):
    """The string literal that starts with `label:` in train.py, up to the value's placeholder."""
    match = re.search(rf"""print\(\s*f?["']({re.escape(label)}:\s*)\{{""", source)
    return match.group(1) if match else None


def test_grep_fields_are_printed_by_train():
    program, train = _read("program.md"), _read("train.py")
    greps = [g for g in re.findall(r'grep "([^"]*)" run\.log', program) if "val_bpb" in g]
    assert greps, "program.md shows no grep command for val_bpb on run.log"
    for pattern in greps:
        fields = re.findall(r"\^(\w+):", pattern)
        assert fields == ["val_bpb", "peak_vram_mb"], pattern
        for field in fields:
            assert _printed_label(train, field), f"train.py does not print a line starting with {field}:"
    assert 'grep "^val_bpb:\\|^peak_vram_mb:" run.log' in program


def test_summary_block_in_program_matches_spec():
    program = _read("program.md")
    blocks = [b.rstrip("\n") for b in _code_blocks(program)]
    assert SUMMARY in blocks, "program.md must show the summary block exactly as the spec gives it"


def test_train_prints_every_summary_label_aligned():
    train = _read("train.py")
    assert re.search(r"""print\(\s*["']---["']\s*\)""", train), "train.py must print the '---' separator"
    for label in LABELS:
        literal = _printed_label(train, label)
        assert literal, f"train.py does not print the summary label {label}:"
        # Values start in the same column as in the spec (after 'training_seconds: ').
        assert len(literal) == len("training_seconds: "), f"{label}: is not aligned ({literal!r})"


def test_tsv_header_and_example():
    program = _read("program.md")
    blocks = _code_blocks(program)
    header_blocks = [b for b in blocks if b.splitlines() and b.splitlines()[0] == HEADER]
    assert header_blocks, "program.md needs a code block whose first line is the tab-separated header"
    assert any(b.strip("\n") == HEADER for b in header_blocks), "show the header alone, ready to copy"

    examples = [b for b in header_blocks if len(b.strip("\n").splitlines()) > 1]
    assert examples, "program.md needs an example results.tsv"
    rows = [line.split("\t") for line in examples[0].strip("\n").splitlines()[1:]]
    statuses = set()
    for row in rows:
        assert len(row) == 5, row
        commit, val_bpb, memory_gb, status, description = row
        assert re.fullmatch(r"[0-9a-f]{7}", commit), row
        assert re.fullmatch(r"\d+\.\d{6}", val_bpb), row
        assert re.fullmatch(r"\d+\.\d", memory_gb), row
        assert status in {"keep", "discard", "crash"}, row
        assert description and "\t" not in description
        if status == "crash":
            assert (val_bpb, memory_gb) == ("0.000000", "0.0"), row
        statuses.add(status)
    assert rows[0][3] == "keep" and rows[0][4] == "baseline"
    assert statuses == {"keep", "discard", "crash"}


def test_workflow_essentials():
    program = _read("program.md")
    for needle in [
        "autoresearch/<tag>",
        "uv run prepare.py",
        "uv run train.py > run.log 2>&1",
        "tail -n 50 run.log",
        "git reset --hard",
        "results.tsv",
        "evaluate_bpb",
        "10 minutes",
        "NEVER STOP",
        "checkpoints/model.pt",
        "AUTORESEARCH_CACHE_DIR",
    ]:
        assert needle in program, f"program.md does not mention {needle!r}"
    assert len(program.splitlines()) <= 150, "program.md should stay short enough to read in two minutes"


def test_names_program_uses_exist_in_train():
    train = _read("train.py")
    for name in ["DEVICE_BATCH_SIZE", "TOTAL_BATCH_SIZE"]:
        assert re.search(rf"^{name}\s*=", train, re.MULTILINE), f"train.py has no module constant {name}"
    assert "checkpoints" in train and "model.pt" in train, "train.py should save checkpoints/model.pt"
    assert "evaluate_bpb" in train


def test_backend_line_program_tells_the_agent_to_grep():
    program, train = _read("program.md"), _read("train.py")
    if 'grep "^attention:" run.log' in program:
        assert re.search(r"""f?["']attention: """, train), "train.py must print the backend as 'attention: ...'"


def _example_rows(program):
    block = next(b for b in _code_blocks(program) if b.startswith(HEADER + "\n") and b.count("\n") > 1)
    return [line.split("\t") for line in block.strip("\n").splitlines()[1:]]


def test_baseline_runs_twice_without_a_commit_and_sets_the_noise_floor():
    program, train = _read("program.md"), _read("train.py")
    setup = program[program.index("## Setup"):program.index("## Rules")]
    assert "nothing to commit" in setup and 'git commit -am "baseline (seed 43)"' in setup
    assert "`SEED = 43`" in setup and "git reset --hard HEAD~1" in setup and "at least 0.001" in setup
    assert re.search(r"^SEED = 42 ", train, re.MULTILINE), "train.py needs the SEED constant program.md edits"
    # The notebook computes the same floor from the same rows
    notebook = _read("analysis.ipynb")
    assert "NOISE_MIN = 0.001" in notebook and "(seed \\\\d+\\\\)$" in notebook


def test_example_results_follow_the_noise_rule():
    rows = _example_rows(_read("program.md"))
    (_, base, _, status0, desc0), (_, rerun, _, status1, desc1) = rows[:2]
    assert (status0, desc0, status1, desc1) == ("keep", "baseline", "discard", "baseline (seed 43)")
    noise = max(abs(float(base) - float(rerun)), 0.001)
    best, confirmed = float(base), 0
    for k, (_, val, _, status, desc) in enumerate(rows[2:], start=2):
        val = float(val)
        if desc.endswith(" (seed 43)"):  # a confirming rerun: right after its candidate, logged as discard
            assert status == "discard" and rows[k - 1][4] == desc[: -len(" (seed 43)")]
            continue
        following = rows[k + 1] if k + 1 < len(rows) else None
        rerun_val = float(following[1]) if following and following[4] == desc + " (seed 43)" else None
        if status == "keep":
            assert val < best - noise or (val < best and rerun_val is not None and rerun_val < best), desc
            confirmed += rerun_val is not None
            best = val
        elif status == "discard":
            assert val >= best - noise, f"{desc} beat the noise and should have been kept"
        else:
            assert status == "crash" and val == 0.0
    assert confirmed >= 1, "show a gain inside the noise floor confirmed by a rerun"
    assert any(r[3] == "crash" and "(timeout)" in r[4] for r in rows), "show how a timed-out run is logged"


def _start_and_wait(program, tmp_path, fake_uv, limit_s):
    """Run program.md's background command and its wait loop with a stand-in `uv`; return run.log."""
    block = next(b for b in _code_blocks(program) if "timeout 600 uv run train.py > run.log 2>&1" in b)
    start, wait = [line.split("    #")[0] for line in block.strip().splitlines()]
    assert start.rstrip().endswith("&"), "the run must start in the background"
    (tmp_path / "uv").write_text("#!/bin/sh\n" + fake_uv)
    (tmp_path / "uv").chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")
    subprocess.run(["bash", "-c", start.replace("timeout 600", f"timeout {limit_s}")], cwd=tmp_path, env=env,
                   timeout=30, check=True)
    for _ in range(60):  # the agent's wait, with 0.5 s instead of 60 s sleeps
        out = subprocess.run(["bash", "-c", wait.replace("sleep 60", "sleep 0.5")], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=30).stdout
        if out:
            return out, (tmp_path / "run.log").read_text()
    raise AssertionError("the wait never saw the run end")


def test_background_run_and_wait_report_the_exit_code(tmp_path):
    program = _read("program.md")
    assert "Claude Code after 2" in program and not re.search(r"log it\s+as `discard` or `crash`", program)
    out, log = _start_and_wait(program, tmp_path, 'echo "val_bpb:          0.997900"\n', limit_s=600)
    assert out.strip() == "exit: 0" and "val_bpb:          0.997900" in log
    # A run past the limit ends with timeout's code 124, which program.md says to log as a crash
    (tmp_path / "run.log").unlink()
    out, log = _start_and_wait(program, tmp_path, "sleep 30\n", limit_s=1)
    assert out.strip() == "exit: 124" and "`exit: 124`" in program and "`crash` with `(timeout)`" in program


def test_off_gpu_memory_and_leftover_weights_are_explained():
    program = _read("program.md")
    assert "peak resident memory" in program and "MPS" in program
    assert "after a reset, the discarded run's" in program
