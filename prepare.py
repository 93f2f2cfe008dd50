"""
One-time data preparation for autoresearch, plus the runtime utilities train.py imports.
This file is frozen: the agent never edits it (it owns the data and the evaluation).

    uv run prepare.py                  # 10 training shards + the validation shard, then the tokenizer
    uv run prepare.py --num-shards -1  # all 1822 training shards

Everything lands in ~/.cache/autoresearch (or $AUTORESEARCH_CACHE_DIR).
"""

import argparse
import base64
import bisect
import collections
import json
import math
import os
import queue
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
import pyarrow.parquet as pq
import requests
import tiktoken
import torch

# ---------------------------------------------------------------------------
# Constants (fixed: changing them changes what val_bpb means)

MAX_SEQ_LEN = 2048          # context length of training and evaluation
TIME_BUDGET = 300           # seconds of training (wall clock, compilation excluded)
EVAL_TOKENS = 40 * 524288   # tokens scored by evaluate_bpb

CACHE_DIR = os.environ.get("AUTORESEARCH_CACHE_DIR") or os.path.expanduser("~/.cache/autoresearch")
DATA_DIR = os.path.join(CACHE_DIR, "data")
TOKENIZER_DIR = os.path.join(CACHE_DIR, "tokenizer")

DATASET_PATH = "datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
MAX_SHARD = 1822                                  # shards 0 ... 1822 exist
VAL_SHARD = MAX_SHARD                             # the last one is pinned for validation
VAL_FILENAME = f"shard_{VAL_SHARD:05d}.parquet"
DOWNLOAD_ATTEMPTS = 5
CHUNK_BYTES = 1 << 20                             # 1 MiB: Ctrl-C is seen between chunks

VOCAB_SIZE = 8192
SPECIAL_TOKENS = [f"<|reserved_{i}|>" for i in range(4)]
BOS_TOKEN = SPECIAL_TOKENS[0]
# GPT-4 style split, but digits grouped by one or two (not three): better for a small vocabulary
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}|"""
                 r""" ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""")
TOKENIZER_MAX_CHARS, TOKENIZER_DOC_CHARS = 1_000_000_000, 10_000  # BPE trains on 1e9 chars, <= 1e4 a document
ROUNDTRIP_TEXT = ("Hello world! 12,345 apples cost $6.78 (a 9% rise)...\n\t"
                  "naïve café — 日本語のテキスト, Привет мир 🙂")


def shard_filename(index):
    return f"shard_{index:05d}.parquet"


def base_url():
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    if not endpoint.startswith(("http://", "https://")):  # requests would fail only after all the retries
        sys.exit(f"error: HF_ENDPOINT={endpoint!r} must start with http:// or https://, "
                 "e.g. HF_ENDPOINT=https://hf-mirror.com")
    return f"{endpoint.rstrip('/')}/{DATASET_PATH}"

# ---------------------------------------------------------------------------
# Download


def check_shard(path):
    """Raise if `path` is not a readable parquet file with a `text` column (reads only the footer)."""
    schema = pq.ParquetFile(path).schema_arrow
    if "text" not in schema.names:
        raise ValueError(f"no 'text' column (columns: {schema.names})")


class ShardMissing(RuntimeError):
    """The server answered that it does not have a shard: final, retrying cannot help."""


class Progress:
    """One line of download progress, rewritten in place (throttled; one thread at a time)."""

    def __init__(self, total):
        self.total, self.done, self.bytes, self.t0, self.last = total, 0, 0, time.time(), 0.0
        self.lock = threading.Lock()

    def update(self, nbytes=0, shard_done=False):
        with self.lock:
            self.bytes += nbytes
            self.done += shard_done
            now = time.time()
            if shard_done or now - self.last > 0.5:
                mb, self.last = self.bytes / 1e6, now
                print(f"\rdownloading: {self.done}/{self.total} shards, {mb:.1f} MB, "
                      f"{mb / max(now - self.t0, 1e-9):.1f} MB/s   ", end="", flush=True)


def download_shard(index, data_dir, url_base, progress=None, stop=None, attempts=DOWNLOAD_ATTEMPTS):
    """Download one shard into data_dir (if missing or corrupt); None if `stop` is set before it is done.
    Raises ShardMissing at once on a 4xx answer, RuntimeError after `attempts` failures of any other kind."""
    stop = stop or threading.Event()
    update = progress.update if progress else lambda nbytes=0, shard_done=False: None
    name = shard_filename(index)
    path, tmp = os.path.join(data_dir, name), os.path.join(data_dir, name + ".tmp")
    if os.path.exists(path):
        try:
            check_shard(path)
            update(shard_done=True)
            return path
        except Exception as e:
            print(f"\n{name} on disk is unreadable ({e}); downloading it again")
            os.remove(path)
    for attempt in range(attempts):
        if stop.wait(2 ** attempt) if attempt else stop.is_set():  # retry after 2, 4, 8 s; Ctrl-C ends it
            return None
        try:
            with requests.get(f"{url_base}/{name}", stream=True, timeout=(10, 60)) as r:
                if 400 <= r.status_code < 500 and r.status_code not in (408, 429):  # 408/429 mean "later"
                    raise ShardMissing(f"{name}: the server does not have it (HTTP {r.status_code})")
                r.raise_for_status()
                expected, received = r.headers.get("Content-Length"), 0
                with open(tmp, "wb") as f:
                    for chunk in r.raw.stream(CHUNK_BYTES, decode_content=False):
                        if stop.is_set():  # Ctrl-C, or another shard found the server unreachable
                            return None
                        f.write(chunk)
                        received += len(chunk)
                        update(len(chunk))
            if expected is not None and received != int(expected):
                raise IOError(f"truncated body: {received} of {expected} bytes")
            check_shard(tmp)
            os.replace(tmp, path)  # only a complete, verified file ever carries the final name
            update(shard_done=True)
            return path
        except ShardMissing:
            raise
        except Exception as e:  # network errors, 5xx, truncation, unreadable parquet: all retried
            error = e
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    if isinstance(error, requests.ConnectionError):
        stop.set()  # never connected in 5 tries: the server is down; spare the others ~30 s of backoff each
    raise RuntimeError(f"{name}: failed {attempts} attempts, last error: {type(error).__name__}: {error}")


def download_data(num_shards, workers, data_dir=None, stop=None):
    """Download training shards 0..num_shards-1 plus the validation shard. Exits non-zero on failure."""
    data_dir = data_dir or DATA_DIR
    url_base = base_url()
    os.makedirs(data_dir, exist_ok=True)
    indices = list(range(num_shards)) + [VAL_SHARD]
    progress = Progress(len(indices))
    stop = stop or threading.Event()  # set on Ctrl-C, or by a shard that finds the server unreachable
    pool = ThreadPoolExecutor(max_workers=workers)  # not `with`: its exit would wait for every download
    futures = [pool.submit(download_shard, i, data_dir, url_base, progress, stop) for i in indices]

    def ready():
        return sum(os.path.exists(os.path.join(data_dir, shard_filename(i))) for i in indices)

    try:
        while wait(futures, timeout=0.5).not_done:  # not f.result(): it would not see Ctrl-C
            pass
    except KeyboardInterrupt:
        stop.set()
        wait(futures, timeout=2)  # workers stop between 1 MiB chunks and remove their partial .tmp files
        print(f"\ninterrupted: kept the {ready()} complete shards in {data_dir}; "
              "run prepare.py again to fetch the rest", file=sys.stderr, flush=True)
        sys.stdout.flush()  # os._exit skips it
        os._exit(130)  # not sys.exit: a worker stuck in a stalled read (60 s timeout) would hold up the exit
    pool.shutdown()
    print()
    errors = [f.exception() for f in futures if f.exception()]
    if errors:
        print(*(f"error: download failed for {e}" for e in errors), sep="\n", file=sys.stderr)
        print(f"error: {ready()} of {len(indices)} shards are ready in {data_dir} (from {url_base}). " + (
            "The server does not have every shard asked for: "
            "use a smaller --num-shards (or check HF_ENDPOINT)."
            if any(isinstance(e, ShardMissing) for e in errors) else
            ("The server is unreachable, so the other downloads were stopped. " if stop.is_set() else "") +
            "Check your network (or point HF_ENDPOINT at a mirror) and run prepare.py again: "
            "finished shards are kept."), file=sys.stderr)
        sys.exit(1)
    print(f"data: {ready()} of {len(indices)} shards ready in {data_dir}")

# ---------------------------------------------------------------------------
# Tokenizer training


def list_shards(split, data_dir=None):
    """Parquet files of a split, in sorted name order: `val` is the pinned shard, `train` all the others."""
    data_dir = data_dir or DATA_DIR
    names = sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else []
    names = [n for n in names if n.endswith(".parquet") and (n == VAL_FILENAME) == (split == "val")]
    if not names:
        raise FileNotFoundError(f"no {split} shards in {data_dir}: run `uv run prepare.py` first")
    return [os.path.join(data_dir, n) for n in names]


def train_tokenizer(data_dir=None, tokenizer_dir=None):
    tokenizer_dir = tokenizer_dir or TOKENIZER_DIR
    import rustbpe  # only needed here, not at training time

    def texts():  # training documents in file and row order, each cut short, TOKENIZER_MAX_CHARS in all
        total = 0
        for path in list_shards("train", data_dir):
            for batch in pq.ParquetFile(path).iter_batches(columns=["text"]):
                for text in batch.column("text").to_pylist():
                    yield text[:TOKENIZER_DOC_CHARS]
                    total += min(len(text), TOKENIZER_DOC_CHARS)
                    if total >= TOKENIZER_MAX_CHARS:
                        return

    t0, bpe = time.time(), rustbpe.Tokenizer()
    bpe.train_from_iterator(texts(), VOCAB_SIZE - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    ranks = sorted(bpe.get_mergeable_ranks(), key=lambda token_rank: token_rank[1])
    specials = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
    # tiktoken's base64 rank file plus JSON: loading runs no code (the original pickled the Encoding)
    rank_text = "".join(f"{base64.b64encode(bytes(t)).decode()} {r}\n" for t, r in ranks)
    meta_text = json.dumps({"pattern": bpe.get_pattern(), "special_tokens": specials}, indent=1)
    os.makedirs(tokenizer_dir, exist_ok=True)
    for name, text in [("tokenizer.tiktoken", rank_text), ("tokenizer.json", meta_text)]:
        path = os.path.join(tokenizer_dir, name)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)  # never a half-written file under the final name
    tokenizer = Tokenizer.from_directory(tokenizer_dir)
    if tokenizer.decode(tokenizer.encode(ROUNDTRIP_TEXT)) != ROUNDTRIP_TEXT:
        sys.exit(f"error: the trained tokenizer does not round-trip {ROUNDTRIP_TEXT!r}; "
                 f"delete {tokenizer_dir} and retry")
    print(f"tokenizer: vocab {tokenizer.get_vocab_size()} trained in {time.time() - t0:.1f}s, "
          f"saved to {tokenizer_dir}")

# ---------------------------------------------------------------------------
# Runtime utilities (imported by train.py)


class TokenizerError(FileNotFoundError):
    """A damaged saved tokenizer: a FileNotFoundError like a missing one (one `except` for both), one line."""

    def __init__(self, path, problem):
        self.problem = f"{path} {problem}"
        super().__init__(f"{self.problem}: run `uv run prepare.py` to train the tokenizer again")


class Tokenizer:
    """A tiktoken Encoding (the BPE learned above) with the BOS token and byte counts for bits-per-byte."""

    def __init__(self, enc):
        self.enc = enc
        self.bos_token_id = enc.encode_single_token(BOS_TOKEN)
        # Bytes per token from the raw bytes (decoding a partial UTF-8 token to text would count U+FFFD as 3)
        special_ids = set(enc._special_tokens.values())
        self.token_bytes = torch.tensor([0 if i in special_ids else len(enc.decode_single_token_bytes(i))
                                         for i in range(enc.n_vocab)], dtype=torch.int32)

    @classmethod
    def from_directory(cls, dir=TOKENIZER_DIR, tokenizer_dir=None):  # tokenizer_dir=: the original's keyword
        """The saved tokenizer, checked: a damaged one raises TokenizerError, not a traceback."""
        dir = tokenizer_dir or dir
        rank_file, meta_file = os.path.join(dir, "tokenizer.tiktoken"), os.path.join(dir, "tokenizer.json")
        if not (os.path.exists(rank_file) and os.path.exists(meta_file)):
            raise FileNotFoundError(f"no tokenizer in {dir}: run `uv run prepare.py` first")
        n = VOCAB_SIZE - len(SPECIAL_TOKENS)
        try:  # a line cut short, not base64 or not a number: ValueError
            with open(rank_file) as f:
                ranks = {base64.b64decode(token, validate=True): int(rank)
                         for token, rank in (line.split() for line in f.read().splitlines() if line)}
        except ValueError as e:
            raise TokenizerError(rank_file, f"has a line that is not `<base64 token> <rank>` ({e})") from None
        if sorted(ranks.values()) != list(range(n)):
            raise TokenizerError(rank_file, f"does not hold each rank 0..{n - 1} once ({len(ranks)} tokens)")
        try:  # not JSON, no pattern (KeyError), a pattern tiktoken rejects, other special tokens
            with open(meta_file) as f:
                meta = json.load(f)
            if meta["special_tokens"] != {name: n + i for i, name in enumerate(SPECIAL_TOKENS)}:
                raise ValueError(f"special tokens are not {', '.join(SPECIAL_TOKENS)} = {n}..{n + 3}")
            return cls(tiktoken.Encoding(name="autoresearch", pat_str=meta["pattern"], mergeable_ranks=ranks,
                                         special_tokens=meta["special_tokens"]))
        except (ValueError, KeyError, TypeError) as e:
            raise TokenizerError(meta_file, f"is damaged ({type(e).__name__}: {e})") from None

    def get_vocab_size(self):
        return self.enc.n_vocab

    def get_bos_token_id(self):
        return self.bos_token_id

    def encode(self, text, prepend=None, num_threads=8):
        if prepend is not None and not isinstance(prepend, int):
            prepend = self.enc.encode_single_token(prepend)
        head = [] if prepend is None else [prepend]
        if isinstance(text, str):
            return head + self.enc.encode_ordinary(text)
        return [head + ids for ids in self.enc.encode_ordinary_batch(text, num_threads=num_threads)]

    def decode(self, ids):
        return self.enc.decode(ids)


def get_token_bytes(device="cpu"):  # the original's helper
    return Tokenizer.from_directory(TOKENIZER_DIR).token_bytes.to(device)


def _default_device():
    mps = torch.backends.mps.is_available()
    return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")


def _document_batches(split, batch_docs=128):
    """Endless (texts, epoch): documents of the split in file, row-group and row order, in lists of <= 128."""
    paths, epoch = list_shards(split), 1
    try:
        while True:
            for path in paths:
                pf = pq.ParquetFile(path)
                for rg in range(pf.num_row_groups):
                    texts = pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
                    for i in range(0, len(texts), batch_docs):
                        yield texts[i:i + batch_docs], epoch
            epoch += 1
    except (OSError, ValueError) as e:
        raise RuntimeError(f"cannot read {path} ({e}): delete it and run `uv run prepare.py` again") from e


def _pack_batches(tokenizer, B, T, split, buffer_size, stop, free, ready, lookahead=16):
    """The loader's thread: packs B rows of T + 1 tokens best-fit (spec) into a buffer from `free`, then puts
    it on `ready`. Documents are indexed by length (sorted lengths, a FIFO each): best fit is a bisect."""
    head, enc = np.array([tokenizer.get_bos_token_id()], dtype=np.uint32), tokenizer.enc

    def encode(texts):  # in a worker thread: numpy, no Python int lists (the GIL is what limits throughput)
        return [np.concatenate((head, enc.encode_to_numpy(t, disallowed_special=()))) for t in texts]

    docs = _document_batches(split)
    pool = ThreadPoolExecutor(max(1, min(8, (os.cpu_count() or 2) - 1)),  # a core left for the caller
                              thread_name_prefix="dataloader-tokenize")
    pending = collections.deque()  # tokenization runs ahead, in order
    lengths, by_length = [], collections.defaultdict(collections.deque)
    count, epoch = 0, 1

    def refill():
        nonlocal count, epoch
        while len(pending) < lookahead:
            texts, e = next(docs)
            pending.append((pool.submit(encode, texts), e))
        future, epoch = pending.popleft()
        for doc in future.result():
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
            view = host.numpy()
            view[0], view[1] = rows[:, :-1], rows[:, 1:]
            ready.put((host, epoch))
    except BaseException as e:  # hand the error to the consumer instead of dying silently
        ready.put((e, None))
    finally:  # wait for the encodes in flight: no loader thread may still be in native code at exit
        pool.shutdown(wait=True, cancel_futures=True)


def make_dataloader(tokenizer, B, T, split, buffer_size=1000):
    """Endless (inputs, targets, epoch): int64 (B, T) tensors on the training device, packed ahead by a
    background thread. close() stops and joins the loader's threads."""
    assert split in ("train", "val"), split
    # Fail now if data is missing or unreadable, the validation shard too (else found only after training)
    paths = list_shards(split) + (list_shards("val") if split == "train" else [])
    try:
        for path in paths:
            check_shard(path)  # the footer only: cheap
    except (OSError, ValueError) as e:
        raise RuntimeError(f"cannot read {path} ({e}): delete it and run `uv run prepare.py` again") from None
    loader = _loader(tokenizer, B, T, split, buffer_size)
    next(loader)  # to its first yield: the packing thread starts now, while the caller builds its model
    return loader


def _loader(tokenizer, B, T, split, buffer_size):
    device = _default_device()
    cuda = device.type == "cuda"
    stop = threading.Event()
    ready, free = queue.Queue(), queue.Queue()
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
            yield batch[0], batch[1], epoch
    finally:
        stop.set()
        free.put((None, None))
        thread.join(timeout=30)  # it stops at its next batch: well under a second (30: a generous bound)


@torch.no_grad()
def evaluate_bpb(model, tokenizer, batch_size):
    """Bits per byte on the pinned validation shard: vocabulary-independent, comparable across tokenizers."""
    loader = make_dataloader(tokenizer, batch_size, MAX_SEQ_LEN, "val")
    device = _default_device()  # where the loader puts the batches
    token_bytes = tokenizer.token_bytes.to(device)
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    total_nats = total_bytes = 0  # become tensors on the device: no host sync per batch
    for _ in range(EVAL_TOKENS // (batch_size * MAX_SEQ_LEN)):
        x, y, _ = next(loader)
        losses = model(x, y, reduction="none").reshape(-1)
        nbytes = token_bytes[y.reshape(-1)]
        counted = nbytes > 0  # special tokens (BOS) stand for no bytes and are not scored
        total_nats = total_nats + torch.where(counted, losses.float(), 0.0).sum().to(acc_dtype)
        total_bytes = total_bytes + nbytes.sum()
    loader.close()
    return float(total_nats) / (math.log(2) * float(total_bytes))

# ---------------------------------------------------------------------------
# Main


def main():
    parser = argparse.ArgumentParser(
        description="Download FineWeb-Edu shards and train the tokenizer for autoresearch (run once).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="environment variables:\n"
        "  AUTORESEARCH_CACHE_DIR  cache root for data/ and tokenizer/ (default: ~/.cache/autoresearch)\n"
        "  HF_ENDPOINT             hub (or mirror) to download shards from (default: https://huggingface.co)")
    parser.add_argument("--num-shards", type=int, default=10,
                        help=f"training shards to download, -1 for all {MAX_SHARD} (default: 10); "
                             "the validation shard is always added")
    parser.add_argument("--download-workers", type=int, default=8, help="parallel downloads (default: 8)")
    args = parser.parse_args()
    if args.num_shards != -1 and not 1 <= args.num_shards <= MAX_SHARD:
        parser.error(f"--num-shards must be between 1 and {MAX_SHARD}, or -1 for all")
    if args.download_workers < 1:
        parser.error("--download-workers must be at least 1")
    print(f"cache: {CACHE_DIR}")
    download_data(MAX_SHARD if args.num_shards == -1 else args.num_shards, args.download_workers)
    try:
        Tokenizer.from_directory(TOKENIZER_DIR)
        print(f"tokenizer: already trained in {TOKENIZER_DIR}")
    except FileNotFoundError as e:  # missing, or damaged (TokenizerError)
        if isinstance(e, TokenizerError):
            print(f"tokenizer: {e.problem}; training it again")
        train_tokenizer()
    print("ready: run `uv run train.py`")


if __name__ == "__main__":
    main()
