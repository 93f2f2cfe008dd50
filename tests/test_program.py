"""program.md must agree with what train.py prints and with the results.tsv format the notebook reads."""

import os
import re
import subprocess
from pathlib import Path

import pytest
from common import GIT_ENV

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


def test_program_greps_the_summary_fields():
    """program.md's grep reads two labels of the spec's summary block (that train.py prints them is checked by
    the end-to-end runs, which parse the block)."""
    program = _read("program.md")
    greps = [g for g in re.findall(r'grep "([^"]*)" run\.log', program) if "val_bpb" in g]
    assert greps, "program.md shows no grep command for val_bpb on run.log"
    for pattern in greps:
        fields = re.findall(r"\^(\w+):", pattern)
        assert fields == ["val_bpb", "peak_vram_mb"] and set(fields) <= set(LABELS), pattern
    assert 'grep "^val_bpb:\\|^peak_vram_mb:" run.log' in program


def test_summary_block_in_program_matches_spec():
    program = _read("program.md")
    blocks = [b.rstrip("\n") for b in _code_blocks(program)]
    assert SUMMARY in blocks, "program.md must show the summary block exactly as the spec gives it"


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
    assert len(program.splitlines()) <= 160, "program.md should stay short enough to read in two minutes"


def _example_rows(program):
    block = next(b for b in _code_blocks(program) if b.startswith(HEADER + "\n") and b.count("\n") > 1)
    return [line.split("\t") for line in block.strip("\n").splitlines()[1:]]


def test_baseline_runs_twice_without_a_commit_and_sets_the_noise_floor():
    program = _read("program.md")
    setup = program[program.index("## Setup"):program.index("## Rules")]
    assert 'git commit -m "baseline (seed 43)" train.py' in setup and "SEED = 43" in setup
    assert "git reset --keep HEAD~1" in setup and "at least 0.001" in setup
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
            best = min(best, val)  # `best` is the lowest score among rows logged keep
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


def _git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, timeout=30,
                          check=True).stdout


def _section(text, start, end):
    return text[text.index(start):text.index(end, text.index(start))]


def _setup_lines(program):
    """The lines of the code blocks in program.md's Setup, in order (blocks may be indented in the list)."""
    setup = _section(program, "## Setup", "## Rules")
    blocks = re.findall(r"^( *)```[^\n]*\n(.*?)^\1```", setup, re.MULTILINE | re.DOTALL)
    lines = [line[len(indent):].strip() for indent, body in blocks for line in body.splitlines()]
    assert any(line.startswith("git checkout -b autoresearch/<tag>") for line in lines), \
        "program.md's Setup needs code blocks with its commands, from `git checkout -b autoresearch/<tag>` on"
    assert any(line.startswith("git reset") for line in lines), "the seed rerun's reset must be in the block"
    return lines


def _readme_recipe():
    """README's 'Tuning for small computers' constants: {file name: [(NAME, value), ...]}."""
    section = _section(_read("README.md"), "## Tuning for small computers", "\n## Several GPUs")
    block = re.search(r"^```python\n(.*?)^```", section, re.MULTILINE | re.DOTALL).group(1)
    recipe, current = {}, None
    for line in block.splitlines():
        if line.startswith("# "):
            current = line[2:].strip()
        elif "=" in line:
            name, value = (part.strip() for part in line.split("=", 1))
            recipe.setdefault(current, []).append((name, value))
    assert set(recipe) == {"train.py", "prepare.py"}, recipe
    return recipe


def _apply_recipe(text, constants):
    """The human's edit: each `NAME = ...` line of the file set to the recipe's value."""
    lines = text.split("\n")
    for name, value in constants:
        hits = [k for k, line in enumerate(lines) if line.startswith(f"{name} =")]
        assert len(hits) == 1, f"README's recipe sets {name}, found on {len(hits)} lines"
        lines[hits[0]] = f"{name} = {value}"
    return "\n".join(lines)


def _follow_setup(repo, lines):
    """Do the Setup blocks as the agent would: run each command; a `#` line is the agent's own action."""
    runs, listed = [], None
    for line in lines:
        if line.startswith("#"):
            if "run train.py" in line:  # the stand-in for a training run: what it would run, and from where
                runs.append(dict(commit=_git(repo, "rev-parse", "--short", "HEAD").strip(),
                                 dirty=_git(repo, "status", "--porcelain", "--untracked-files=no"),
                                 **{name: (repo / name).read_text() for name in ("train.py", "prepare.py")}))
            elif "SEED = 43" in line:
                train = (repo / "train.py").read_text()
                assert "\nSEED = 42 " in train, "train.py has no `SEED = 42` line to edit"
                (repo / "train.py").write_text(train.replace("\nSEED = 42 ", "\nSEED = 43 ", 1))
            continue
        command = line.replace("<tag>", "mar5")
        assert "<" not in command.split("#")[0], f"a placeholder the test does not know: {line}"
        if "# only if" in command and not listed:
            continue  # the commit of local edits, only when `git status` listed some
        out = subprocess.run(["bash", "-c", command], cwd=repo, env=GIT_ENV, capture_output=True, text=True,
                             timeout=30)
        assert out.returncode == 0, f"{command}: {out.stdout}{out.stderr}"
        if command.startswith("git status"):
            listed = out.stdout.strip()
    return runs


@pytest.mark.parametrize("local_edits", [True, False], ids=["small-computer-recipe", "clean-clone"])
def test_setup_keeps_local_edits_and_the_seed_rerun_changes_only_the_seed(tmp_path, local_edits):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("train.py", "prepare.py", ".gitignore"):
        (repo / name).write_text(_read(name))
    _git(repo, "-c", "init.defaultBranch=main", "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "initial")
    main = _git(repo, "rev-parse", "main").strip()

    # The human applies README's recipe for small computers without committing it
    expected = {name: (repo / name).read_text() for name in ("train.py", "prepare.py")}
    if local_edits:
        for name, constants in _readme_recipe().items():
            expected[name] = _apply_recipe(expected[name], constants)
            (repo / name).write_text(expected[name])
    (repo / "notes.txt").write_text("the human's untracked notes\n")
    (repo / "results.tsv").write_text(HEADER + "\n")

    runs = _follow_setup(repo, _setup_lines(_read("program.md")))
    assert len(runs) == 2, "the setup runs the baseline twice"
    baseline, rerun = runs
    seed43 = expected["train.py"].replace("\nSEED = 42 ", "\nSEED = 43 ", 1)
    # The baseline ran committed code, and the commit it logs holds the recipe
    assert baseline["dirty"] == "", "the baseline ran uncommitted edits: its logged commit is not what ran"
    for name in expected:
        assert baseline[name] == expected[name], f"the baseline did not run the human's {name}"
        assert _git(repo, "show", f"{baseline['commit']}:{name}") == expected[name], name
    # The rerun ran the same code but for the seed, from a commit of its own on top of the baseline's
    assert (rerun["train.py"], rerun["prepare.py"], rerun["dirty"]) == (seed43, expected["prepare.py"], "")
    assert _git(repo, "rev-parse", "--short", f"{rerun['commit']}~1").strip() == baseline["commit"]
    assert _git(repo, "show", f"{rerun['commit']}:train.py") == seed43
    # Afterwards: the branch tip is the baseline, SEED is back to 42, and nothing else was lost
    assert _git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip() == "autoresearch/mar5"
    assert _git(repo, "rev-parse", "--short", "HEAD").strip() == baseline["commit"]
    for name in expected:
        assert (repo / name).read_text() == expected[name], f"{name} lost the human's edits or kept SEED = 43"
        assert _git(repo, "show", f"HEAD:{name}") == expected[name], name
    assert _git(repo, "status", "--porcelain", "--untracked-files=no") == ""
    assert (repo / "notes.txt").read_text() == "the human's untracked notes\n"
    assert (repo / "results.tsv").read_text() == HEADER + "\n"
    assert _git(repo, "rev-parse", "main").strip() == main, "main must not move"
    baseline_full = _git(repo, "rev-parse", "HEAD").strip()
    assert (baseline_full != main) == local_edits, "a commit of its own only when there were local edits"


def test_the_seed_rerun_commits_and_undoes_only_the_seed(tmp_path):
    """The seed rerun (from the SEED edit to the reset) leaves any other uncommitted change alone."""
    lines = _setup_lines(_read("program.md"))
    start = next(k for k, line in enumerate(lines) if line.startswith("#") and "SEED = 43" in line)
    end = next(k for k, line in enumerate(lines) if line.startswith("git reset"))
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("train.py", "prepare.py"):
        (repo / name).write_text(_read(name))
    _git(repo, "-c", "init.defaultBranch=main", "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "baseline")
    base = _git(repo, "rev-parse", "--short", "HEAD").strip()
    edited = _apply_recipe(_read("prepare.py"), _readme_recipe()["prepare.py"])  # left uncommitted
    (repo / "prepare.py").write_text(edited)

    (rerun,) = _follow_setup(repo, lines[start:end + 1])
    assert rerun["train.py"] == _read("train.py").replace("\nSEED = 42 ", "\nSEED = 43 ", 1)
    assert _git(repo, "show", "--name-only", "--format=", rerun["commit"]).split() == ["train.py"], \
        "the rerun's commit must hold its SEED edit and nothing else"
    assert _git(repo, "rev-parse", "--short", "HEAD").strip() == base
    assert (repo / "train.py").read_text() == _read("train.py"), "SEED must be back to 42"
    assert (repo / "prepare.py").read_text() == edited, "the reset threw away an uncommitted edit"


def test_a_noisy_baseline_is_reported_to_the_human():
    program = _read("program.md")
    setup = _section(program, "## Setup", "## Rules")
    # The usual floor: another seed moves val_bpb by 0.0003 to 0.002 on an H100
    spread = re.search(r"another seed moves `val_bpb` by\s+([\d.]+) to ([\d.]+)", program)
    assert spread, "program.md should say how far another seed moves val_bpb"
    match = re.search(r"`N` is above (\d\.\d+)", setup)
    assert match, "the setup must say which noise floor is too large"
    limit = float(match.group(1))
    # Far above the worst seed difference, far below the shared-CPU pair 2.093207 / 2.146092
    assert float(spread.group(2)) * 2 <= limit < 2.146092 - 2.093207
    paragraph = " ".join(setup[match.start():].split("\n\n")[0].split())
    for needle in ["tell the human in one line", "other load on the machine", "small computer",
                   "timing noise", "keeps almost nothing", "Carry on"]:
        assert needle in paragraph, f"the noisy-baseline sentence should say {needle!r}"
    assert not re.search(r"\b(wait|stop)\b", paragraph, re.IGNORECASE), "after setup it never stops to ask"


def test_a_failed_baseline_is_fixed_in_the_setup_never_logged():
    """A baseline that crashed or was killed at 10 minutes is the setup's fault: no crash row may become the
    first row (the notebook would then count the real baseline as an experiment)."""
    program = _read("program.md")
    setup = _section(program, "## Setup", "## Rules")
    start = setup.index("**A baseline run that crashes or times out**")
    paragraph = " ".join(setup[start:].split("\n\n")[0].split())
    for needle in ["`exit: 124`", "log no row", "first row is always a baseline with a score",
                   "start no loop", "`DEVICE_BATCH_SIZE`", "ask for the fix", "*Tuning for small computers*",
                   "run the baseline again"]:
        assert needle in paragraph, f"the failed-baseline paragraph should say {needle!r}"
    # The loop's rule for a timed-out run (log it as a crash) points back to it
    timeout_rule = _section(program, "`exit: 124` means", "**NEVER STOP.**")
    assert "a baseline run is never logged as a crash" in " ".join(timeout_rule.split())


def test_run_time_and_training_budget_are_said_once():
    program, readme = _read("program.md"), _read("README.md")
    prose = re.sub(r"^```.*?^```", "", program, flags=re.MULTILINE | re.DOTALL)
    for stale in [r"five.minute", r"five minutes", r"(?<![\d.])5 minutes", r"six minutes", r"5\.5 to 7",
                  r"ten an hour", r"80 to 90"]:
        assert not re.search(stale, prose, re.IGNORECASE), f"program.md still says {stale!r}"
    # Training lasts TIME_BUDGET seconds: the default is given once, where it is set
    assert prose.count("`TIME_BUDGET` seconds (300 by default, set in `prepare.py`)") == 1
    assert len(re.findall(r"\b300\b", prose)) == 1
    # The measured figures, once each, as README gives them
    how = _section(readme, "## How it works", "\n## Quick start")
    figures = [("about 5.5 minutes", "about 5.5 minutes"), ("10.9 an hour", "10.9 an hour"),
               ("~85 a night", "about 85 overnight"), ("about 6.5 minutes", "about 6.5 minutes")]
    for figure, in_readme in figures:
        assert prose.count(figure) == 1, f"program.md should say {figure!r} once"
        assert in_readme in how, f"README's measured figures no longer include {in_readme!r}"
    assert set(re.findall(r"([\d.]+) minutes", prose)) == {"5.5", "6.5", "2", "10"}


def test_candidate_row_is_written_after_its_confirming_rerun():
    program = _read("program.md")
    loop = _section(program, "LOOP FOREVER", "**Running train.py.**")
    steps = re.findall(r"^\d+\. (.*?)(?=^\d+\. |\Z)", loop, re.MULTILINE | re.DOTALL)
    rerun = next((k for k, step in enumerate(steps) if "seed rerun" in step), None)
    row = next((k for k, step in enumerate(steps) if re.search(r"\b(add|write)\b.*\brow\b", step, re.I | re.S)), None)
    assert rerun is not None and row is not None, "the loop must say when to rerun and when to log"
    assert rerun < row, "the confirming rerun decides the status: it comes before the candidate's row"
    log = " ".join(steps[row].split())
    assert "final status" in log and log.index("run's row") < log.index("rerun's row") and "`discard`" in log
    assert "log that row" not in program, "the keep rule must not log the rerun before the candidate"


def test_best_is_the_lowest_kept_score():
    program = _read("program.md")
    assert "`best` is the lowest `val_bpb` among rows logged `keep`" in program
    assert "branch tip" not in program, "one `best`: the lowest kept score, as the notebook shows it"
