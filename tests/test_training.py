"""Does training do its job: a shrunk run learns (its loss falls and it scores far better than the same model with
every learning rate at 0), a diverged loss stops the run at once, and the learning-rate schedule's warm-up and final
fraction follow the spec.

train.py is driven as a subprocess through its constants and its printed output (as tests/test_train.py's
end-to-end test does: CPU, generated shards served on 127.0.0.1, a 512-token tokenizer); only the schedule
functions are called directly. Faults are injected on a line of the training loop itself, asserted present, so
that a refactor that moves it fails here loudly instead of testing nothing.
"""

import os
import re
import subprocess
import sys

import pytest
from common import ROOT, parse_summary, shrunk_copy

import train  # importing must not start training

TINY_MODEL = dict(DEPTH=2, ASPECT_RATIO=32, HEAD_DIM=32, DEVICE_BATCH_SIZE=8, TOTAL_BATCH_SIZE=2 * 8 * 128)
NO_LEARNING = dict(EMBEDDING_LR=0, UNEMBEDDING_LR=0, MATRIX_LR=0, SCALAR_LR=0)
PROGRESS = re.compile(r"^step (\d{5}) \([\d.]+%\) \| loss: (\d+\.\d+) \|", re.MULTILINE)
LOSS_ANCHOR = "train_loss_f = train_loss.item()"  # the loop's one host read of the step's loss


def prepared(tmp_path, shard_server):
    """A work directory with a shrunk prepare.py, run once: 2 generated training shards, the validation shard and
    a 512-token tokenizer in the cache. Returns it and the environment for the train.py runs."""
    work = tmp_path / "work"
    work.mkdir()
    shrunk_copy(ROOT / "prepare.py", work / "prepare.py", MAX_SEQ_LEN=128, TIME_BUDGET=2, EVAL_TOKENS=64 * 128,
                VOCAB_SIZE=512)
    # One thread: this tiny model runs faster than with two threads contending on a busy 2-core machine
    env = dict(os.environ, AUTORESEARCH_CACHE_DIR=str(tmp_path / "cache"), HF_ENDPOINT=shard_server,
               CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    prep = subprocess.run([sys.executable, "prepare.py", "--num-shards", "2", "--download-workers", "2"], cwd=work,
                          env=env, capture_output=True, text=True, timeout=120)
    assert prep.returncode == 0, prep.stdout[-3000:] + prep.stderr[-3000:]
    return work, env


def run_train(work, env, name, replace=None, **constants):
    """A shrunk copy of train.py with these constants (and one text replacement, whose anchor must exist), run with
    stdout a pipe, as `> run.log` would be: progress lines for steps 0..10, then throttled, then the last step."""
    shrunk_copy(ROOT / "train.py", work / name, **TINY_MODEL, **constants)
    if replace:
        old, new = replace
        source = (work / name).read_text()
        assert source.count(old) == 1, f"anchor {old!r} not found exactly once in train.py's training loop"
        (work / name).write_text(source.replace(old, new))
    return subprocess.run([sys.executable, name], cwd=work, env=env, capture_output=True, text=True, timeout=120)


def losses_by_step(stdout):
    return {int(step): float(loss) for step, loss in PROGRESS.findall(stdout)}

# -----------------------------------------------------------------------------
# Training learns


def test_training_learns_loss_falls_and_beats_untrained_model(tmp_path, shard_server):
    """The end-to-end tests accept any 0 < val_bpb < 20, which a run whose learning rates are all 0 also gives.
    Here the same run must learn: its smoothed loss falls far below step 0's, and its val_bpb is far below that
    of the same model, same data, same seed, with every learning rate zeroed (so never updated: untrained)."""
    work, env = prepared(tmp_path, shard_server)
    trained = run_train(work, env, "train.py")
    untrained = run_train(work, env, "train_untrained.py", **NO_LEARNING)
    for result in (trained, untrained):
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trained_bpb, untrained_bpb = (parse_summary(r.stdout)["val_bpb"] for r in (trained, untrained))
    steps = parse_summary(trained.stdout)["num_steps"]
    losses, flat = losses_by_step(trained.stdout), losses_by_step(untrained.stdout)
    assert min(losses) == 0 and max(losses) == steps - 1, sorted(losses)  # step 0 and the last step are printed

    # Measured (this 2-core CPU, TIME_BUDGET 2 s, seeds 42-45, budgets 1-8 s): step 0's loss 6.2386 (ln 512: the
    # near-zero lm_head starts uniform), the last step's 3.73-3.96 after 29-143 steps; even a machine so slow that
    # it runs only the 12 steps that always run ends at 4.64. Zeroed learning rates: 6.2383-6.2385 (no update;
    # the batches differ). Margin 0.75 nats: half the slowest case's fall, 2000 times the untrained drift.
    assert losses[steps - 1] < losses[0] - 0.75, (losses[0], losses[steps - 1])
    assert abs(flat[max(flat)] - flat[0]) < 0.05, flat  # the baseline really did not learn

    # Measured: trained val_bpb 1.366-1.414 (29-143 steps, seeds 42-45), 1.475 at the 12-step minimum; untrained
    # 2.3137-2.3139 (all budgets and seeds). Margin 0.4 bpb: under half the smallest measured gap (0.84).
    assert trained_bpb < untrained_bpb - 0.4, (trained_bpb, untrained_bpb)

# -----------------------------------------------------------------------------
# Fast fail on a diverged loss


@pytest.mark.parametrize("bad_loss, printed", [('float("nan")', "nan"), ("1000.0", "1000.0")])
def test_diverged_training_loss_fails_fast(tmp_path, shard_server, bad_loss, printed):
    """A training loss that is NaN or above 100 prints FAIL and exits 1 at that step: no evaluation, no summary
    block for the agent to log as a result. The loop's loss reads `bad_loss` from step 3 on."""
    work, env = prepared(tmp_path, shard_server)
    result = run_train(work, env, "train_diverges.py",
                       replace=(LOSS_ANCHOR, f"{LOSS_ANCHOR} if step < 3 else {bad_loss}"))
    out = result.stdout
    assert result.returncode == 1, out[-3000:] + result.stderr[-3000:]
    assert sorted(losses_by_step(out)) == [0, 1, 2], out[-3000:]  # it trained normally until the bad loss
    assert re.search(rf"^FAIL: training loss is {re.escape(printed)} at step 3$", out, re.MULTILINE), out[-3000:]
    assert "---" not in out.splitlines() and "val_bpb:" not in out, out[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]

# -----------------------------------------------------------------------------
# Learning-rate schedule: warm-up, flat, warm-down to FINAL_LR_FRAC


def test_lr_schedule_warmup_and_final_fraction(monkeypatch):
    """SPEC: linear warm-up over WARMUP_RATIO, flat, then linear down over the last WARMDOWN_RATIO to FINAL_LR_FRAC
    (the defaults, 0 warm-up and 0 final fraction, leave both of these branches untested elsewhere)."""
    monkeypatch.setattr(train, "WARMUP_RATIO", 0.1)
    monkeypatch.setattr(train, "WARMDOWN_RATIO", 0.5)
    monkeypatch.setattr(train, "FINAL_LR_FRAC", 0.1)
    expected = {0.0: 0.0, 0.02: 0.2, 0.05: 0.5, 0.1: 1.0, 0.3: 1.0, 0.5: 1.0, 0.6: 0.82, 0.75: 0.55, 0.9: 0.28,
                1.0: 0.1}
    for progress, multiplier in expected.items():
        assert train.get_lr_multiplier(progress) == pytest.approx(multiplier, abs=1e-12), progress

    # No warm-down at all: warm-up, then flat to the end; FINAL_LR_FRAC is never reached
    monkeypatch.setattr(train, "WARMUP_RATIO", 0.25)
    monkeypatch.setattr(train, "WARMDOWN_RATIO", 0.0)
    for progress, multiplier in {0.0: 0.0, 0.125: 0.5, 0.25: 1.0, 0.99: 1.0}.items():
        assert train.get_lr_multiplier(progress) == pytest.approx(multiplier, abs=1e-12), progress
