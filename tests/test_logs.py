"""What train.py prints, as an agent reads it from run.log and as a person sees it on a terminal.

Runs a shrunk copy of train.py on the CPU (as tests/test_train.py does) under a fake clock that reads 2.5 s
later at every reading, so each step "takes" 2.5 s: the full 300 s budget (120 timed steps) passes in a few
real seconds, with the real loop, the real throttling of the progress lines and the real summary.
"""

import importlib.util
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest
from common import TINY_TRAIN, cpu_env, parse_summary, shrunk_copy, shrunk_scripts, write_shards

import prepare

TICK = 2.5  # fake seconds per clock reading: a step reads the clock twice, so 5 s of wall time per step
FAST_CLOCK = f"""import itertools, runpy, sys, time
ticks, start = itertools.count(), time.time()
time.time = lambda: start + {TICK} * next(ticks)
sys.argv = sys.argv[1:]  # train.py sees only its own name: it takes no arguments
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    """A directory with tiny copies of prepare.py and train.py, a cache with 3 shards and a 512-token
    tokenizer."""
    root = tmp_path_factory.mktemp("logs")
    data = root / "cache" / "data" / "fineweb-edu"
    write_shards(data, [prepare.shard_filename(i) for i in (0, 1, prepare.DATASETS["fineweb-edu"]["val"])],
                 n_docs=600, seed=7)
    # TIME_BUDGET stays 300 s: the fast clock makes it short
    shrunk_scripts(root, dict(MAX_SEQ_LEN=128, EVAL_TOKENS=4 * 2 * 128, VOCAB_SIZE=512),
                   dict(TINY_TRAIN, DEPTH=1, DEVICE_BATCH_SIZE=2, TOTAL_BATCH_SIZE=2 * 2 * 128))
    spec = importlib.util.spec_from_file_location("prepare_512", root / "prepare.py")  # the copy's VOCAB_SIZE
    shrunk_prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shrunk_prepare)
    shrunk_prepare.train_tokenizer(data_dir=str(data),
                                   tokenizer_dir=str(root / "cache" / "tokenizer" / "fineweb-edu-512"))
    (root / "fast_clock.py").write_text(FAST_CLOCK)
    return root


def env_for(work):
    return cpu_env(work / "cache")


@pytest.fixture(scope="session")
def run_log(work):
    """`uv run train.py > run.log 2>&1`, as program.md has the agent run it."""
    with open(work / "run.log", "w") as log:
        proc = subprocess.run([sys.executable, "fast_clock.py", "train.py"], cwd=work, env=env_for(work),
                              stdout=log, stderr=subprocess.STDOUT, timeout=300)
    text = (work / "run.log").read_bytes().decode()  # not read_text(): it would turn "\r" into "\n"
    assert proc.returncode == 0, text[-3000:]
    return text


def step0_loss(text):
    return re.search(r"step 00000 \(0\.0%\) \| loss: (\d+\.\d+)", text).group(1)


@pytest.mark.contract
def test_run_log_has_a_few_plain_progress_lines(run_log):
    assert "\r" not in run_log
    lines = run_log.split("\n")  # as `tail` counts lines (splitlines() would also split at "\r")
    steps = [int(m.group(1)) for m in (re.match(r"step (\d{5}) \(", line) for line in lines) if m]
    num_steps = parse_summary(run_log)["num_steps"]
    assert num_steps == 11 + 300 / TICK
    # Steps 0..10, then one line per 10 s of wall time (every other step here), and the last step
    assert steps[:11] == list(range(11)) and steps[-1] == num_steps - 1
    assert steps[11:] == sorted({*range(12, num_steps, 2), num_steps - 1}), steps
    tail = "\n".join(lines[-51:]).encode()  # the log ends with "\n"
    assert len(tail) < 8000, len(tail)  # a few KB in the agent's context, not one 100 KB line
    # The agent's grep still finds the summary
    assert re.findall(r"^(val_bpb|peak_vram_mb):", run_log, re.MULTILINE) == ["val_bpb", "peak_vram_mb"]


def test_startup_lines_of_the_original(run_log):
    for line in ["Vocab size: 512", "Scaling AdamW LRs by 1/sqrt(32/768) = 4.898979", "Time budget: 300s",
                 "Gradient accumulation steps: 2"]:
        assert re.search(rf"^{re.escape(line)}$", run_log, re.MULTILINE), line
    for ours in ["device: cpu ", "model config: "]:  # our own lines stay
        assert re.search(rf"^{ours}", run_log, re.MULTILINE), ours


def test_cpu_peak_vram_is_the_peak_resident_memory(run_log):
    # Python with torch loaded holds well over 100 MB; a crash row logs 0.0, so a real run must not
    peak = parse_summary(run_log)["peak_vram_mb"]
    assert 100 < peak < 20000, peak


def test_terminal_keeps_one_line_rewritten_in_place(work, run_log):
    shrunk_copy(work / "train.py", work / "train_seed43.py", SEED=43)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "fast_clock.py", "train_seed43.py"], cwd=work, env=env_for(work),
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1)[0]:
                continue
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)
    out = b"".join(chunks).decode()
    assert proc.returncode == 0, out[-3000:]
    assert re.search(r"remaining: \d+s {4}\rstep 00001 \(", out), out[:3000]
    assert "\nstep 0000" not in out.replace("\r\n", "\n")
    assert "\nval_bpb:" in out.replace("\r\n", "\n")
    # SEED is what seeds the weights: another seed, another first loss on the same first batch
    assert step0_loss(out) != step0_loss(run_log)
