"""One-time data preparation (into ~/.cache/autoresearch or $AUTORESEARCH_CACHE_DIR), plus what train.py
imports: the tokenizer, data loader, evaluation and harness. Frozen: the agent never edits data or score:
    uv run prepare.py                       # 10 training shards + the validation shard, then the tokenizer
    uv run prepare.py --num-shards -1       # all of the data set's training shards (1821 for FineWeb-Edu)
    uv run prepare.py --dataset tinystories # another data set (then set DATASET below to train on it)
"""

import argparse
import base64
import bisect
import collections
import contextlib
import errno
import gc
import hashlib
import itertools
import json
import math
import os
import queue
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
# ---------------------------------------------------------------------------
# Constants (fixed: changing them changes what val_bpb means)

MAX_SEQ_LEN = 2048          # context length of training and evaluation
TIME_BUDGET = 300           # seconds of training (wall clock, compilation excluded)
EVAL_TOKENS = 40 * 524288   # tokens scored by evaluate_bpb
LN2 = math.log(2)           # nats per bit, taken when this file loads

# FineWeb-Edu at 8192 by default; "climbmix" is the original's (its published runs), "tinystories" suits small
# computers with a smaller VOCAB_SIZE. Each data set and each (data set, VOCAB_SIZE) has a folder of its own.
DATASET = "fineweb-edu"
VOCAB_SIZE = 8192
# Hub repo and pinned data, never trained on: `val` scores every run, `heldout` only audit.py's --confirm
# (in a process that never trains). A shard set validates on its last shard and holds out the one before.
DATASETS = {"fineweb-edu": dict(repo="karpathy/fineweb-edu-100b-shuffle", val=1822, heldout=1821),
            "climbmix": dict(repo="karpathy/climbmix-400b-shuffle", val=6542, heldout=6541),
            "tinystories": dict(repo="karpathy/tinystories-gpt4-clean", file="tinystories_gpt4_clean.parquet",
                                heldout=(0, 10_000), val=(10_000, 20_000), train=(20_000, None))}

CACHE_DIR = os.environ.get("AUTORESEARCH_CACHE_DIR") or os.path.expanduser("~/.cache/autoresearch")

def cache_dirs(dataset):
    return (os.path.join(CACHE_DIR, "data", dataset),
            os.path.join(CACHE_DIR, "tokenizer", f"{dataset}-{VOCAB_SIZE}"))

def shard_filename(index): return f"shard_{index:05d}.parquet"

if DATASET not in DATASETS:  # a misspelt name: one line, before anything reads it (and before torch loads)
    sys.exit(f"error: DATASET = {DATASET!r} in prepare.py is not a data set here: choose one of "
             f"{', '.join(DATASETS)}")
DATA_DIR, TOKENIZER_DIR = cache_dirs(DATASET)
VAL_FILENAME = DATASETS[DATASET].get("file") or shard_filename(DATASETS[DATASET]["val"])
DOWNLOAD_ATTEMPTS, CHUNK_BYTES = 5, 1 << 20  # 1 MiB chunks: the progress line counts bytes a chunk at a time

SPECIAL_TOKENS, BOS_TOKEN = [f"<|reserved_{i}|>" for i in range(4)], "<|reserved_0|>"
# GPT-4 style split, but digits grouped by one or two (not three): better for a small vocabulary
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}|"""
                 r""" ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""")
TOKENIZER_MAX_CHARS, TOKENIZER_DOC_CHARS = 1_000_000_000, 10_000  # BPE trains on 1e9 chars, <= 1e4 a document
ROUNDTRIP_TEXT = ("Hello world! 12,345 apples cost $6.78 (a 9% rise)...\n\t"
                  "naïve café — 日本語のテキスト, Привет мир 🙂")

def base_url(dataset=None):
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    if not endpoint.startswith(("http://", "https://")):  # requests would fail only after all the retries
        sys.exit(f"error: HF_ENDPOINT={endpoint!r} must start with http:// or https://, "
                 "e.g. HF_ENDPOINT=https://hf-mirror.com")
    return f"{endpoint.rstrip('/')}/datasets/{DATASETS[dataset or DATASET]['repo']}/resolve/main"

def split_row_ranges(split, data_dir=None, dataset=None):
    """A split's documents (DATASETS above) as (file, first row, end row or None), in sorted file order."""
    data_dir = data_dir or (cache_dirs(dataset)[0] if dataset else DATA_DIR)  # DATA_DIR: tests move it
    spec = DATASETS[dataset := dataset or DATASET]
    if "file" in spec:
        path = os.path.join(data_dir, spec["file"])
        ranges = [(path, *spec[split])] if os.path.exists(path) else []
    else:
        pinned = {shard_filename(spec["val"]): "val", shard_filename(spec["heldout"]): "heldout"}
        names = sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else []
        ranges = [(os.path.join(data_dir, n), 0, None) for n in names
                  if n.endswith(".parquet") and pinned.get(n, "train") == split]
    if not ranges:
        command = "prepare.py" if dataset == DATASET else f"prepare.py --dataset {dataset}"
        raise FileNotFoundError(f"no {dataset} {split} data in {data_dir}: run `uv run {command}` first")
    return ranges

# ---------------------------------------------------------------------------
# Before torch loads (seconds): arguments answer at once; torch (train.py's too) reads the variables set here
if __name__ != "__main__" and os.path.basename(sys.argv[0]) == "train.py" and len(sys.argv) > 1:
    print("train.py takes no arguments (edit the constants at the top of the file)", file=sys.stderr)
    sys.exit(2)  # a flag must not start a run; 2: a usage error, as argparse's

def parse_args():
    moved = [a.split("=")[0] for a in sys.argv[1:] if a.split("=")[0] in ("--row", "--audit", "--confirm")]
    if moved:  # these lived here before audit.py
        sys.exit(f"{moved[0]} moved to audit.py: uv run audit.py --help")
    parser = argparse.ArgumentParser(
        description="Download a data set and train the tokenizer for autoresearch (run once).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="environment variables:\n"
        "  AUTORESEARCH_CACHE_DIR  cache root for data/ and tokenizer/ (default: ~/.cache/autoresearch)\n"
        "  HF_ENDPOINT             hub (or mirror) to download shards from (default: https://huggingface.co)")
    parser.add_argument("--dataset", choices=DATASETS, default=DATASET,
                        help=f"data set to download (default: {DATASET}, the DATASET that train.py uses)")
    parser.add_argument("--num-shards", type=int, default=10, help="training shards to download, -1 for all "
                        "(TinyStories is one file); the validation shard is always added (default: 10)")
    parser.add_argument("--download-workers", type=int, default=8, help="parallel downloads (default: 8)")
    args = parser.parse_args()
    most = DATASETS[args.dataset]["heldout"]  # a shard set trains on shards 0 ... heldout - 1
    if "file" not in DATASETS[args.dataset]:
        args.num_shards = most if args.num_shards == -1 else args.num_shards
        if not 1 <= args.num_shards <= most:
            parser.error(f"--num-shards must be between 1 and {most} for {args.dataset}, or -1 for all")
    if args.download_workers < 1:
        parser.error("--download-workers must be at least 1")
    return args

if __name__ == "__main__":
    ARGS = parse_args()
if "PYTORCH_CUDA_ALLOC_CONF" not in os.environ:  # the old name, if someone set it, is left alone
    os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")  # less fragmentation at high use
os.environ.update(HF_HUB_DISABLE_PROGRESS_BARS="1",  # and no profile of dynamo's that a run leaves for the
                  TORCH_DYNAMO_AUTOMATIC_DYNAMIC_LOCAL_PGO="0")  # next (red team 43 passed rows through one)
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(CACHE_DIR, "torch_compile"))  # not /tmp's
try:
    import numpy as np
    import pyarrow.parquet as pq
    import requests
    import tiktoken
    import torch
    audit = None  # the run records: a prepare.py copied without audit.py still scores
    with contextlib.suppress(ImportError):
        import audit
except ModuleNotFoundError as e:  # a Python without the project's packages
    sys.exit(f"{e.name} is not installed for {sys.executable}: run `uv run {os.path.basename(sys.argv[0])}`, "
             "which uses the project's environment (`uv sync` makes it)")
# ---------------------------------------------------------------------------
# Data: download (what retrying cannot mend raises a one-line RuntimeError, which main prints)

def check_shard(path, min_rows=0):
    pf = pq.ParquetFile(path)  # the footer only: cheap
    if "text" not in pf.schema_arrow.names:
        raise ValueError(f"no 'text' column (columns: {pf.schema_arrow.names})")
    if pf.metadata.num_rows < min_rows:
        raise ValueError(f"{pf.metadata.num_rows:,} rows, fewer than its {min_rows:,} validation rows")

class ShardMissing(RuntimeError):
    """The server answered that it does not have a file."""

class WriteError(RuntimeError):
    """The cache cannot be written: strerror names the cause (no permission, read-only, no space, quota)."""
    def __init__(self, path, e):
        room = "free space there or " if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        super().__init__(f"cannot write {path}: {e.strerror or e}: {room}set AUTORESEARCH_CACHE_DIR to a "
                         "folder you can write, with room, then run prepare.py again")

def make_dirs(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise WriteError(path, e) from None

def download_shard(name, data_dir, url_base, counts=None, stop=None, min_rows=0):
    """One file into data_dir unless a good copy is there (bytes so far in counts[name]); None if stopped."""
    stop, counts = stop or threading.Event(), {} if counts is None else counts
    path, tmp = os.path.join(data_dir, name), os.path.join(data_dir, name + ".tmp")
    if os.path.exists(path):
        try:
            check_shard(path, min_rows)
            return path
        except Exception as e:
            print(f"\n{name} on disk is unreadable ({e}); downloading it again", flush=True)
            os.remove(path)
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        if stop.is_set():  # the server is down, or the disk cannot be written
            return None
        try:
            with requests.get(f"{url_base}/{name}", stream=True, timeout=(10, 60)) as r:
                if 400 <= r.status_code < 500 and r.status_code not in (408, 429):  # 408/429 mean "later"
                    raise ShardMissing(f"{name}: the server does not have it (HTTP {r.status_code})")
                r.raise_for_status()
                hub = next((h.headers["X-Linked-Etag"].strip('"') for h in (*r.history, r)  # LFS: the sha256
                            if "X-Linked-Etag" in h.headers), "")  # the hub's, on its redirect: checked, kept
                digest, counts[name] = hashlib.sha256(), 0
                with open(tmp, "wb") as f:  # a body shorter than its Content-Length raises (urllib3 2)
                    for chunk in r.raw.stream(CHUNK_BYTES, decode_content=False):
                        f.write(chunk)
                        digest.update(chunk)
                        counts[name] += len(chunk)
            if len(hub) == 64 and digest.hexdigest() != hub:
                raise IOError(f"sha256 {digest.hexdigest()[:12]}... is not the hub's {hub[:12]}...")
            check_shard(tmp, min_rows)
            os.replace(tmp, path)  # only a complete, verified file ever carries the final name
            if len(hub) == 64:
                with open(path + ".sha256", "w") as f:
                    f.write(hub + "\n")
            return path
        except ShardMissing:
            raise
        except Exception as e:  # network errors, 5xx, truncation, unreadable parquet: all retried
            if os.path.exists(tmp):
                os.remove(tmp)
            if isinstance(e, OSError) and e.errno and not isinstance(e, requests.RequestException):
                stop.set()  # the disk (full, read-only, ...): it fails every download alike
                raise WriteError(tmp, e) from None
            error = e
        if attempt < DOWNLOAD_ATTEMPTS:  # a line of its own (the progress line goes on below it)
            print(f"\n{name}: attempt {attempt} of {DOWNLOAD_ATTEMPTS} failed ({type(error).__name__}), "
                  f"retrying in {2 ** attempt} s", flush=True)
            stop.wait(2 ** attempt)  # 2, 4, 8, 16 s
    if isinstance(error, requests.ConnectionError):
        stop.set()  # never connected in 5 tries: the server is down; spare the others ~30 s of backoff each
    raise RuntimeError(f"{name}: failed {attempt} attempts, last error: {type(error).__name__}: {error}")

def download_data(num_shards, workers, data_dir=None, stop=None, dataset=None):
    """The first num_shards training shards and the validation shard (TinyStories: its one file)."""
    dataset = dataset or DATASET
    spec, data_dir, url_base = DATASETS[dataset], data_dir or cache_dirs(dataset)[0], base_url(dataset)
    make_dirs(data_dir)
    shards = (*range(num_shards), spec["val"])  # never the held-out shard (audit.py fetches it)
    names = [spec["file"]] if "file" in spec else [shard_filename(i) for i in shards]
    stop, counts, t0 = stop or threading.Event(), dict.fromkeys(names, 0), time.time()
    pool = ThreadPoolExecutor(max_workers=workers)  # not `with`: its exit would wait for every download
    futures = pending = [pool.submit(download_shard, n, data_dir, url_base, counts, stop,
                                     min_rows=spec["val"][1] if "file" in spec else 0) for n in names]
    while pending:  # a progress line, rewritten in place; wait, not f.result(), which would not see Ctrl-C
        pending = wait(futures, timeout=0.5).not_done
        ready = sum(os.path.exists(os.path.join(data_dir, n)) for n in names)
        mb, seconds = sum(counts.values()) / 1e6, max(time.time() - t0, 1e-3)  # a coarse clock may read 0
        print(f"\rdownloading: {ready}/{len(names)} files, {mb:.1f} MB, {mb / seconds:.1f} MB/s   ",
              end="" if pending else "\n", flush=True)
    errors = [f.exception() for f in futures if f.exception()]
    sys.stderr.write("".join(f"error: {e}\n" for e in errors))
    stopped = "The server is unreachable, so the other downloads were stopped. " * stop.is_set()
    advice = (f" (from {url_base}). {stopped}Check your network (or point HF_ENDPOINT at a mirror) and run "
              "prepare.py again: finished shards are kept.")
    if any(isinstance(e, ShardMissing) for e in errors):  # never "later": the file is not there
        fix = "" if "file" in spec else "use a smaller --num-shards, or "
        advice = f" (from {url_base}): {fix}check HF_ENDPOINT (the hub, or a complete mirror)."
    if errors:  # a disk's own line says what to do
        raise RuntimeError(f"{ready} of {len(names)} files are ready in {data_dir}"
                           + ("." if any(isinstance(e, WriteError) for e in errors) else advice))
    print(f"data: {ready} of {len(names)} files ready in {data_dir}")

# ---------------------------------------------------------------------------
# Tokenizer: training

def _split_texts(row_ranges):
    """One pass over a split's documents, in file, row-group and row order: lists of texts."""
    for path, first, end in row_ranges:
        try:
            pf, start = pq.ParquetFile(path), 0
            for rg in range(pf.num_row_groups):
                n = pf.metadata.row_group(rg).num_rows
                lo, hi, start = max(first - start, 0), n if end is None else min(end - start, n), start + n
                if lo < hi:  # row groups outside the part are not read at all
                    yield pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()[lo:hi]
        except (OSError, ValueError) as e:
            raise RuntimeError(f"cannot read {path} ({e}): delete it, run `uv run prepare.py` again") from e

def _training_texts(data_dir, dataset):
    total = 0
    for text in itertools.chain.from_iterable(_split_texts(split_row_ranges("train", data_dir, dataset))):
        yield (text := text[:TOKENIZER_DOC_CHARS])
        if (total := total + len(text)) >= TOKENIZER_MAX_CHARS:
            return

def train_tokenizer(data_dir=None, tokenizer_dir=None, dataset=None):
    import rustbpe  # only needed here, not at training time
    t0, bpe, tokenizer_dir = time.time(), rustbpe.Tokenizer(), tokenizer_dir or TOKENIZER_DIR
    # in a worker thread: the main thread, waiting, sees Ctrl-C at once (never while inside rustbpe's Rust)
    ThreadPoolExecutor(1).submit(bpe.train_from_iterator, _training_texts(data_dir, dataset),
                                 VOCAB_SIZE - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN).result()
    ranks = sorted(bpe.get_mergeable_ranks(), key=lambda token_rank: token_rank[1])
    specials = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
    # tiktoken's base64 rank file plus JSON: loading runs no code (the original pickled the Encoding)
    files = {"tokenizer.tiktoken": "".join(f"{base64.b64encode(bytes(t)).decode()} {r}\n" for t, r in ranks),
             "tokenizer.json": json.dumps({"pattern": bpe.get_pattern(), "special_tokens": specials})}
    try:
        os.makedirs(tokenizer_dir, exist_ok=True)
        for name, text in files.items():
            with open(os.path.join(tokenizer_dir, name + ".tmp"), "w") as f:
                f.write(text)
            os.replace(f.name, os.path.join(tokenizer_dir, name))  # never a half-written file under its name
    except OSError as e:
        raise WriteError(tokenizer_dir, e) from None
    tokenizer = Tokenizer.from_directory(tokenizer_dir)
    if tokenizer.decode(tokenizer.encode(ROUNDTRIP_TEXT)) != ROUNDTRIP_TEXT:
        raise RuntimeError(f"the new tokenizer fails a round trip: delete {tokenizer_dir}, train it again")
    print(f"tokenizer: vocab {VOCAB_SIZE} trained in {time.time() - t0:.1f}s, saved to {tokenizer_dir}")

# ---------------------------------------------------------------------------
# Runtime: the tokenizer (train.py imports it)

class TokenizerError(FileNotFoundError):
    """A damaged saved tokenizer: a FileNotFoundError like a missing one (one `except` for both), one line."""
    def __init__(self, path, problem):
        self.problem = f"{path} {problem}"
        super().__init__(f"{self.problem}: run `uv run prepare.py` to train the tokenizer again")

class Tokenizer:
    """A tiktoken Encoding (the BPE learned above) with the BOS token and byte counts for bits-per-byte."""
    def __init__(self, enc):
        self.enc, self.bos_token_id = enc, enc.encode_single_token(BOS_TOKEN)
        # Bytes per token from the raw bytes (decoding a partial UTF-8 token to text would count U+FFFD as 3)
        special_ids = set(enc._special_tokens.values())
        self.token_bytes = torch.tensor([0 if i in special_ids else len(enc.decode_single_token_bytes(i))
                                         for i in range(enc.n_vocab)], dtype=torch.int32)

    @classmethod
    def from_directory(cls, tokenizer_dir=None):
        """The saved tokenizer (default: TOKENIZER_DIR), checked: a damaged one raises TokenizerError."""
        tokenizer_dir = tokenizer_dir or TOKENIZER_DIR
        rank_file, meta_file = (os.path.join(tokenizer_dir, "tokenizer." + e) for e in ("tiktoken", "json"))
        if not (os.path.exists(rank_file) and os.path.exists(meta_file)):
            parent = os.path.dirname(tokenizer_dir)
            others = ", ".join(sorted(os.listdir(parent))) if os.path.isdir(parent) else ""
            raise FileNotFoundError(f"no tokenizer in {tokenizer_dir}: run `uv run prepare.py` first"
                                    + (f" (the others stay as they are: {others})" if others else ""))
        try:  # a line cut short, not base64 or not a number: ValueError
            with open(rank_file) as f:
                ranks = {base64.b64decode(token, validate=True): int(rank)
                         for token, rank in (line.split() for line in f.read().splitlines() if line)}
        except ValueError as e:
            raise TokenizerError(rank_file, f"has a line that is not `<base64 token> <rank>` ({e})") from None
        n, m = VOCAB_SIZE - len(SPECIAL_TOKENS), len(ranks)  # learned tokens: VOCAB_SIZE's, the file's
        whole, specials = sorted(ranks.values()) == list(range(m)), dict(zip(SPECIAL_TOKENS, range(m, m + 4)))
        try:  # not JSON, no pattern (KeyError), a pattern tiktoken rejects, other special tokens
            with open(meta_file) as f:
                meta = json.load(f)
            if m != n and whole and meta.get("special_tokens") == specials:  # another size, not damaged
                raise TokenizerError(tokenizer_dir, f"holds a tokenizer of {m + len(SPECIAL_TOKENS)} tokens, "
                                                    f"not VOCAB_SIZE = {VOCAB_SIZE}")
            if m != n or not whole:
                raise TokenizerError(rank_file, f"does not hold each rank 0..{n - 1} once ({m} tokens)")
            if meta["special_tokens"] != specials or meta["pattern"] != SPLIT_PATTERN:  # red team 36: "e"
                raise ValueError(f"not SPLIT_PATTERN, or not {', '.join(SPECIAL_TOKENS)} = {n}..{n + 3}")
            return cls(tiktoken.Encoding(name="autoresearch", pat_str=meta["pattern"], mergeable_ranks=ranks,
                                         special_tokens=meta["special_tokens"]))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise TokenizerError(meta_file, f"is damaged ({type(e).__name__}: {e})") from None

    def get_vocab_size(self): return self.enc.n_vocab

    def get_bos_token_id(self): return self.bos_token_id

    def encode(self, text, prepend=None, num_threads=8):
        if prepend is not None and not isinstance(prepend, int):
            prepend = self.enc.encode_single_token(prepend)
        head = [] if prepend is None else [prepend]
        if isinstance(text, str):
            return head + self.enc.encode_ordinary(text)
        return [head + ids for ids in self.enc.encode_ordinary_batch(text, num_threads=num_threads)]

    def decode(self, ids): return self.enc.decode(ids)

def get_token_bytes(device="cpu"): return Tokenizer.from_directory().token_bytes.to(device)  # original's

# ---------------------------------------------------------------------------
# Runtime: the data loader

def _default_device():
    return torch.device("cuda" if torch.cuda.is_available() else
                        "mps" if torch.backends.mps.is_available() else "cpu")

def _pack_batches(tokenizer, B, T, split, buffer_size, stop, free, ready, lookahead=16):
    """The loader's thread: B rows of T + 1 tokens, packed best-fit into a buffer from `free`, to `ready`."""
    head, enc = np.array([tokenizer.get_bos_token_id()], dtype=np.uint32), tokenizer.enc

    def encode(texts, epoch):  # in a worker thread: numpy, no Python int lists (the GIL limits throughput)
        return [np.concatenate((head, enc.encode_to_numpy(t, disallowed_special=()))) for t in texts], epoch

    row_ranges = split_row_ranges(split)
    docs = ((texts[i:i + 128], epoch) for epoch in itertools.count(1) for texts in _split_texts(row_ranges)
            for i in range(0, len(texts), 128))  # endless: file, row-group and row order, <= 128 at a time
    pool = ThreadPoolExecutor(max(1, min(8, (os.cpu_count() or 2) - 1)),  # a core left for the caller
                              thread_name_prefix="dataloader-tokenize")
    pending, count, epoch = collections.deque(), 0, 1  # tokenization runs ahead, in order
    lengths, by_length = [], collections.defaultdict(collections.deque)  # sorted lengths, a FIFO each: bisect

    def refill():
        nonlocal count, epoch
        while len(pending) < lookahead:
            pending.append(pool.submit(encode, *next(docs)))
        encoded, epoch = pending.popleft().result()
        for doc in encoded:
            if len(doc) not in by_length:
                bisect.insort(lengths, len(doc))
            by_length[len(doc)].append(doc)
            count += 1

    try:
        while not stop.is_set():
            rows = np.empty((B, T + 1), dtype=np.int64)
            for b in range(B):
                pos = 0
                while pos < T + 1:
                    while count < buffer_size:
                        refill()
                    space = T + 1 - pos
                    # the longest document that fits (earliest of that length), else the shortest, cropped
                    i = max(bisect.bisect_right(lengths, space) - 1, 0)
                    doc = by_length[lengths[i]].popleft()[:space]
                    if not by_length[lengths[i]]:
                        del by_length[lengths.pop(i)]
                    count -= 1
                    rows[b, pos:pos + len(doc)] = doc
                    pos += len(doc)
            host, copied = free.get()  # close() puts one more in, to wake it
            if stop.is_set():
                return
            if copied is not None:
                copied.synchronize()  # never overwrite a pinned buffer while a copy from it is in flight
            host = torch.empty((2, B, T), dtype=torch.int64) if host is None else host
            np.stack((rows[:, :-1], rows[:, 1:]), out=host.numpy())  # inputs, targets
            _served["train_packed"] += split == "train"  # red team 21 trained on batches never served
            ready.put((host, epoch))
    except BaseException as e:  # hand the error to the consumer instead of dying silently
        ready.put((e, None))
    finally:  # wait for the encodes in flight: no loader thread may still be in native code at exit
        pool.shutdown(wait=True, cancel_futures=True)

def make_dataloader(tokenizer, B, T, split, buffer_size=1000):
    """Endless (inputs, targets, epoch): int64 (B, T) on the device, packed ahead by a thread till close()."""
    assert split in ("train", "val"), split
    # Fail now if data is missing or unreadable, the validation shard too (else found only after training)
    row_ranges = split_row_ranges(split) + (split_row_ranges("val") if split == "train" else [])
    try:
        for path, _, end in row_ranges:
            check_shard(path, end or 0)  # the footer only: cheap
    except (OSError, ValueError) as e:
        raise RuntimeError(f"cannot read {path} ({e}): delete it and run `uv run prepare.py` again") from None
    _loaders.append(loader := _loader(tokenizer, B, T, split, buffer_size))  # evaluate_bpb closes them
    next(loader)  # to its first yield: the packing thread starts now, while the caller builds its model
    if split == "train":
        print(f"data: {DATASET} ({DATASETS[DATASET]['repo']}), vocabulary {tokenizer.get_vocab_size():,}")
    return loader

def _loader(tokenizer, B, T, split, buffer_size, evaluation=False):
    """make_dataloader's generator; what it serves goes to _served, but the evaluation's (red team 20)."""
    device, stop, ready, free = _default_device(), threading.Event(), queue.Queue(), queue.Queue()
    cuda = device.type == "cuda"
    for _ in range(4):  # at most 4 batches ahead; on CUDA each token is a pinned buffer to recycle
        free.put((torch.empty((2, B, T), dtype=torch.int64, pin_memory=True) if cuda else None, None))
    thread = threading.Thread(target=_pack_batches, daemon=True, name=f"dataloader-{split}",
                              args=(tokenizer, B, T, split, buffer_size, stop, free, ready))
    thread.start()
    try:
        yield  # make_dataloader's priming call
        while True:
            host, epoch = ready.get()
            if isinstance(host, BaseException):
                raise host
            batch = host.to(device, non_blocking=cuda)  # on CPU the batch *is* the buffer: not reused
            free.put((host, torch.cuda.current_stream().record_event()) if cuda else (None, None))
            if split == "train":  # when training drew each batch, for the run record
                _served["train_times"].append(_clock())
                _served["train_tokens"] += B * T
            elif not evaluation:
                _served["val_batches_outside_evaluation"] += 1
            yield batch[0], batch[1], epoch
    finally:
        stop.set()
        free.put((None, None))
        thread.join(timeout=30)  # it stops at its next batch: well under a second (30: a generous bound)

# ---------------------------------------------------------------------------
# Runtime: the evaluation (train.py calls evaluate_bpb; audit.py --confirm calls score)

_served, _loaders = dict(train_times=[], train_tokens=0, val_batches_outside_evaluation=0, unpinned=None,
                        evaluations=0, train_packed=0), []  # recorded; make_dataloader's loaders
_clock, _urandom, _hook = time.monotonic, os.urandom, torch._C._dynamo.eval_frame.set_eval_frame  # at load
_clone, _detach = torch._C.TensorBase.clone, torch._C.TensorBase.detach  # a C type's: nothing a tensor
_grad_mode, _set_grad = torch._C.is_grad_enabled, torch._C._set_grad_enabled  # or its class adds runs (32)
_dispatch_modes, _function_modes = torch._C._len_torch_dispatch_stack, torch._C._len_torch_function_stack
CAUSAL_TOLERANCE = 1e-3  # a logit before the changed tokens may move this much (bf16 kernels give 0 or ~1e-5)
LOSS_CHUNK = 2**28       # logits per cross-entropy call: 1 GiB of float32 log-probabilities at a time

def _losses(logits, targets):
    """Cross entropy in nats per target, from logits (B, T, V >= vocabulary), in float32, chunk by chunk."""
    logits, targets = logits.flatten(0, 1), targets.flatten()
    rows = max(1, LOSS_CHUNK // logits.size(-1))
    return torch.cat([torch.nn.functional.cross_entropy(lg.float(), tg, reduction="none")
                      for lg, tg in zip(logits.split(rows), targets.split(rows))])

def _call(fn, *args):  # fn(*args), train.py's code, on copies of the tensors (red team 15 read y behind x),
    grad, modes = _grad_mode(), _function_modes()  # which, with its answer, are freed before the checks
    out = fn(*[_clone(a) if type(a) is torch.Tensor else a for a in args])  # (red teams 29, 31 ran code as
    out = _clone(_detach(out)) if type(out) is torch.Tensor else out  # prepare freed them); grad mode as it
    _set_grad(grad)  # was, and no history (red team 38's saved-tensor hooks ran in score's losses)
    _served["unpinned"] = _served["unpinned"] or gc.isenabled() and "the garbage collector (switched on)" or (
        _dispatch_modes() or _function_modes() != modes) and "a torch mode (left on)"  # 40's ran code
    _served["unpinned"] = _served["unpinned"] or _hook(None) is not None and "a frame hook" or _unpinned(_PIN)
    return out  # no frame hook (red teams 26, 28), no pinned change

def _causality_probe(model, x):
    """(probe, logits of x): the most a logit at t <= t_b (random) moves when row b's later tokens change."""
    B, T = x.shape
    gen = torch.Generator().manual_seed(int.from_bytes(_urandom(8), "little") >> 2)  # unforeseeable
    cut = torch.randint(0, T - 1, (B, 1), generator=gen).to(x.device)
    after = torch.arange(T, device=x.device)[None] > cut
    vocab = max(int(x.max()) + 1, 2)  # random ids (47 undid a roll), each unlike the one it replaces
    donor = (x + torch.randint(1, vocab, x.shape, generator=gen).to(x.device)) % vocab
    changed = _call(model, torch.where(after, donor, x))  # first: x cannot prime it; a copy, which the model
    logits = _call(model, x)  # cannot write into (red team 23 rewrote its first answer after the second)
    if not (type(changed) is torch.Tensor and type(logits) is torch.Tensor and changed.shape == logits.shape):
        return math.inf, logits  # the caller names a wrong shape; a model answering two ways is rejected
    chunk = max(1, LOSS_CHUNK // (T * logits.size(-1)))
    moved = torch.cat([_moved(a, b) for a, b in zip(changed.split(chunk), logits.split(chunk))])
    return moved[~after].max().item(), logits

def _moved(a, b):  # the most a position's logits moved: equal (-inf twice) is 0, NaN inf (red team 24)
    return torch.where(a == b, 0.0, torch.nan_to_num((a.float() - b.float()).abs(), nan=math.inf)).amax(-1)

@torch.no_grad()
def score(model, tokenizer, batch_size, split="val", rows=0):
    """(bits per byte, tokens, bytes, causal probe) of model(idx) -> logits on a split (its first `rows`)."""
    token_bytes = tokenizer.token_bytes.to(device := _default_device())
    sum_dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    steps = -(-rows // batch_size) or EVAL_TOKENS // (batch_size * MAX_SEQ_LEN)  # rows: the confirm's, ceil
    probe_at, probe = int.from_bytes(_urandom(8), "little") % steps, None  # one batch probed
    total_nats = total_bytes = 0  # sums on the device: no host sync per batch
    _served["evaluations"] += split == "val"  # red team 19 kept a first one's data, red team 20 drew scores
    if _served["evaluations"] > 1:
        sys.exit("evaluation refused: the validation data is scored once a process (a model can recall it)")
    with contextlib.closing(_loader(tokenizer, batch_size, MAX_SEQ_LEN, split, 1000, True)) as loader:
        next(loader)
        for step in range(steps):
            x, y, _ = next(loader)
            probe, logits = _causality_probe(model, x) if step == probe_at else (probe, _call(model, x))
            if not (type(logits) is torch.Tensor and logits.dim() == 3 and logits.shape[:2] == x.shape
                    and logits.size(-1) >= len(token_bytes)):  # a subclass's methods ran in the sums
                shape = type(logits).__name__ + (f" {tuple(logits.shape)}" if torch.is_tensor(logits) else "")
                raise ValueError(f"model(x) returned {shape} for x of {tuple(x.shape)}: the evaluation "
                                 f"needs logits (B, T, >= {len(token_bytes)}) from model(x) without targets")
            y[(rows or steps * batch_size) - step * batch_size:] = tokenizer.get_bos_token_id()  # past `rows`
            nbytes = token_bytes[y.flatten()]
            total_nats = total_nats + torch.where(nbytes > 0, _losses(logits, y), 0.0).sum().to(sum_dtype)
            total_bytes = total_bytes + nbytes.sum()  # special tokens (BOS) stand for no bytes: not scored
    return float(total_nats) / (LN2 * (n := int(total_bytes))), steps * batch_size * MAX_SEQ_LEN, n, probe

def evaluate_bpb(model, tokenizer, batch_size):
    """Bits per byte on the validation data by the saved tokenizer (`tokenizer`: the original's signature)."""
    _served["unpinned"] = _served["unpinned"] or _hook(None) is not None and "a frame hook"  # first
    batch_size = int.__index__(batch_size)  # an int: a subclass's methods would be train.py's code in score
    while _loaders:  # training's, closed: a method of train.py's (a tokenizer's, an int's) would run in their
        _loaders.pop().close()  # threads during the evaluation (red team 31)
    running = any(t.name.startswith("dataloader") for t in threading.enumerate())  # one did not stop
    _served["unpinned"] = _served["unpinned"] or running and "a training loader (running on)"
    collecting = gc.isenabled() and gc.disable() is None  # off: red team 30's cycles ran code as it collected
    t0, own, before = _clock(), Tokenizer.from_directory(), audit and _call(audit.fingerprint, model)
    export = audit and os.environ.pop("AUTORESEARCH_EXPORT", None)  # --confirm's: exported before it sees val
    exported = export and audit.export_model(model, (batch_size, MAX_SEQ_LEN), _default_device(), export)
    try:
        val_bpb, tokens, nbytes, probe = score(model, own, batch_size)
    except BaseException as e:
        if _saved_checkpoint:  # a crash here loses no training
            print(f"\nevaluation failed; the trained weights are saved at {_saved_checkpoint}")
        if audit:  # recorded: a run that fails after it saw the data is a draw too
            _served["unpinned"] = _served["unpinned"] or _hook(None) is not None and "a frame hook"
            audit.append_run_record(sys.modules[__name__], own, dict(
                _served, val_bpb=0.0, tokens_evaluated=0, batch_size=batch_size, evaluated_at=t0,
                rejected=f"the evaluation raised {type(e).__name__}"))
        raise
    gc.collect()  # the cycles train.py left run their code now, right before the checks (score's frees too)
    _served["unpinned"] = _served["unpinned"] or _hook(None) is not None and "a frame hook" or _unpinned(_PIN)
    after = audit and _call(audit.fingerprint, model)
    rejected = _served["unpinned"] and f"train.py changed {_served['unpinned']}, which the evaluation runs"
    if not probe <= CAUSAL_TOLERANCE and not rejected:  # NaN too
        rejected = (f"the model is not causal: its logits before position t moved by {probe:.3g} when the "
                    "tokens after t changed (it sees the future)")
    elif not rejected and before is not None and not torch.equal(before, after):
        rejected = "the model's weights or buffers changed while it was scored (it learned from them)"
    if not audit:  # a prepare.py copied without audit.py: the score still prints
        print("warning: no run record: audit.py is not beside prepare.py", file=sys.stderr)
    else:
        audit.append_run_record(sys.modules[__name__], own, dict(
            val_bpb=val_bpb, rejected=rejected, batch_size=batch_size, tokens_evaluated=tokens,
            bytes_evaluated=nbytes, causal_probe=probe, evaluated_at=t0, artifact_sha256=exported or None,
            **_served, peak_vram_mb=round(peak_memory_mb(), 1)))
    if rejected:
        sys.exit(f"evaluation rejected: {rejected}; no val_bpb")
    collecting and gc.enable()  # as it was
    return val_bpb

# ---------------------------------------------------------------------------
# Harness: the checks and reports train.py calls. Plain numbers, never train.py's model: no edit of the model
# makes frozen code raise; a number left out (None) skips its check in one line; a train.py may call none.

# Dense bf16 peak FLOP/s by device-name substring, most specific first: MFU's denominator
GPU_BF16_PEAK_FLOPS = [
    ("GH200", 989.5e12), ("H200", 989.5e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989.5e12),
    ("H800", 989.5e12), ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362.05e12),
    ("L40", 181.05e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12), ("RTX 5090", 209.5e12),
    ("RTX 4090", 165.2e12), ("RTX 3090", 71e12), ("RTX A6000", 154.8e12)]
# A step's peak bytes ~ fixed + 16 a parameter (fp32 weights, grads, two optimizer buffers) + tokens a micro
# step * (a * depth * width + b * vocab), fitted within 6 % to peaks measured on cuda (bf16, compiled, H100,
# torch 2.11, batch x 2048 tokens; depth 8 at 32/64/128: 12.3/24.0/47.2 GB, 4 at 64: 7.7, 12 at 32: 26.5)
# and cpu (fp32, peak RSS, torch 2.9.1; depth 8 at 1, 2 x 2048: 2.5, 3.7 GB; 4 at 4, 16 x 512: 1.4, 2.9).
STEP_MEMORY = {"cuda": (0.0, 39, 2), "cpu": (0.6e9, 113, 15)}  # (fixed bytes, a, b); MPS: as cpu
MEMORY_NEEDS = ("num_params", "depth", "width", "vocab_size", "sequence_len")  # what _step_memory reads
# The whole run (_run_seconds) at GPU_EFFICIENCY x the bf16 peak, or CPU_EFFICIENCY x the fp32 rate of 1024^2
# matmuls: on 2 shared cores (load 3-4) steps ran at 0.07-0.21 of it, evaluation at 0.09-0.57 (idle: ~0.8).
CPU_EFFICIENCY = 0.2
GPU_EFFICIENCY = 0.4        # MFU 42 % of the default model on an H200 (README)
STARTUP_SECONDS = {"cuda": 60, "mps": 20, "cpu": 20}  # CUDA: a cold torch.compile (64 s outside the budget)
RUN_LIMIT_SECONDS = 600     # program.md runs train.py under `timeout 600`: a longer run is killed, a failure
PROGRESS_EVERY = 10         # seconds between progress lines when stdout is a file (run.log), not a terminal
CHECKPOINT = os.path.join("checkpoints", "model.pt")
DEVICE_NOTES = {"mps": "no CUDA GPU: no FA3, no torch.compile; peak_vram_mb: Metal's memory",
                "cpu": "no CUDA or MPS GPU: very slow; peak_vram_mb: peak resident memory"}
SMALL_COMPUTER_ADVICE = ("Lower DEPTH, DEVICE_BATCH_SIZE and TOTAL_BATCH_SIZE in train.py (and, as the "
                         "human, MAX_SEQ_LEN, EVAL_TOKENS and TIME_BUDGET in prepare.py): see README, "
                         "'Tuning for small computers'.")
# Set by preflight (out_of_memory's advice), print_progress and save_checkpoint (a failed evaluation names it)
_memory_at_start, _last_progress_print, _saved_checkpoint = None, 0.0, None

def gpu_peak_flops(name): return next((flops for key, flops in GPU_BF16_PEAK_FLOPS if key in name), None)

# ---------------------------------------------------------------------------
# Harness: before training (the device, the settings, the pre-flight estimates)

def setup_device(seed):
    """Seeds, matmul precision, the device line: (device, autocast, synchronize, bf16 peak FLOP/s or None)."""
    torch.manual_seed(seed)  # every device's generator, CUDA's too
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on CUDA (cuDNN's convolutions allow it already)
    device = _default_device()
    about = torch.cuda.get_device_name() if device.type == "cuda" else DEVICE_NOTES[device.type]
    line, peak = f"device: {device.type} ({about})", gpu_peak_flops(about) if device.type == "cuda" else None
    if not peak:  # the summary's format is fixed (a number with two decimals): there 0.00 stands for n/a
        line += ("; no bf16 peak in GPU_BF16_PEAK_FLOPS (prepare.py) for it, so MFU reads n/a in the "
                 "progress lines and 0.00 in the summary")
    print(line)
    sync = {"cuda": torch.cuda.synchronize, "mps": torch.mps.synchronize}.get(device.type, lambda: None)
    autocast = (contextlib.nullcontext() if device.type == "cpu"  # fp32: a CPU emulates bf16 matmuls, slowly
                else torch.amp.autocast(device_type=device.type, dtype=torch.bfloat16))
    return device, autocast, sync, peak

def check_batch(total_batch_size, device_batch_size):
    """The gradient-accumulation steps, or a one-line exit saying which setting to change."""
    if not all(isinstance(v, int) and v > 0 for v in (total_batch_size, device_batch_size)):
        sys.exit(f"DEVICE_BATCH_SIZE ({device_batch_size}) and TOTAL_BATCH_SIZE ({total_batch_size}) must be "
                 "positive integers (write 2**12 or 4096, not 4096.0).")
    if total_batch_size % (per_micro_step := device_batch_size * MAX_SEQ_LEN):
        sys.exit(f"TOTAL_BATCH_SIZE ({total_batch_size:,}) must be a multiple of DEVICE_BATCH_SIZE * "
                 f"MAX_SEQ_LEN ({device_batch_size} * {MAX_SEQ_LEN} = {per_micro_step:,}); change "
                 "DEVICE_BATCH_SIZE or TOTAL_BATCH_SIZE in train.py so that it divides.")
    return total_batch_size // per_micro_step

def or_exit(fn, *args):
    """fn(*args), or exit with prepare's one-line message if the data or tokenizer is missing or damaged."""
    try:
        return fn(*args)
    except (OSError, RuntimeError) as e:
        sys.exit(str(e))

def _positive(**numbers): return {k: v for k, v in numbers.items() if isinstance(v, (int, float)) and v > 0}

def _step_memory(size, batch_size, device_type):
    """STEP_MEMORY's estimate (bytes) for a model of `size` (MEMORY_NEEDS) at batch_size sequences."""
    fixed, a, b = STEP_MEMORY["cuda" if device_type == "cuda" else "cpu"]
    per_token = a * size["depth"] * size["width"] + b * size["vocab_size"]
    return fixed + 16 * size["num_params"] + batch_size * size["sequence_len"] * per_token

def _fitting_batch_size(size, device_type, memory, total_batch_size, failed_at=None):
    """The largest DEVICE_BATCH_SIZE below failed_at (it ran out of memory) that divides the batch and needs
    at most 90 % of `memory` (10 %: the CUDA context, fragmentation; any size if memory is None), or None."""
    T = size.get("sequence_len", MAX_SEQ_LEN)
    sizes = [b for b in range(1, failed_at or total_batch_size // T + 1) if total_batch_size % (b * T) == 0]
    if memory:
        fixed = _step_memory(size, 0, device_type)
        per_sequence = _step_memory(size, 1, device_type) - fixed
        if failed_at:  # it needed more than `memory`: trust the larger of that and the estimate
            per_sequence = max(per_sequence, (memory - fixed) / failed_at)
        sizes = [b for b in sizes if fixed + b * per_sequence <= 0.9 * memory]
    return max(sizes, default=None)

def _available_memory(device_type):
    """Free GPU memory, what MPS may take, or available RAM (bytes); None where unknown."""
    if device_type != "cpu":
        return torch.cuda.mem_get_info()[0] if device_type == "cuda" else torch.mps.recommended_max_memory()
    with contextlib.suppress(OSError, StopIteration), open("/proc/meminfo") as f:  # Linux only
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))

def _flop_rate(device_type):
    """FLOP/s expected of the model here, or None where unknown (a GPU not in GPU_BF16_PEAK_FLOPS)."""
    if device_type == "cuda":
        return (peak := gpu_peak_flops(torch.cuda.get_device_name())) and peak * GPU_EFFICIENCY  # or None
    m, n, t0 = torch.randn(1024, 1024, device=device_type), 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < 0.3:  # perf_counter: a test's fake time.time cannot skew it
        (m @ m).sum().item()
        n += 1
    return CPU_EFFICIENCY * n * 2 * 1024 ** 3 / (time.perf_counter() - t0)

def _run_seconds(device_type, flops_per_token, batch_size, total_batch_size, rate):
    """Seconds by part: 11 warm-up steps, the budget plus the step crossing it, evaluation forwards (1/3)."""
    step = total_batch_size * flops_per_token / rate
    eval_tokens = EVAL_TOKENS // (batch_size * MAX_SEQ_LEN) * batch_size * MAX_SEQ_LEN
    return {"start-up": STARTUP_SECONDS[device_type], "warm-up": 11 * step, "training": TIME_BUDGET + step,
            "evaluation": eval_tokens * flops_per_token / 3 / rate}

def _refuse_or_warn(device_type, problem, gpu_advice):
    """Stop on a CPU or MPS (else swapping, an OOM kill, a run killed at 600 s); warn on a GPU."""
    if device_type != "cuda":
        sys.exit(f"{problem}:\n{SMALL_COMPUTER_ADVICE}")
    print(f"warning: {problem}; {gpu_advice}")

def preflight(tokenizer, batch_size, total_batch_size, num_params=None, flops_per_token=None, depth=None,
              width=None, vocab_size=None, sequence_len=MAX_SEQ_LEN):
    """Before the heavy work, from train.py's plain numbers: vocabulary, a step's memory, run time, disk."""
    global _memory_at_start
    device_type, vocab = _default_device().type, tokenizer.get_vocab_size()
    size = _positive(num_params=num_params, flops_per_token=flops_per_token, depth=depth, width=width,
                     vocab_size=vocab_size, sequence_len=sequence_len)
    needs = {"vocabulary": ("vocab_size",), "memory": MEMORY_NEEDS, "time": ("flops_per_token",),
             "disk": ("num_params",)}
    missing = {check: [n for n in names if n not in size] for check, names in needs.items()}
    skipped = [f"{check} check ({', '.join(names)} not given)" for check, names in missing.items() if names]
    if skipped:
        print(f"pre-flight: no {'; no '.join(skipped)}")
    if not missing["vocabulary"] and vocab_size < vocab:  # else ids past its rows fail deep inside, later
        sys.exit(f"the model has {vocab_size:,} token embeddings but the tokenizer has {vocab:,} tokens: "
                 "build it with vocab_size=tokenizer.get_vocab_size().")
    memory = _memory_at_start = _available_memory(device_type)
    need = 0 if missing["memory"] else _step_memory(size, batch_size, device_type)
    if memory and need > memory:
        fit = _fitting_batch_size(size, device_type, memory, total_batch_size)
        advice = f"set DEVICE_BATCH_SIZE = {fit} in train.py." if fit else "lower DEPTH in train.py."
        _refuse_or_warn(device_type, f"DEVICE_BATCH_SIZE = {batch_size} at DEPTH = {depth} needs about "
                        f"{need / 1e9:.1f} GB (estimate), more than the {memory / 1e9:.1f} GB free on this "
                        f"{device_type}", f"if it runs out of memory, {advice}")
    rate = None if missing["time"] else _flop_rate(device_type)
    if rate:
        seconds = _run_seconds(device_type, flops_per_token, batch_size, total_batch_size, rate)
        parts, total = ", ".join(f"{part} {s:.0f} s" for part, s in seconds.items()), sum(seconds.values())
        print(f"pre-flight: the whole run should take about {total / 60:.1f} min ({parts})")
        lever = "TOTAL_BATCH_SIZE or DEPTH in train.py (the warm-up)"
        if seconds["evaluation"] > seconds["warm-up"]:
            lever = "DEPTH in train.py (or, as the human, EVAL_TOKENS in prepare.py: the evaluation)"
        if total > RUN_LIMIT_SECONDS:
            _refuse_or_warn(device_type, f"On this {device_type} the whole run would take about "
                            f"{total / 60:.0f} min ({parts}), over the {RUN_LIMIT_SECONDS} s program.md "
                            f"allows it: lower {lever}", "program.md's `timeout 600` would kill it.")
    elif not missing["time"]:
        print("pre-flight: no time check (this GPU's bf16 peak is not in GPU_BF16_PEAK_FLOPS)")
    folder = os.path.dirname(os.path.abspath(CHECKPOINT))
    free = shutil.disk_usage(folder if os.path.isdir(folder) else ".").free
    if not missing["disk"] and free < 4 * num_params:  # fp32 weights: else the save fails after training
        print(f"warning: {free / 1e6:.0f} MB free for {CHECKPOINT}, its weights need about "
              f"{4 * num_params / 1e6:.0f} MB: the checkpoint will not be saved (the run still trains and "
              "evaluates)")

def cache_compiled_graphs():
    """Let AOTAutograd's cache keep train.py's graphs (re-tracing costs a warm start ~9.5 s, H100), which it
    refuses for sdpa_kernel's helpers and custom autograd.Functions: both are traced into what it hashes."""
    import torch._functorch.config
    import torch._inductor.config
    torch._functorch.config.autograd_cache_allow_custom_autograd_functions = True
    for name in ("_backend_from_string", "_sdpa_kernel"):
        torch._inductor.config.unsafe_marked_cacheable_functions["torch.nn.attention." + name] = "1"

# ---------------------------------------------------------------------------
# Harness: during and after training (progress, out of memory, the checkpoint, peak memory)

def print_progress(line, step, last):
    """A terminal: one line, rewritten; a file (run.log): steps 0..10, one per PROGRESS_EVERY s, the last."""
    global _last_progress_print
    if sys.stdout.isatty():
        print(f"\r{line}    ", end="\n" if last else "", flush=True)
    elif step <= 10 or last or time.time() - _last_progress_print >= PROGRESS_EVERY:  # tail -n 50: a few KB
        print(line, flush=True)
        _last_progress_print = time.time()

def out_of_memory(e, batch_size, total_batch_size, **model_size):
    """Re-raise `e` unless out of memory; then exit naming a DEVICE_BATCH_SIZE that should fit."""
    if not (isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()):
        raise e
    size = _positive(**{"sequence_len": MAX_SEQ_LEN, **model_size})
    memory = _memory_at_start if all(n in size for n in MEMORY_NEEDS) else None  # no size: no estimate
    fit = _fitting_batch_size(size, _default_device().type, memory, total_batch_size, failed_at=batch_size)
    advice = ", and no smaller size would fit: lower DEPTH in train.py."
    if fit:
        advice = (f". Lower DEVICE_BATCH_SIZE in train.py, keeping TOTAL_BATCH_SIZE divisible by "
                  f"DEVICE_BATCH_SIZE * MAX_SEQ_LEN: e.g. {fit} with TOTAL_BATCH_SIZE = {total_batch_size} "
                  f"gives {total_batch_size // (fit * MAX_SEQ_LEN)} micro steps per step.")
    sys.exit(f"\nOut of memory at DEVICE_BATCH_SIZE = {batch_size}{advice}")

def save_checkpoint(model, path=CHECKPOINT):
    """The weights, via a temporary name: a failed save says so in one line and keeps an earlier file."""
    global _saved_checkpoint
    tmp = path + ".tmp"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
        _saved_checkpoint = os.path.abspath(path)
        print(f"saved weights: {path}")
    except (OSError, RuntimeError) as e:  # torch.save: "PytorchStreamWriter failed writing file ..."
        with contextlib.suppress(OSError):
            os.remove(tmp)
        kept, reason = "; the earlier file is kept" * os.path.exists(path), " ".join(str(e).split())[:120]
        print(f"could not save the weights to {path} ({reason}){kept}; evaluating anyway")

def peak_memory_mb():
    """MB: CUDA's peak allocation; on MPS (no peak kept) the Metal driver's memory now; on a CPU peak RSS."""
    device_type = _default_device().type
    if device_type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    if device_type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    if sys.platform == "win32":  # native Windows: no getrusage
        return 0.0
    import resource  # ru_maxrss: KB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)

# ---------------------------------------------------------------------------
# Main

def move_old_layout():
    """Moves the flat data/ and tokenizer/ of the original (ClimbMix) and of ours before data sets came in."""
    data, tokenizer = os.path.join(CACHE_DIR, "data"), os.path.join(CACHE_DIR, "tokenizer")
    shards = sorted(n for n in (os.listdir(data) if os.path.isdir(data) else []) if n.startswith("shard_"))
    if shards:
        # ClimbMix's validation shard first: its shard 1822 is a training shard, FineWeb-Edu has no 6542
        dataset = next((name for name in ("climbmix", "fineweb-edu")
                        if shard_filename(DATASETS[name]["val"]) in shards), None)
        if dataset is None:
            sys.exit(f"error: {data} holds {len(shards)} shard files of an old layout but no validation "
                     "shard (shard_06542.parquet: ClimbMix, shard_01822.parquet: FineWeb-Edu), so their data "
                     f"set is unknown: move them by hand into {data}/climbmix or {data}/fineweb-edu and run "
                     "prepare.py again")
        val = shard_filename(DATASETS[dataset]["val"])
        _move(shards, data, cache_dirs(dataset)[0], f"shard files of an old layout ({dataset}: {val} is one)")
        if dataset != DATASET:
            print(f'to train on them, set DATASET = "{dataset}" in prepare.py')
        if original := [n for n in ("tokenizer.pkl", "token_bytes.pt") if os.path.isfile(f"{tokenizer}/{n}")]:
            print(f"left {' and '.join(original)} in {tokenizer}: the original's tokenizer, a pickle, which "
                  "this project never loads (it trains its own)")
    ours = [n for n in ("tokenizer.tiktoken", "tokenizer.json") if os.path.isfile(f"{tokenizer}/{n}")]
    if ours:
        _move(ours, tokenizer, f"{tokenizer}/fineweb-edu-8192", "tokenizer files of an old layout")

def _move(names, old, new, what):
    """Rename `names` from folder `old` into `new`, keeping any file of the same name already in `new`."""
    make_dirs(new)
    kept = [n for n in names if os.path.exists(os.path.join(new, n))]
    try:
        for name in [n for n in names if n not in kept]:
            os.replace(os.path.join(old, name), os.path.join(new, name))
    except OSError as e:
        raise WriteError(os.path.join(old, name), e) from None
    left = f" ({len(kept)} left in {old}: {new} has files of the same names)" if kept else ""
    print(f"moved {len(names) - len(kept)} {what} from {old} to {new}{left}")

def main(args=None):
    args = args or parse_args()
    print(f"cache: {CACHE_DIR}")
    if args.dataset == "tinystories" and VOCAB_SIZE > 4096:  # the original suggests 4096 down to 256 for it
        print(f"warning: VOCAB_SIZE = {VOCAB_SIZE} for TinyStories: README's small-computer recipe sets "
              f"VOCAB_SIZE = 2048 in prepare.py (this run trains a tokenizer of {VOCAB_SIZE}, as set)",
              file=sys.stderr)
    (data_dir, tokenizer_dir), then = cache_dirs(args.dataset), "fetch the rest"  # then: after a Ctrl-C
    try:
        move_old_layout()
        download_data(args.num_shards, args.download_workers, dataset=args.dataset)
        shards = len(split_row_ranges("train", data_dir, args.dataset))
        if "file" not in DATASETS[args.dataset] and shards > args.num_shards:  # fine, but not what was asked
            print(f"data: training uses all {shards} training shards on disk, not only the {args.num_shards} "
                  "asked for")
        then = "train the tokenizer (nothing is downloaded again)"
        try:
            Tokenizer.from_directory(tokenizer_dir)
            print(f"tokenizer: already trained in {tokenizer_dir}")
        except FileNotFoundError as e:  # missing, or damaged (TokenizerError)
            if isinstance(e, TokenizerError):
                print(f"tokenizer: {e.problem}; training it again")
            train_tokenizer(data_dir, tokenizer_dir, args.dataset)
    except (RuntimeError, FileNotFoundError) as e:  # one line: what failed and what to do, not a traceback
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        names = os.listdir(data_dir) if os.path.isdir(data_dir) else []
        for tmp in (name for name in names if name.endswith(".tmp")):  # downloads cut short
            with contextlib.suppress(OSError):  # its worker may have removed it meanwhile
                os.remove(os.path.join(data_dir, tmp))
        sys.stdout.flush()
        print(f"\ninterrupted: kept the {sum(n.endswith('.parquet') for n in names)} complete files in "
              f"{data_dir}; run prepare.py again to {then}", file=sys.stderr, flush=True)
        os._exit(130)  # at once (a stalled read or rustbpe would hold up sys.exit); 130: Ctrl-C
    change = "" if args.dataset == DATASET else f'set DATASET = "{args.dataset}" in prepare.py, then '
    print(f"ready: {change}run `uv run train.py`")

_PIN, _unpinned = (audit.pin(globals()), audit.unpinned) if audit else ((), lambda _: None)  # at import

if __name__ == "__main__":
    main(ARGS)
