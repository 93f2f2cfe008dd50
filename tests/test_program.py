"""program.md must agree with what train.py prints and with the results.tsv format the notebook reads."""

import re
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
