"""Run records and the audit (prepare.py --row, --audit, --confirm), on a night of tiny CPU runs in a scratch git
repository: an honest night passes; each way of reporting a number that was not earned is caught, naming its
commit. The baseline trains with every learning rate at 0, so that its score does not depend on how many steps
the machine managed (the weights never move): the confirming reruns come out the same on any machine."""

import json
import os
import random
import re
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from common import GIT_ENV, ROOT, make_document, parse_summary, set_constant, write_byte_tokenizer

import prepare

pytestmark = pytest.mark.slow  # the night's runs take about 2 minutes

ZERO_LR = dict(EMBEDDING_LR=0, UNEMBEDDING_LR=0, MATRIX_LR=0, SCALAR_LR=0)


class Night:
    def __init__(self, repo, cache):
        self.repo, self.cache = repo, cache
        self.env = dict(GIT_ENV, AUTORESEARCH_CACHE_DIR=str(cache), CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1",
                        PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        self.commits = {}

    def git(self, *args):
        return subprocess.run(["git", *args], cwd=self.repo, env=GIT_ENV, capture_output=True, text=True,
                              check=True, timeout=60).stdout.strip()

    def edit(self, name, message, **constants):
        path = self.repo / name
        text = path.read_text()
        for key, value in constants.items():
            text = set_constant(text, key, value)
        path.write_text(text)
        self.git("commit", "-qam", message)
        self.commits[message] = self.git("rev-parse", "--short", "HEAD")
        return self.commits[message]

    def replace(self, name, message, old, new):
        path = self.repo / name
        assert old in path.read_text(), old
        path.write_text(path.read_text().replace(old, new))
        self.git("commit", "-qam", message)
        self.commits[message] = self.git("rev-parse", "--short", "HEAD")
        return self.commits[message]

    def run(self, *args, script="train.py", check=True):
        result = subprocess.run([sys.executable, script, *args], cwd=self.repo, env=self.env, capture_output=True,
                                text=True, timeout=300)
        assert not check or result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result

    def row(self, status, description, commit=None):
        return self.run("--row", status, description, *(["--commit", commit] if commit else []), script="prepare.py")

    def audit(self, results="results.tsv"):
        return self.run("--audit", results, script="prepare.py", check=False)


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    root = tmp_path_factory.mktemp("night")
    repo, cache = root / "repo", root / "cache"
    repo.mkdir()
    write_byte_tokenizer(cache / "tokenizer" / f"{prepare.DATASET}-{prepare.VOCAB_SIZE}", prepare.VOCAB_SIZE,
                         prepare.SPECIAL_TOKENS, prepare.SPLIT_PATTERN)
    (cache / "data" / "fineweb-edu").mkdir(parents=True)
    rng = random.Random(11)
    for index in (0, 1822):
        pq.write_table(pa.table({"text": [make_document(rng) for _ in range(300)]}),
                       cache / "data" / "fineweb-edu" / prepare.shard_filename(index))
    text = (ROOT / "prepare.py").read_text()
    for key, value in dict(MAX_SEQ_LEN=64, TIME_BUDGET=2, EVAL_TOKENS=4 * 64 * 4).items():
        text = set_constant(text, key, value)
    (repo / "prepare.py").write_text(text)
    text = (ROOT / "train.py").read_text()
    for key, value in dict(DEPTH=1, ASPECT_RATIO=32, HEAD_DIM=32, DEVICE_BATCH_SIZE=4, TOTAL_BATCH_SIZE=256,
                           **ZERO_LR).items():
        text = set_constant(text, key, value)
    (repo / "train.py").write_text(text)
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    n = Night(repo, cache)
    n.git("-c", "init.defaultBranch=main", "init", "-q")
    n.git("add", "-A")
    n.git("commit", "-qm", "baseline")
    n.commits["baseline"] = n.git("rev-parse", "--short", "HEAD")
    (repo / "results.tsv").write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n")

    # The honest night, as program.md has the agent run it: baseline, its seed rerun, one kept change
    n.baseline_out = n.run().stdout
    n.row("keep", "baseline")
    n.edit("train.py", "baseline (seed 43)", SEED=43)
    n.run()
    n.row("discard", "baseline (seed 43)")
    n.git("reset", "-q", "--keep", "HEAD~1")
    n.edit("train.py", "learning rates on", EMBEDDING_LR=0.6, UNEMBEDDING_LR=0.004, MATRIX_LR=0.04, SCALAR_LR=0.5)
    n.run()
    n.row("keep", "learning rates on")
    n.honest = (repo / "results.tsv").read_text()
    kept = n.commits["learning rates on"]

    # Each route to a number that was not earned: a commit, a run, a row (typed from the summary by hand
    # where the route needs it), then back to the kept commit
    def cheat(name, edit, by_hand=False):
        edit()
        out = n.run().stdout
        if by_hand:
            summary = parse_summary(out)
            with open(repo / f"results_{name}.tsv", "w") as f:
                f.write(n.honest + f"{n.commits[name]}\t{summary['val_bpb']:.6f}\t0.1\tkeep\t{name}\n")
        else:
            shutil.copy(repo / "results.tsv", repo / "r.tsv")
            n.row("keep", name)
            os.replace(repo / "results.tsv", repo / f"results_{name}.tsv")
            os.replace(repo / "r.tsv", repo / "results.tsv")
        n.git("reset", "-q", "--hard", kept)

    evaluation = "        val_bpb = evaluate_bpb(compiled_losses if use_cuda else model, tokenizer, DEVICE_BATCH_SIZE)"
    cheat("fake summary", lambda: n.replace("train.py", "fake summary", evaluation, "        val_bpb = 0.5"), True)
    cheat("wrapped evaluation", lambda: n.replace("train.py", "wrapped evaluation", evaluation, evaluation + " - 0.3"),
          True)
    cheat("EVAL_TOKENS", lambda: n.edit("prepare.py", "EVAL_TOKENS", EVAL_TOKENS=2 * 64 * 4))
    cheat("slow clock", lambda: n.replace("train.py", "slow clock", "def main():\n", (
        "_real_time = time.time\n_t0 = _real_time()\n"
        "time.time = lambda: _t0 + (_real_time() - _t0) / 10  # training runs ten times longer\n\ndef main():\n")))
    cheat("validation split", lambda: n.replace("train.py", "validation split", 'MAX_SEQ_LEN, "train")',
                                                'MAX_SEQ_LEN, "val")'))
    return n


def audit_of(night, tmp_path, results, edit=None):
    """The audit of one results file, in a copy of the night's repository (so edits stay in the copy)."""
    copy = tmp_path / "repo"
    shutil.copytree(night.repo, copy)
    if edit:
        edit(copy)
    return subprocess.run([sys.executable, "prepare.py", "--audit", results], cwd=copy, env=night.env,
                          capture_output=True, text=True, timeout=120)


def test_an_honest_night_passes_and_its_rows_come_from_the_records(night, tmp_path):
    rows = [line.split("\t") for line in night.honest.splitlines()[1:]]
    assert [(r[0], r[3], r[4]) for r in rows] == [(night.commits["baseline"], "keep", "baseline"),
                                                  (night.commits["baseline (seed 43)"], "discard", "baseline (seed 43)"),
                                                  (night.commits["learning rates on"], "keep", "learning rates on")]
    records = [json.loads(line) for line in (night.repo / "ledger.jsonl").read_text().splitlines()]
    assert [r["commit"] for r in records[:3]] == [r[0] for r in rows]
    assert [r[1] for r in rows] == [f"{r['val_bpb']:.6f}" for r in records[:3]]
    assert float(rows[2][1]) < float(rows[0][1]) - 0.3  # it learned: the zero-learning-rate baseline cannot
    result = audit_of(night, tmp_path, "results.tsv")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "audit: all 3 rows are backed by run records"
    assert "no hub digest recorded at download" in result.stdout  # the test shards came without one


def test_the_honest_path_prints_what_it_printed_before(night):
    out = night.baseline_out
    assert parse_summary(out)["val_bpb"] > 0 and not re.search(r"ledger|record", out, re.IGNORECASE)


@pytest.mark.parametrize("route, cause", [
    ("fake summary", "val_bpb 0.500000 has no record of an evaluation: a summary no evaluation wrote, or a row by hand"),
    ("wrapped evaluation", r"val_bpb \d\.\d{6} has no record of an evaluation \(recorded: \d\.\d{6}\): a number typed"),
    ("EVAL_TOKENS", "it ran with a prepare.py other than the baseline's"),
    ("EVAL_TOKENS", r"it evaluated 512 tokens \(EVAL_TOKENS 512\), the baseline 1,024"),
    ("slow clock", r"its training batches took \d+ s, far past TIME_BUDGET = 2 s"),
    ("validation split", "its training loader served no batches"),
    ("validation split", "it read validation batches outside the evaluation"),
])
def test_each_unearned_number_is_caught_with_its_commit(night, tmp_path, route, cause):
    result = audit_of(night, tmp_path, f"results_{route}.tsv")
    assert result.returncode == 1, result.stdout + result.stderr
    commit = night.commits[route]
    assert any(re.fullmatch(rf"{commit}: {cause}.*", line) for line in result.stdout.splitlines()), result.stdout
    assert not any(line.startswith(night.commits["learning rates on"]) for line in result.stdout.splitlines())
    assert re.fullmatch(r"audit: \d+ finding\(s\) in 4 rows", result.stdout.splitlines()[-1])


def test_a_row_edited_by_hand_is_caught(night, tmp_path):
    kept = night.commits["learning rates on"]

    def edit(repo):
        text = (repo / "results.tsv").read_text()
        row = next(line for line in text.splitlines() if line.startswith(kept))
        (repo / "results.tsv").write_text(text.replace(row, row.replace(row.split("\t")[1], "0.123456")))
    result = audit_of(night, tmp_path, "results.tsv", edit)
    assert result.returncode == 1
    assert f"{kept}: val_bpb 0.123456 has no record of an evaluation (recorded: " in result.stdout


@pytest.mark.parametrize("how", ["edited", "deleted"])
def test_an_edited_or_deleted_record_breaks_the_chain(night, tmp_path, how):
    def edit(repo):
        lines = (repo / "ledger.jsonl").read_text().splitlines(keepends=True)
        if how == "edited":
            record = json.loads(lines[1])
            record["val_bpb"] -= 0.01
            lines[1] = json.dumps(record) + "\n"
        else:
            del lines[1]
        (repo / "ledger.jsonl").write_text("".join(lines))
    result = audit_of(night, tmp_path, "results.tsv", edit)
    assert result.returncode == 1
    assert re.search(r"^ledger record 3 \(\w+\): the chain breaks here" if how == "edited" else
                     r"^ledger record 2 \(\w+\): the chain breaks here", result.stdout, re.MULTILINE), result.stdout


def test_confirm_reruns_with_the_other_seed_and_says_whether_the_gain_holds(night, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(night.repo, copy)
    kept = night.commits["learning rates on"]
    result = subprocess.run([sys.executable, "prepare.py", "--audit", "--confirm", kept], cwd=copy, env=night.env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    line = result.stdout.splitlines()[-1]
    assert re.fullmatch(rf"{kept}: \d+\.\d{{6}} against the baseline.s \d+\.\d{{6}} with the other seed: gain \+\d+\.\d{{6}}, "
                        r"noise floor \d\.\d{6}: the gain holds", line), line
    assert "git worktree" not in result.stderr and subprocess.run(
        ["git", "worktree", "list"], cwd=copy, capture_output=True, text=True).stdout.count("\n") == 1
