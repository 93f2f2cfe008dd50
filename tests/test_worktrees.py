"""Several agents on one machine (README, "Several GPUs: one agent each"), on the CPU.

Worktrees are made by the README's own command in a throwaway git repository holding shrunk copies of
prepare.py and train.py; two short training runs then go at once, one per worktree, reading one shared cache.
Uses the shard server fixture of conftest.py and the helpers in common.py.
"""

import re
import shutil
import subprocess
import sys

import pytest
import torch
from common import GIT_ENV, ROOT, cpu_env, git, parse_summary, run_script, shrunk_scripts, tail


def readme_worktree_loop():
    section = (ROOT / "README.md").read_text().split("## Several GPUs")[1].split("\n## ")[0]
    match = re.search(r"^for k in .*$", section, re.MULTILINE)
    assert match, "README's 'Several GPUs' section has no `for k in ...` line making the worktrees"
    return match.group(0)


def snapshot(directory):
    return sorted((str(p.relative_to(directory)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in directory.rglob("*"))


@pytest.mark.slow
def test_two_runs_at_once_in_two_worktrees(tmp_path, shard_server):
    repo, cache = tmp_path / "repo", tmp_path / "cache"
    shrunk_scripts(repo, dict(MAX_SEQ_LEN=128, TIME_BUDGET=1, EVAL_TOKENS=4 * 8 * 128, VOCAB_SIZE=512),
                   dict(DEPTH=1, ASPECT_RATIO=32, HEAD_DIM=32, DEVICE_BATCH_SIZE=8, TOTAL_BATCH_SIZE=8 * 128))
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    git(repo, "-c", "init.defaultBranch=main", "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "baseline")

    subprocess.run(["bash", "-c", f"n=2 tag=mar5\n{readme_worktree_loop()}"], cwd=repo, env=GIT_ENV,
                   check=True, capture_output=True, timeout=60)
    trees = [repo / "worktrees" / "gpu0", repo / "worktrees" / "gpu1"]
    for k, tree in enumerate(trees):
        assert git(tree, "rev-parse", "--abbrev-ref", "HEAD").strip() == f"autoresearch/mar5-gpu{k}"
    assert git(repo, "status", "--porcelain") == ""  # the main checkout does not see the worktrees

    # The agent on gpu1 commits an experiment: two layers instead of one, so each run's output names its tree
    train1 = trees[1] / "train.py"
    train1.write_text(train1.read_text().replace("\nDEPTH = 1", "\nDEPTH = 2", 1))
    git(trees[1], "commit", "-qam", "depth 2")

    # One torch thread per run (cpu_env): two runs on a small test machine would otherwise spin against each
    # other
    # torch.compile's cache apart: the shared data cache must be only read
    env = cpu_env(cache, HF_ENDPOINT=shard_server, TORCHINDUCTOR_CACHE_DIR=tmp_path / "compile")
    prep = run_script(repo, "prepare.py", "--num-shards", "1", env=env)
    assert prep.returncode == 0, tail(prep)
    cache_before = snapshot(cache)

    # Both at once, each as program.md has the agent run it: `uv run train.py > run.log 2>&1` in its worktree
    runs = []
    try:
        for tree in trees:
            with open(tree / "run.log", "w") as log:
                runs.append(subprocess.Popen([sys.executable, "train.py"], cwd=tree, env=env, stdout=log,
                                             stderr=subprocess.STDOUT))
        assert runs[0].poll() is None  # the first was still running when the second started
        codes = [run.wait(timeout=180) for run in runs]
    finally:
        for run in runs:
            run.kill()
    logs = [(tree / "run.log").read_text() for tree in trees]
    assert codes == [0, 0], "\n=====\n".join(log[-3000:] for log in logs)

    for depth, tree, log in zip((1, 2), trees, logs):
        assert parse_summary(log)["depth"] == depth
        assert "saved weights: checkpoints/model.pt" in log
        state = torch.load(tree / "checkpoints" / "model.pt", map_location="cpu")
        assert state["resid_lambdas"].shape == (depth,)  # its own weights, not the other run's
        assert git(tree, "status", "--porcelain") == ""  # run.log and checkpoints/ are ignored there too
    assert not (repo / "checkpoints").exists() and not (repo / "run.log").exists()
    assert snapshot(cache) == cache_before  # the shared cache was only read
