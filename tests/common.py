"""Helpers shared by the test modules: the repository's root, the environment and the runner of a script on
the CPU, git, generated documents and shards, shrunk copies of the two scripts, the summary block's parser, a
tokenizer written without training, and cuDNN's attention op on the CPU."""

import base64
import collections
import contextlib
import functools
import hashlib
import http.server
import json
import math
import os
import random
import re
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# git with no user or system configuration (no signing, no hooks), with an identity for commits
GIT_SETTINGS = dict(GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="test",
                    GIT_AUTHOR_EMAIL="test@example.com", GIT_COMMITTER_NAME="test",
                    GIT_COMMITTER_EMAIL="test@example.com")
GIT_ENV = dict(os.environ, **GIT_SETTINGS)


def git(cwd, *args):
    """git's stdout; a failing git command fails the test."""
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, timeout=30,
                          check=True).stdout


def cpu_env(cache=None, **extra):
    """The environment of a script run by a test: CUDA hidden, the kernels hub offline, output unbuffered, one
    thread (a tiny model runs faster than with threads contending on a busy 2-core machine), git's identity
    for commits; AUTORESEARCH_CACHE_DIR when a cache is given, then any extra variables."""
    env = dict(os.environ, **GIT_SETTINGS, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS="1")  # os.environ as it is now: with what an imported train.py set
    if cache is not None:
        env["AUTORESEARCH_CACHE_DIR"] = str(cache)
    return env | {name: str(value) for name, value in extra.items()}


def run_script(cwd, script, *args, env, timeout=120, **kwargs):
    """`python script args` in cwd (script may be "-c", code), its output captured as text."""
    return subprocess.run([sys.executable, script, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def tail(result, n=3000):
    """The end of a finished process's stdout and stderr: an assertion's message."""
    return result.stdout[-n:] + result.stderr[-n:]


@contextlib.contextmanager
def serve_folder(root, digests=False):
    """Serve a folder on 127.0.0.1 the way the hub serves a data set's files (`digests`: naming each file's
    sha256 in X-Linked-Etag, as the hub does for large files); yields the endpoint's URL."""
    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def end_headers(self):
            path = self.translate_path(self.path)
            if digests and os.path.isfile(path):
                self.send_header("X-Linked-Etag", f'"{hashlib.sha256(open(path, "rb").read()).hexdigest()}"')
            super().end_headers()

    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


WORDS = ("the of and to in is was for on that with as by at from his her an which are were this be had it "
         "not but or have they first one their its new after who all also two has been other when there into "
         "more time during years only over city school may most would between some such many used three "
         "world known water energy students learning history science river system called number people "
         "health early research century several small large form based group government important "
         "including").split()


def make_document(rng):
    sentences = []
    for _ in range(rng.randint(2, 12)):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 18))]
        if rng.random() < 0.4:
            at = rng.randrange(len(words))  # drawn first: the documents stay those of earlier measurements
            number = rng.choice([rng.randint(0, 99), rng.randint(1800, 2025), round(rng.uniform(0, 100), 2)])
            words.insert(at, str(number))
        if rng.random() < 0.2:
            at = rng.randrange(len(words))
            words.insert(at, rng.choice(["(see above)", "e.g.", "--", "\"quoted\"", "50%"]))
        sentence = " ".join(words)
        sentences.append(sentence[0].upper() + sentence[1:] + rng.choice([".", ".", ".", "!", "?", ";"]))
    return " ".join(sentences) + ("\n\n" + " ".join(sentences[:2]) if rng.random() < 0.3 else "")


def write_shard(path, docs, row_group_size=None):
    """A parquet file of documents in its one `text` column, as the hub's shards are."""
    pq.write_table(pa.table({"text": docs}), path, row_group_size=row_group_size)


def write_shards(folder, names, n_docs, seed, row_group_size=256):
    """Shards of generated documents, one per file name, in folder (made if missing)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for name in names:
        write_shard(folder / name, [make_document(rng) for _ in range(n_docs)], row_group_size)


def set_constant(source, name, value):
    source, n = re.subn(rf"^{name} = .*$", f"{name} = {value}", source, flags=re.MULTILINE)
    assert n == 1, f"constant {name} not found exactly once"
    return source


def shrunk_copy(src, dst, **constants):
    text = Path(src).read_text()
    for name, value in constants.items():
        text = set_constant(text, name, value)
    Path(dst).write_text(text)


# A model that trains a step in well under a second on a CPU, and the prepare.py settings it is run with
TINY_TRAIN = dict(DEPTH=2, ASPECT_RATIO=32, HEAD_DIM=32, DEVICE_BATCH_SIZE=8, TOTAL_BATCH_SIZE=2 * 8 * 128)
TINY_PREPARE = dict(MAX_SEQ_LEN=128, TIME_BUDGET=2, EVAL_TOKENS=4 * 8 * 128, VOCAB_SIZE=512)


def shrunk_scripts(work, prepare=None, train=None):
    """Copies of prepare.py and train.py in work (made if missing) with these constants; returns work."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    shrunk_copy(ROOT / "prepare.py", work / "prepare.py", **(prepare or {}))
    shrunk_copy(ROOT / "train.py", work / "train.py", **(train or {}))
    return work


def edit(path, old, new):
    """Replace old, which must occur exactly once, in the file at path: an edit that misses its anchor fails
    loudly instead of testing nothing."""
    source = Path(path).read_text()
    assert source.count(old) == 1, f"{old!r} is not in {Path(path).name} exactly once"
    Path(path).write_text(source.replace(old, new))


SUMMARY = [  # label, value pattern, type
    ("val_bpb", r"\d+\.\d{6}", float), ("training_seconds", r"\d+\.\d", float),
    ("total_seconds", r"\d+\.\d", float), ("peak_vram_mb", r"\d+\.\d", float),
    ("mfu_percent", r"\d+\.\d{2}", float), ("total_tokens_M", r"\d+\.\d", float),
    ("num_steps", r"\d+", int), ("num_params_M", r"\d+\.\d", float), ("depth", r"\d+", int),
]


def parse_summary(stdout):
    """The summary block at the end of a run's output: labels, alignment and decimals as the spec gives
    them."""
    lines = stdout.rstrip("\n").split("\n")
    assert len(lines) >= 10 and lines[-10] == "---", stdout[-2000:]
    values = {}
    for line, (label, pattern, cast) in zip(lines[-9:], SUMMARY):
        assert re.fullmatch(re.escape(f"{label}:".ljust(18)) + pattern, line), line
        values[label] = cast(line[18:])
    return values


def write_byte_tokenizer(tokenizer_dir, vocab_size, specials, pattern):
    """A valid tokenizer (256 bytes, then byte pairs, then the specials), no training needed."""
    tokenizer_dir = Path(tokenizer_dir)
    tokenizer_dir.mkdir(parents=True)
    n = vocab_size - len(specials)
    pairs = [bytes([a, b]) for a in range(256) for b in range(256)]
    tokens = [bytes([i]) for i in range(256)] + pairs[:n - 256]
    (tokenizer_dir / "tokenizer.tiktoken").write_text(
        "".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(tokens)))
    meta = {"pattern": pattern, "special_tokens": {name: n + i for i, name in enumerate(specials)}}
    (tokenizer_dir / "tokenizer.json").write_text(json.dumps(meta))
    return tokenizer_dir

# -----------------------------------------------------------------------------
# cuDNN's attention op (nvidia-cudnn-frontend's torch.ops.cudnn.sdpa) given CPU kernels, so that train.py's
# cuDNN path runs here: the same op, with its real autograd and fake registrations, only the kernels are ours


def _visible(T, is_causal, left_bound, right_bound, device):
    """cuDNN's band: key j is visible to query i iff i - left_bound < j (left_bound >= 0) and
    j <= i + right_bound."""
    i, j = torch.arange(T, device=device)[:, None], torch.arange(T, device=device)[None, :]
    keep = torch.ones(T, T, dtype=torch.bool, device=device)
    if is_causal:
        keep &= j <= i
    if left_bound >= 0:
        keep &= j > i - left_bound
    if right_bound >= 0:
        keep &= j <= i + right_bound
    return keep


def _wide(t):  # at least fp32, as cuDNN accumulates; float64 stays float64
    return t.double() if t.dtype == torch.float64 else t.float()


def _probs(q, k, scale, is_causal, left_bound, right_bound):
    if k.size(1) != q.size(1):  # GQA: each key/value head serves a group of query heads
        k = k.repeat_interleave(q.size(1) // k.size(1), dim=1)
    scores = (_wide(q) @ _wide(k).mT) * scale
    scores = scores.masked_fill(~_visible(q.size(2), is_causal, left_bound, right_bound, q.device), -math.inf)
    return scores.softmax(-1), scores.logsumexp(-1, keepdim=True)


kernel_calls = collections.Counter()  # how often each CPU kernel ran: proof that a compiled graph used the op


def _sdpa_cpu(q, k, v, attn_scale, is_causal=False, diagonal_alignment=0, left_bound=-1, right_bound=-1,
              seq_len_q=None, seq_len_kv=None, cumulative_seq_len_q=None, cumulative_seq_len_kv=None):
    kernel_calls["sdpa"] += 1
    p, lse = _probs(q, k, attn_scale, is_causal, left_bound, right_bound)
    vv = v.repeat_interleave(q.size(1) // v.size(1), dim=1) if v.size(1) != q.size(1) else v
    return (p @ _wide(vv)).to(q.dtype), lse.float()


def _sdpa_bwd_cpu(dO, q, k, v, o, stats, attn_scale, is_causal=False, diagonal_alignment=0, left_bound=-1,
                  right_bound=-1, seq_len_q=None, seq_len_kv=None, cumulative_seq_len_q=None,
                  cumulative_seq_len_kv=None, is_deterministic=False):
    kernel_calls["sdpa_bwd"] += 1
    group = q.size(1) // k.size(1)
    kk, vv = (_wide(t.repeat_interleave(group, dim=1)) for t in (k, v))
    p, _ = _probs(q, k, attn_scale, is_causal, left_bound, right_bound)
    dO = _wide(dO)
    dv = p.mT @ dO
    dp = dO @ vv.mT
    ds = p * (dp - (dp * p).sum(-1, keepdim=True)) * attn_scale
    dq, dk = ds @ kk, ds.mT @ _wide(q)
    if group > 1:  # sum the gradients of each group back onto its key/value head
        dk, dv = (t.view(t.size(0), -1, group, *t.shape[2:]).sum(2) for t in (dk, dv))
    return tuple(torch.empty_like(t).copy_(g) for t, g in ((q, dq), (k, dk), (v, dv)))  # the fake's layouts


def cudnn_attention_on_cpu():
    """The cuDNN frontend's scaled_dot_product_attention, runnable on the CPU (its CPU kernels registered
    once)."""
    from cudnn.experimental.ops import scaled_dot_product_attention
    if not getattr(cudnn_attention_on_cpu, "registered", False):
        torch.library.impl("cudnn::sdpa", "CPU")(_sdpa_cpu)
        torch.library.impl("cudnn::sdpa_bwd", "CPU")(_sdpa_bwd_cpu)
        cudnn_attention_on_cpu.registered = True
    return scaled_dot_product_attention


def bigram_classes(middle, **names):
    """The classes a red team's MIDDLE defines on top of the test nights' Bigram, run in a namespace of torch,
    math and `names` (its program, tested in-process without a night)."""
    space = dict(torch=torch, math=math, **names)
    exec("class Bigram(torch.nn.Module):\n    def __init__(self, vocab):\n        super().__init__()\n"
         "        self.table = torch.nn.Parameter(torch.zeros(vocab, vocab))\n" + middle, space)
    return space
