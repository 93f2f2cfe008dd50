"""program.md, checked for its structure rather than its sentences: its sections and the loop's steps come in
order; every file, constant and command it names exists and works; its examples follow its own format and
rules; following its Setup and its background run does what it says. Its wording is free to change."""

import json
import os
import re
import subprocess
import sys

import pytest
from common import GIT_ENV, ROOT, git, parse_summary

import audit
import prepare


def _read(name):
    path = ROOT / name
    # Deliberately not a skip: the suite is meaningless without these files.
    assert path.is_file(), f"{name} is missing from {ROOT}"
    return path.read_text(encoding="utf-8")


def _code_blocks(markdown):
    return re.findall(r"^ *```[^\n]*\n(.*?)^ *```", markdown, re.MULTILINE | re.DOTALL)


def _prose(markdown):
    return re.sub(r"^ *```.*?^ *```", "", markdown, flags=re.MULTILINE | re.DOTALL)


def _commands(markdown):
    """Every command program.md shows: the lines of its code blocks and its inline code, comments cut off."""
    lines = [line.strip() for block in _code_blocks(markdown) for line in block.splitlines()]
    lines += re.findall(r"`([^`\n]+)`", _prose(markdown))
    return [line.split("   #")[0].split("    #")[0].strip() for line in lines
            if line and not line.startswith("#")]


def _loop_steps(program):
    """The experiment loop's numbered steps, in order."""
    loop = program[program.index("LOOP FOREVER"):]
    steps = re.findall(r"^(\d+)\. (.*?)(?=^\d+\. |^\s*$)", loop, re.MULTILINE | re.DOTALL)
    assert [int(n) for n, _ in steps] == list(range(1, len(steps) + 1)), "the steps are numbered 1, 2, ..."
    return [step for _, step in steps]

# -----------------------------------------------------------------------------
# The order of the work


def test_sections_come_in_the_order_of_the_work_and_stay_short():
    program = _read("program.md")
    headings = re.findall(r"^## (.+)$", program, re.MULTILINE)
    order = [next((k for k, h in enumerate(headings) if word in h.lower()), None)
             for word in ("setup", "rules", "output", "logging", "loop")]
    assert None not in order and order == sorted(order), headings
    assert len(program.splitlines()) <= 160, "program.md should stay short enough to read in two minutes"


def test_the_loop_steps_come_in_order():
    """Each step of the loop is found by the command it names: look, commit, read the result, read a crash,
    write the row, go back. The seed rerun that decides a status comes before the row is written."""
    steps = _loop_steps(_read("program.md"))
    order = []
    for command in ("git status", "git commit", 'grep "^val_bpb:', "tail -n 50 run.log", "--row",
                    "git reset --hard"):
        hits = [k for k, step in enumerate(steps) if command in step]
        assert hits, f"no step of the loop names {command!r}"
        order.append(hits[0])
    assert order == sorted(order) and len(set(order)) == len(order), order
    rerun = next(k for k, step in enumerate(steps) if "seed rerun" in step)
    assert rerun < order[4], "the confirming rerun decides the status: it comes before the row"

# -----------------------------------------------------------------------------
# What it names exists and works


def test_every_file_it_names_is_in_the_repository_or_made_by_a_run():
    """A file named in backticks is either in the repository or one the loop makes, which git ignores."""
    program = _read("program.md")
    named = set(re.findall(r"`([\w./-]+\.(?:py|md|toml|tsv|jsonl|log|pt|ipynb))`", program))
    assert {"prepare.py", "train.py", "audit.py", "results.tsv", "run.log"} <= named, named
    for name in sorted(named):
        ignored = subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT).returncode == 0
        assert (ROOT / name).is_file() != ignored, f"{name}: {'ignored' if ignored else 'missing'}"


def test_every_constant_it_names_is_set_in_the_scripts():
    """UPPER_CASE names in backticks, paths or edits (the constants the agent reads or edits, the cache's
    variable) are set in train.py or prepare.py, and the cache folders it describes are the ones prepare.py
    uses."""
    program = _read("program.md")
    sources = _read("train.py") + _read("prepare.py")
    names = set(re.findall(r"`\$?([A-Z][A-Z0-9_]{2,})`", program))
    names |= set(re.findall(r"<([A-Z][A-Z0-9_]{2,})>", program))  # in paths: data/<DATASET>/
    names |= set(re.findall(r"\b([A-Z][A-Z0-9_]{2,}) = ", program))  # edits: SEED = 43
    assert {"SEED", "DEVICE_BATCH_SIZE", "TIME_BUDGET", "DATASET", "VOCAB_SIZE"} <= names, names
    for name in sorted(names):
        assert re.search(rf"^{name} = |[\"']{name}[\"']", sources, re.MULTILINE), f"{name} is set nowhere"
    data, tokenizer = re.search(r"`(data/<DATASET>/)`.*?`(tokenizer/<DATASET>-<VOCAB_SIZE>/)`", program,
                                re.DOTALL).groups()
    fill = {"<DATASET>": prepare.DATASET, "<VOCAB_SIZE>": str(prepare.VOCAB_SIZE)}
    for template, folder in ((data, prepare.DATA_DIR), (tokenizer, prepare.TOKENIZER_DIR)):
        for key, value in fill.items():
            template = template.replace(key, value)
        assert folder == prepare.CACHE_DIR + "/" + template.rstrip("/"), (template, folder)


def test_every_uv_run_names_a_script_of_the_repository():
    scripts = {m for command in _commands(_read("program.md")) for m in re.findall(r"uv run (\S+)", command)}
    assert {"train.py", "prepare.py", "audit.py"} <= scripts, scripts
    for script in scripts:
        assert (ROOT / script).is_file(), script


def test_its_greps_read_what_train_py_prints():
    """Every grep of run.log it shows, run on a log that ends with its own summary block (which parses as the
    spec's, as train.py's output does in the end-to-end tests), prints a line; the result's grep prints the
    two fields logged in results.tsv."""
    program = _read("program.md")
    summary = next(b for b in _code_blocks(program) if b.startswith("---\nval_bpb:"))
    values = parse_summary(summary)
    log = "attention: PyTorch SDPA (a test's stand-in line)\nstep 00000 (0.0%) | loss: 9.000000 |\n" + summary
    greps = sorted({c for c in _commands(program) if c.startswith("grep ") and c.endswith("run.log")})
    assert len(greps) >= 2, greps
    for command in greps:
        out = subprocess.run(["bash", "-c", command.replace("run.log", "/dev/stdin")], input=log,
                             capture_output=True, text=True, timeout=30).stdout
        assert out, f"{command} prints nothing"
        if "val_bpb" in command:
            lines = [line for line in summary.splitlines() if line.startswith(("val_bpb:", "peak_vram_mb:"))]
            assert out.splitlines() == lines and values["val_bpb"] > 0, (command, out)


def test_its_audit_commands_parse(tmp_path):
    """Each `uv run audit.py ...` line it shows is accepted by audit.py's arguments (here no run record
    exists, so it answers one line of its own, never a usage error or a traceback)."""
    commands = [c for c in _commands(_read("program.md")) if c.startswith("uv run audit.py")]
    assert any("--row" in c for c in commands), commands
    (tmp_path / "results.tsv").write_text(audit.HEADER + "\n")
    (tmp_path / "audit.py").write_text(_read("audit.py"))
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "audit.py")
    git(tmp_path, "commit", "-qm", "baseline")
    env = dict(GIT_ENV, AUTORESEARCH_CACHE_DIR=str(tmp_path / "cache"))
    for command in commands:
        python = command.replace("uv run", f"{sys.executable}", 1)
        result = subprocess.run(["bash", "-c", python], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode not in (0, 2), (command, result.stderr)  # no record: refused, but parsed
        assert "usage:" not in result.stderr and "Traceback" not in result.stderr, (command, result.stderr)
        assert (tmp_path / "results.tsv").read_text() == audit.HEADER + "\n"

# -----------------------------------------------------------------------------
# Its examples follow its own format and rules


def test_tsv_header_and_example():
    program = _read("program.md")
    blocks = _code_blocks(program)
    header_blocks = [b for b in blocks if b.splitlines() and b.splitlines()[0] == audit.HEADER]
    assert header_blocks, "program.md needs a code block whose first line is audit.py's header"
    assert any(b.strip("\n") == audit.HEADER for b in header_blocks), "show the header alone, ready to copy"

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


def _example_rows(program):
    block = next(b for b in _code_blocks(program) if b.startswith(audit.HEADER + "\n") and b.count("\n") > 1)
    return [line.split("\t") for line in block.strip("\n").splitlines()[1:]]


def test_example_results_follow_the_noise_rule():
    """The example night follows the keep rule with the notebook's noise floor: `best` is the lowest kept
    score, a keep beats it by the floor or is confirmed by its seed rerun, a discard does not beat it."""
    program = _read("program.md")
    notebook = "\n".join("".join(cell["source"]) for cell in json.loads(_read("analysis.ipynb"))["cells"])
    floor = float(re.search(r"^NOISE_MIN = ([\d.]+)", notebook, re.MULTILINE).group(1))
    assert str(floor) in _prose(program), "program.md states the floor the notebook uses"
    rows = _example_rows(program)
    (_, base, _, status0, desc0), (_, rerun, _, status1, desc1) = rows[:2]
    assert (status0, desc0, status1, desc1) == ("keep", "baseline", "discard", "baseline (seed 43)")
    noise = max(abs(float(base) - float(rerun)), floor)
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

# -----------------------------------------------------------------------------
# Following it: the background run and the Setup


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
    """program.md's background command and wait loop, with a stand-in `uv`: the wait prints the run's exit
    code once it ends, and the code of a run past the limit is one program.md tells the agent what to do
    with."""
    program = _read("program.md")
    out, log = _start_and_wait(program, tmp_path, 'echo "val_bpb:          0.997900"\n', limit_s=600)
    assert out.strip() == "exit: 0" and "val_bpb:          0.997900" in log
    (tmp_path / "run.log").unlink()
    out, log = _start_and_wait(program, tmp_path, "sleep 30\n", limit_s=1)
    assert out.strip() == "exit: 124" and f"`{out.strip()}`" in _prose(program)


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
                runs.append(dict(commit=git(repo, "rev-parse", "--short", "HEAD").strip(),
                                 dirty=git(repo, "status", "--porcelain", "--untracked-files=no"),
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
    git(repo, "-c", "init.defaultBranch=main", "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "initial")
    main = git(repo, "rev-parse", "main").strip()

    # The human applies README's recipe for small computers without committing it
    expected = {name: (repo / name).read_text() for name in ("train.py", "prepare.py")}
    if local_edits:
        for name, constants in _readme_recipe().items():
            expected[name] = _apply_recipe(expected[name], constants)
            (repo / name).write_text(expected[name])
    (repo / "notes.txt").write_text("the human's untracked notes\n")
    (repo / "results.tsv").write_text(audit.HEADER + "\n")

    runs = _follow_setup(repo, _setup_lines(_read("program.md")))
    assert len(runs) == 2, "the setup runs the baseline twice"
    baseline, rerun = runs
    seed43 = expected["train.py"].replace("\nSEED = 42 ", "\nSEED = 43 ", 1)
    # The baseline ran committed code, and the commit it logs holds the recipe
    assert baseline["dirty"] == "", "the baseline ran uncommitted edits: its logged commit is not what ran"
    for name in expected:
        assert baseline[name] == expected[name], f"the baseline did not run the human's {name}"
        assert git(repo, "show", f"{baseline['commit']}:{name}") == expected[name], name
    # The rerun ran the same code but for the seed, from a commit of its own on top of the baseline's
    assert (rerun["train.py"], rerun["prepare.py"], rerun["dirty"]) == (seed43, expected["prepare.py"], "")
    assert git(repo, "rev-parse", "--short", f"{rerun['commit']}~1").strip() == baseline["commit"]
    assert git(repo, "show", f"{rerun['commit']}:train.py") == seed43
    # Afterwards: the branch tip is the baseline, SEED is back to 42, and nothing else was lost
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip() == "autoresearch/mar5"
    assert git(repo, "rev-parse", "--short", "HEAD").strip() == baseline["commit"]
    for name in expected:
        assert (repo / name).read_text() == expected[name], f"{name} lost the human's edits or kept SEED = 43"
        assert git(repo, "show", f"HEAD:{name}") == expected[name], name
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == ""
    assert (repo / "notes.txt").read_text() == "the human's untracked notes\n"
    assert (repo / "results.tsv").read_text() == audit.HEADER + "\n"
    assert git(repo, "rev-parse", "main").strip() == main, "main must not move"
    baseline_full = git(repo, "rev-parse", "HEAD").strip()
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
    git(repo, "-c", "init.defaultBranch=main", "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "baseline")
    base = git(repo, "rev-parse", "--short", "HEAD").strip()
    edited = _apply_recipe(_read("prepare.py"), _readme_recipe()["prepare.py"])  # left uncommitted
    (repo / "prepare.py").write_text(edited)

    (rerun,) = _follow_setup(repo, lines[start:end + 1])
    assert rerun["train.py"] == _read("train.py").replace("\nSEED = 42 ", "\nSEED = 43 ", 1)
    assert git(repo, "show", "--name-only", "--format=", rerun["commit"]).split() == ["train.py"], \
        "the rerun's commit must hold its SEED edit and nothing else"
    assert git(repo, "rev-parse", "--short", "HEAD").strip() == base
    assert (repo / "train.py").read_text() == _read("train.py"), "SEED must be back to 42"
    assert (repo / "prepare.py").read_text() == edited, "the reset threw away an uncommitted edit"
