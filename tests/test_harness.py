"""The harness (prepare.py's checks that train.py calls): it takes plain numbers, so that no edit of
train.py's model makes frozen code raise; the pre-flight estimate of the whole run; what "n/a" MFU reads
as. Offline, on CPU: runs use two generated shards, a byte-level tokenizer written directly and copies of
the scripts shrunk to a one-second run."""

import re
import shutil
import types

import pytest
import torch
from common import (ROOT, cpu_env, parse_summary, run_script, set_constant, shrunk_scripts, tail,
                    write_byte_tokenizer, write_shards)

import prepare

TINY_TRAIN = dict(DEPTH=1, ASPECT_RATIO=32, HEAD_DIM=32, DEVICE_BATCH_SIZE=4, TOTAL_BATCH_SIZE=256)
TINY_PREPARE = dict(MAX_SEQ_LEN=64, TIME_BUDGET=1, EVAL_TOKENS=4 * 64)
DEFAULT_FLOPS = 239_078_400  # the default model's training FLOPs per token (test_train.py counts them)


def tiny_setup(tmp_path, edits=()):
    """A cache (two shards, a byte tokenizer) and shrunk copies of the scripts in tmp_path/work; `edits`:
    (old, new) pairs, each replaced everywhere in train.py as a whole word."""
    cache, work = tmp_path / "cache", tmp_path / "work"
    write_byte_tokenizer(cache / "tokenizer" / f"{prepare.DATASET}-{prepare.VOCAB_SIZE}", prepare.VOCAB_SIZE,
                         prepare.SPECIAL_TOKENS, prepare.SPLIT_PATTERN)
    write_shards(cache / "data" / prepare.DATASET, [prepare.shard_filename(i) for i in (0, 1822)], n_docs=300,
                 seed=5)
    shrunk_scripts(work, prepare=TINY_PREPARE, train=TINY_TRAIN)
    shutil.copy(ROOT / "audit.py", work / "audit.py")
    source = (work / "train.py").read_text()
    for old, new in edits:
        source, n = re.subn(rf"\b{old}\b", new, source)
        assert n > 0, old
    (work / "train.py").write_text(source)
    return work, cache


def run(work, cache, script="train.py"):
    return run_script(work, script, env=cpu_env(cache), timeout=300)

# -----------------------------------------------------------------------------
# Edits of train.py: each runs to a val_bpb, or stops in one line, never a traceback


@pytest.mark.parametrize("edits", [
    [("n_embd", "d_model"), ("n_layer", "num_blocks"), ("sequence_len", "context")],  # config fields renamed
    [("wte", "token_embedding")],  # the token embedding renamed
], ids=["config-fields-renamed", "embedding-renamed"])
def test_a_renamed_model_trains_and_evaluates(tmp_path, edits):
    work, cache = tiny_setup(tmp_path, edits)
    result = run(work, cache)
    assert result.returncode == 0 and "Traceback" not in result.stderr, tail(result)
    values = parse_summary(result.stdout)
    assert 0 < values["val_bpb"] < 20 and values["num_steps"] > 11
    # no bf16 peak on a CPU: the progress lines say n/a, the summary's fixed format 0.00, the device line both
    assert "| mfu: n/a |" in result.stdout and values["mfu_percent"] == 0.0
    device = next(line for line in result.stdout.splitlines() if line.startswith("device: cpu"))
    assert device.endswith("MFU reads n/a in the progress lines and 0.00 in the summary")


def test_a_train_py_written_for_the_original_runs_without_the_harness(tmp_path):
    work, cache = tiny_setup(tmp_path)
    shutil.copy(ROOT / "tests" / "fixtures" / "original_style_train.py", work / "train.py")
    result = run(work, cache)
    assert result.returncode == 0 and "Traceback" not in result.stderr, tail(result)
    assert 0 < float(result.stdout.split("val_bpb:")[1].split()[0]) < 20


def test_depth_zero_stops_in_one_line(tmp_path):
    work, cache = tiny_setup(tmp_path)
    (work / "train.py").write_text(set_constant((work / "train.py").read_text(), "DEPTH", 0))
    result = run(work, cache)
    assert result.returncode == 1
    assert result.stderr.strip() == "DEPTH = 0 in train.py: DEPTH must be at least 1 (a layer)."


def test_a_number_left_out_skips_its_check_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(prepare, "_default_device", lambda: torch.device("cpu"))
    prepare.preflight(types.SimpleNamespace(get_vocab_size=lambda: 8192), 4, 4 * 2048, num_params=1000,
                      flops_per_token="6N", depth=None, width=64, vocab_size=8192)
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["pre-flight: no memory check (depth not given); no time check (flops_per_token not given)"]

# -----------------------------------------------------------------------------
# The pre-flight estimate covers the whole run: start-up, warm-up, TIME_BUDGET and the evaluation


def preflight_at(monkeypatch, device_type, step_seconds):
    """preflight of the default model's numbers on `device_type`, with a FLOP rate that makes a step take
    step_seconds; no memory check (memory unknown)."""
    monkeypatch.setattr(prepare, "_default_device", lambda: torch.device(device_type))
    monkeypatch.setattr(prepare, "_available_memory", lambda device_type: None)
    monkeypatch.setattr(prepare, "_flop_rate", lambda device_type: 2**19 * DEFAULT_FLOPS / step_seconds)
    prepare.preflight(types.SimpleNamespace(get_vocab_size=lambda: 8192), 128, 2**19, num_params=50_332_176,
                      flops_per_token=DEFAULT_FLOPS, depth=8, width=512, vocab_size=8192)


def test_the_whole_run_is_estimated_part_by_part():
    # 12 s steps, batches of 128 x 2048: 11 warm-up steps, the budget plus the step that crosses it, and the
    # evaluation's 80 batches (EVAL_TOKENS) of forwards at a third of a step's FLOPs a token
    seconds = prepare._run_seconds("cpu", DEFAULT_FLOPS, 128, 2**19, 2**19 * DEFAULT_FLOPS / 12)
    assert seconds == pytest.approx({"start-up": 20, "warm-up": 132, "training": 312, "evaluation": 160})


def test_a_run_over_600_seconds_only_with_the_budget_and_start_up_is_refused_on_a_cpu(monkeypatch):
    # warm-up 132 s + evaluation 160 s is well inside 600 s; with start-up 20 s and training 312 s it is 624 s
    with pytest.raises(SystemExit) as stop:
        preflight_at(monkeypatch, "cpu", 12)
    first, advice = str(stop.value.code).splitlines()
    assert first == ("On this cpu the whole run would take about 10 min (start-up 20 s, warm-up 132 s, "
                     "training 312 s, evaluation 160 s), over the 600 s program.md allows it: lower DEPTH in "
                     "train.py (or, as the human, EVAL_TOKENS in prepare.py: the evaluation):")
    assert "DEVICE_BATCH_SIZE" in advice and "TIME_BUDGET" in advice


def test_the_same_run_on_a_gpu_is_a_warning_and_a_fitting_one_passes(monkeypatch, capsys):
    preflight_at(monkeypatch, "cuda", 12)  # start-up 60 s on CUDA (a cold torch.compile): 664 s
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == ("warning: On this cuda the whole run would take about 11 min (start-up 60 s, "
                         "warm-up 132 s, training 312 s, evaluation 160 s), over the 600 s program.md allows "
                         "it: lower DEPTH in train.py (or, as the human, EVAL_TOKENS in prepare.py: the "
                         "evaluation); program.md's `timeout 600` would kill it.")
    preflight_at(monkeypatch, "cpu", 6)  # 20 + 66 + 306 + 80 = 472 s: passes, and says so
    assert capsys.readouterr().out.strip().splitlines() == [
        "pre-flight: the whole run should take about 7.9 min (start-up 20 s, warm-up 66 s, training 306 s, "
        "evaluation 80 s)"]
