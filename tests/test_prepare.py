"""prepare.py: downloads against a real loopback server, the tokenizer, the dataloader and evaluate_bpb."""
import base64
import collections
import contextlib
import errno
import gc
import hashlib
import json
import math
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from common import ROOT, cpu_env, run_script, shrunk_copy, write_shard

import audit
import prepare

# the default data set's folders in the cache
DATA, TOKENIZER = "data/fineweb-edu", "tokenizer/fineweb-edu-8192"

# ---------------------------------------------------------------------------
# Generated data and a loopback shard server


def make_text(rng, n_docs, marker=""):
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "sh", "qu", "ng"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(20000)]
    extras = ["café", "<|reserved_1|>", "naïve", "日本語", "Привет", "🙂", "x=3.14;", "(see §2)", "e-mail",
              "C++", "\tTab"]
    docs = []
    for _ in range(n_docs):
        out = [marker] if marker else []
        for _ in range(rng.randint(5, 400)):
            r = rng.random()
            if r < 0.05:
                out.append(str(rng.randint(0, 99999)))
            elif r < 0.08:
                out.append(rng.choice(extras))
            elif r < 0.6:
                out.append(rng.choice(words))
            else:  # Zipf-like: a few words very often
                out.append(words[min(int(rng.paretovariate(0.9)), len(words)) - 1])
            if rng.random() < 0.08:
                out.append(rng.choice([".", ",", "!", "?", ":\n", ".\n\n"]))
        docs.append(" ".join(out))
    return docs


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """Two training shards and the validation shard, as the hub serves them."""
    d = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    write_shard(d / "shard_00000.parquet", make_text(rng, 900), row_group_size=64)
    write_shard(d / "shard_00001.parquet", make_text(rng, 900), row_group_size=64)
    write_shard(d / prepare.VAL_FILENAME, make_text(rng, 150, marker="VALIDATION"), row_group_size=64)
    return d


class ShardServer:
    """Serves a folder like the hub: GET .../resolve/main/<name>. Can answer 503 or cut bodies short at
    first."""

    def __init__(self, folder, fail_first=0, truncate_first=0, stall=(), digests=None):
        self.requests, self.paths = collections.Counter(), []
        self.closed = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                path = os.path.join(folder, name)
                server.requests[name] += 1
                server.paths.append(self.path)
                n = server.requests[name]
                if not os.path.exists(path):
                    return self.send_error(404)
                if n <= fail_first:
                    return self.send_error(503)
                data = open(path, "rb").read()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                if digests is not None:  # as the hub names an LFS file's sha256
                    digest = digests.get(name) or hashlib.sha256(data).hexdigest()
                    self.send_header("X-Linked-Etag", f'"{digest}"')
                self.end_headers()
                if name in stall:  # half the body, then nothing until the server closes
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    return server.closed.wait()
                self.wfile.write(data[: len(data) // 2] if n <= fail_first + truncate_first else data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.closed.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class NoWait(threading.Event):
    """A stop Event for the downloads whose waits (the backoff) return at once, recording their seconds."""

    def __init__(self):
        super().__init__()
        self.waits = []

    def wait(self, timeout=None):
        self.waits.append(timeout)
        return self.is_set()


@pytest.fixture
def no_sleep():
    return NoWait()


def serve(monkeypatch, folder, **kw):
    server = ShardServer(folder, **kw)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    return server

# ---------------------------------------------------------------------------
# Download


def test_download_fetches_each_shard_intact(monkeypatch, corpus, tmp_path):
    server = serve(monkeypatch, corpus)
    prepare.download_data(2, 3, data_dir=str(tmp_path))
    server.close()
    names = ["shard_00000.parquet", "shard_00001.parquet", prepare.VAL_FILENAME]
    assert sorted(os.listdir(tmp_path)) == names
    for name in names:
        assert (tmp_path / name).read_bytes() == (corpus / name).read_bytes()
    assert all(server.requests[n] == 1 for n in names)


def test_download_retries_503_with_backoff(monkeypatch, corpus, tmp_path, no_sleep):
    server = serve(monkeypatch, corpus, fail_first=2)
    prepare.download_shard("shard_00000.parquet", str(tmp_path), prepare.base_url(), stop=no_sleep)
    server.close()
    assert server.requests["shard_00000.parquet"] == 3
    assert no_sleep.waits == [2, 4]  # 2**attempt seconds between attempts
    assert (tmp_path / "shard_00000.parquet").read_bytes() == (corpus / "shard_00000.parquet").read_bytes()


def test_truncated_body_is_retried_and_never_kept(monkeypatch, corpus, tmp_path, no_sleep):
    server = serve(monkeypatch, corpus, truncate_first=1)
    prepare.download_shard("shard_00001.parquet", str(tmp_path), prepare.base_url(), stop=no_sleep)
    assert server.requests["shard_00001.parquet"] == 2
    assert (tmp_path / "shard_00001.parquet").read_bytes() == (corpus / "shard_00001.parquet").read_bytes()
    server.close()
    # a server that always truncates: all 5 attempts fail and no file, final or partial, is left
    server = serve(monkeypatch, corpus, truncate_first=100)
    with pytest.raises(RuntimeError,
                       match=r"shard_00000.parquet: failed 5 attempts.*(IncompleteRead|truncated)"):
        prepare.download_shard("shard_00000.parquet", str(tmp_path), prepare.base_url(), stop=no_sleep)
    server.close()
    assert server.requests["shard_00000.parquet"] == 5
    assert sorted(os.listdir(tmp_path)) == ["shard_00001.parquet"]


def test_corrupt_shard_on_disk_is_downloaded_again(monkeypatch, corpus, tmp_path):
    good = (corpus / "shard_00000.parquet").read_bytes()
    (tmp_path / "shard_00000.parquet").write_bytes(good[: len(good) // 3])  # a truncated leftover
    write_shard(tmp_path / "shard_00001.parquet", ["x"])  # a valid shard: kept as it is
    pq.write_table(pa.table({"body": ["no text column"]}), tmp_path / prepare.VAL_FILENAME)
    server = serve(monkeypatch, corpus)
    prepare.download_data(2, 2, data_dir=str(tmp_path))
    server.close()
    assert (tmp_path / "shard_00000.parquet").read_bytes() == good
    assert pq.read_table(tmp_path / "shard_00001.parquet").column("text").to_pylist() == ["x"]
    assert server.requests == {"shard_00000.parquet": 1, prepare.VAL_FILENAME: 1}


def test_unreachable_server_says_which_shard_and_keeps_what_is_there(monkeypatch, corpus, tmp_path, no_sleep,
                                                                       capsys):
    kept = (corpus / "shard_00000.parquet").read_bytes()
    (tmp_path / "shard_00000.parquet").write_bytes(kept)
    server = ShardServer(corpus)
    server.close()  # a port that nothing listens on any more
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    # one worker: shard 1 exhausts its attempts, the rest is stopped
    with pytest.raises(RuntimeError) as info:
        prepare.download_data(2, 1, data_dir=str(tmp_path), stop=no_sleep)
    out, err = capsys.readouterr()
    assert "shard_00001.parquet: failed 5 attempts" in err and "ConnectionError" in err
    assert prepare.VAL_FILENAME not in err + str(info.value) and "unreachable" in str(info.value)
    assert str(info.value).startswith("1 of 3 files are ready") and "HF_ENDPOINT" in str(info.value)
    assert out.split("\r")[-1].startswith("downloading: 1/3 files")  # failed files are not counted as done
    # each wait of the ~30 s of backoff is announced: which shard, which attempt, how long
    assert [line for line in out.split("\n") if "retrying" in line] == [
        f"shard_00001.parquet: attempt {n} of 5 failed (ConnectionError), retrying in {2 ** n} s"
        for n in (1, 2, 3, 4)]
    assert sorted(os.listdir(tmp_path)) == ["shard_00000.parquet"]
    assert (tmp_path / "shard_00000.parquet").read_bytes() == kept


# ---------------------------------------------------------------------------
# prepare.py end to end (subprocess), then the tokenizer it trained


@pytest.fixture(scope="session")
def prepared(corpus, tmp_path_factory):
    """Runs `prepare.py --num-shards 2` twice against a loopback server; returns (cache dir, outputs,
    server)."""
    cache = tmp_path_factory.mktemp("cache")
    server = ShardServer(corpus)
    env = cpu_env(cache, HF_ENDPOINT=server.url)
    runs = [run_script(ROOT, "prepare.py", "--num-shards", "2", env=env, timeout=600) for _ in range(2)]
    server.close()
    return cache, runs, server


@pytest.fixture(scope="session")
def tok(prepared):
    return prepare.Tokenizer.from_directory(str(prepared[0] / TOKENIZER))


@pytest.fixture
def data_dir(prepared, monkeypatch):
    monkeypatch.setattr(prepare, "DATA_DIR", str(prepared[0] / DATA))
    return prepared[0] / DATA


def test_prepare_runs_once_and_a_second_run_redoes_nothing(prepared):
    cache, (first, second), server = prepared
    assert first.returncode == 0, first.stderr
    assert f"cache: {cache}" in first.stdout and "tokenizer: vocab 8192 trained" in first.stdout
    assert first.stdout.rstrip().endswith("ready: run `uv run train.py`")
    assert second.returncode == 0, second.stderr
    assert "tokenizer: already trained" in second.stdout and "vocab 8192 trained" not in second.stdout
    assert set(server.requests.values()) == {1}  # nothing downloaded twice


def test_tokenizer_vocab_and_special_tokens(tok):
    assert tok.get_vocab_size() == 8192
    assert [tok.enc.encode_single_token(s) for s in prepare.SPECIAL_TOKENS] == [8188, 8189, 8190, 8191]
    assert tok.get_bos_token_id() == 8188
    assert tok.encode("hello", prepend="<|reserved_0|>")[0] == 8188
    assert [ids[0] for ids in tok.encode(["a b", "c"], prepend=8188)] == [8188, 8188]


@pytest.mark.parametrize("text", ["naïve café, 日本語のテキスト — Привет мир 🙂",
                                  "0 12 345 6789 3.14159 1e-9", "  leading\tand\r\ntrailing  \n\n\t ",
                                  "<|reserved_0|> is plain text here"])
def test_tokenizer_round_trip(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert 8188 not in ids  # special tokens are never produced from text


def test_digits_are_split_in_ones_and_twos(tok):
    pieces = [tok.enc.decode_single_token_bytes(i) for i in tok.encode("1234567")]
    assert max(len(p) for p in pieces) <= 2 and b"".join(pieces) == b"1234567"


def test_token_bytes_counts_raw_bytes(tok):
    expected = [len(tok.enc.decode_single_token_bytes(i)) for i in range(8188)] + [0, 0, 0, 0]
    assert tok.token_bytes.dtype == torch.int32
    assert tok.token_bytes.tolist() == expected
    # partial UTF-8 bytes count as 1 byte each, not as the 3 bytes of U+FFFD
    assert tok.token_bytes[tok.enc.encode_single_token(b"\xe6")] == 1


def test_stored_tokenizer_is_not_a_pickle(prepared, monkeypatch):
    tdir = prepared[0] / TOKENIZER
    assert sorted(os.listdir(tdir)) == ["tokenizer.json", "tokenizer.tiktoken"]
    meta = json.loads((tdir / "tokenizer.json").read_text())
    assert meta["pattern"] == prepare.SPLIT_PATTERN and meta["special_tokens"]["<|reserved_3|>"] == 8191
    ranks = [line.split() for line in (tdir / "tokenizer.tiktoken").read_text().splitlines()]
    assert len(ranks) == 8188 and [int(r) for _, r in ranks] == list(range(8188))
    assert base64.b64decode(ranks[65][0]) == b"A"

    def refuse(*a, **k):
        raise AssertionError("pickle used")
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    assert prepare.Tokenizer.from_directory(str(tdir)).decode([65, 66]) == "AB"

# ---------------------------------------------------------------------------
# Dataloader: the spec's best-fit packing, written as plainly as possible


def reference_batches(tok, B, T, paths, buffer_size):
    def doc_batches():
        epoch = 1
        while True:
            for path in paths:
                pf = pq.ParquetFile(path)
                for rg in range(pf.num_row_groups):
                    texts = pf.read_row_group(rg).column("text").to_pylist()
                    for i in range(0, len(texts), 128):
                        yield tok.encode(texts[i:i + 128], prepend=tok.get_bos_token_id()), epoch
            epoch += 1

    source, buffer, epoch = doc_batches(), [], 1
    while True:
        rows = []
        for _ in range(B):
            row = []
            while len(row) < T + 1:
                while len(buffer) < buffer_size:
                    docs, epoch = next(source)
                    buffer.extend(docs)
                space = T + 1 - len(row)
                fits = [i for i, d in enumerate(buffer) if len(d) <= space]
                if fits:
                    best = max(fits, key=lambda i: (len(buffer[i]), -i))
                    row += buffer.pop(best)
                else:
                    shortest = min(range(len(buffer)), key=lambda i: (len(buffer[i]), i))
                    row += buffer.pop(shortest)[:space]
            rows.append(row)
        rows = torch.tensor(rows)
        yield rows[:, :-1], rows[:, 1:], epoch


@pytest.mark.parametrize("B,T,buffer_size", [(4, 64, 20), (8, 256, 1000), (2, 1024, 5)])
def test_loader_matches_reference_packing(tok, data_dir, B, T, buffer_size):
    paths = [path for path, _, _ in prepare.split_row_ranges("train")]
    loader = prepare.make_dataloader(tok, B, T, "train", buffer_size=buffer_size)
    ref = reference_batches(tok, B, T, paths, buffer_size)
    for _ in range(12):
        x, y, epoch = next(loader)
        rx, ry, repoch = next(ref)
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (B, T)
        assert torch.equal(x, rx) and torch.equal(y, ry) and epoch == repoch
        assert (x[:, 0] == tok.get_bos_token_id()).all()  # every row starts with a document
        assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
        assert ((x >= 0) & (x < 8192)).all()
    loader.close()


def test_loader_counts_epochs_and_val_reads_only_the_validation_shard(tok, data_dir):
    B, T = 8, 512
    loader = prepare.make_dataloader(tok, B, T, "val", buffer_size=50)
    ref = reference_batches(tok, B, T, [str(data_dir / prepare.VAL_FILENAME)], 50)
    epochs = []
    for _ in range(25):
        x, y, epoch = next(loader)
        rx, ry, repoch = next(ref)
        assert torch.equal(x, rx) and epoch == repoch
        epochs.append(epoch)
        for row in x.tolist():  # every document of the validation shard starts with its marker
            docs = tok.decode(row).split("<|reserved_0|>")[1:]
            assert all(d.startswith("VALIDATION") for d in docs[1:-1])
    loader.close()
    # 150 documents of ~150 tokens make about 3 batches per pass
    assert epochs[0] == 1 and epochs[-1] >= 3 and epochs == sorted(epochs)


def test_loader_without_data_says_what_to_do(tok, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="run `uv run prepare.py`"):
        next(prepare.make_dataloader(tok, 2, 16, "train"))

# ---------------------------------------------------------------------------
# evaluate_bpb


class UniformModel(torch.nn.Module):
    """Uniform logits (model(x) -> logits, as the evaluation calls it): every target costs exactly ln(V)
    nats."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, x):
        return torch.zeros(*x.shape, self.vocab)


def test_evaluate_bpb_uniform_model(tok, data_dir, prepared, monkeypatch):
    B, T, batches = 4, 128, 6
    # the evaluation reads its own tokenizer
    monkeypatch.setattr(prepare, "TOKENIZER_DIR", str(prepared[0] / TOKENIZER))
    monkeypatch.setattr(prepare, "MAX_SEQ_LEN", T)
    monkeypatch.setattr(prepare, "EVAL_TOKENS", B * T * batches)
    # In a pytest-xdist worker __main__ is `python -c` code, which the run record takes for code run from
    # prepare.py's folder: it would append a record to the repository's ledger.jsonl. As the main file of a
    # run without workers is, this test's file is outside that folder: no record.
    monkeypatch.setattr(audit, "MAIN_FILE", __file__)  # the script as prepare.py loaded: this file
    monkeypatch.setitem(prepare._served, "evaluations", 0)  # scored once a process: this test's is its own
    bpb = prepare.evaluate_bpb(UniformModel(8192), tok, B)
    ref = reference_batches(tok, B, T, [str(data_dir / prepare.VAL_FILENAME)], 1000)
    targets = torch.cat([next(ref)[1].reshape(-1) for _ in range(batches)]).tolist()
    byte_counts = [len(tok.enc.decode_single_token_bytes(t)) if t < 8188 else 0 for t in targets]
    scored = sum(n > 0 for n in byte_counts)
    assert scored < len(targets)  # BOS targets are present and left out
    expected = scored * math.log(8192) / (math.log(2) * sum(byte_counts))
    assert bpb == pytest.approx(expected, rel=1e-6)  # float32 losses

def test_the_model_is_exported_for_the_confirm_once_a_process(tok, data_dir, prepared, monkeypatch):
    """The export happens before the model sees any validation row (red team 44's remembered the rows it
    was scored on), at the first evaluate_bpb only (red team 45 called it again to be exported again)."""
    monkeypatch.setattr(prepare, "TOKENIZER_DIR", str(prepared[0] / TOKENIZER))
    monkeypatch.setattr(prepare, "MAX_SEQ_LEN", 64)
    monkeypatch.setattr(prepare, "EVAL_TOKENS", 4 * 64 * 2)
    monkeypatch.setattr(audit, "MAIN_FILE", __file__)  # no record
    monkeypatch.setitem(prepare._served, "evaluations", 0)
    exported, calls = [], []

    class Counting(UniformModel):
        def forward(self, x):
            calls.append(x.shape)
            return super().forward(x)

    def export(model, shape, device, path):  # how many model calls the evaluation had made by then
        exported.append((path, len(calls)))

    monkeypatch.setattr(audit, "export_model", export)
    monkeypatch.setattr(prepare, "_unpinned", lambda pins: None)  # the pin holds export_model: this test's
    monkeypatch.setenv("AUTORESEARCH_EXPORT", "model.pt2")
    prepare.evaluate_bpb(Counting(8192), tok, 4)
    with pytest.raises(SystemExit):  # and the validation data is scored once a process
        prepare.evaluate_bpb(Counting(8192), tok, 4)
    assert exported == [("model.pt2", 0)] and len(calls) >= 3  # 2 batches, the probe's second call

def test_the_pin_holds_the_kernels_of_every_op_the_evaluation_runs(tok, data_dir, prepared, monkeypatch):
    """audit.EVAL_OPS: the ops whose kernels the pin holds must be all that evaluate_bpb runs (its loader,
    losses, probe and fingerprint), as a dispatch mode sees them on the CPU; the model's own are its own."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        seen = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.add(func._schema.name.split("::")[1] + (f".{func._schema.overload_name}" * bool(
                func._schema.overload_name)))
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(prepare, "TOKENIZER_DIR", str(prepared[0] / TOKENIZER))
    monkeypatch.setattr(prepare, "MAX_SEQ_LEN", 64)
    monkeypatch.setattr(prepare, "EVAL_TOKENS", 4 * 64 * 3)
    monkeypatch.setattr(audit, "MAIN_FILE", __file__)  # no record
    monkeypatch.setitem(prepare._served, "evaluations", 0)
    monkeypatch.setattr(prepare, "_dispatch_modes", lambda: 0)  # this test's mode is no model's (red team 40)
    monkeypatch.setattr(prepare, "_unpinned", lambda pins: None)  # nor is that change of a pinned name
    model = torch.nn.Embedding(8192, 8192)  # its ops: embedding
    with Ops():
        prepare.evaluate_bpb(model, tok, 4)
    assert Ops.seen - {"embedding"} <= set(audit.EVAL_OPS), Ops.seen - set(audit.EVAL_OPS)
    assert len(Ops.seen) > 20

def test_the_model_gets_copies_freed_before_the_checks(monkeypatch):
    """Red team 31: score's x, freed by its next step, ran a generator train.py hung on it between checks,
    and the y behind x was a view away. _call hands the model a copy in storage of its own, and frees it and
    the model's own answer before its checks."""
    import weakref

    events, x = [], torch.arange(12).view(2, 6)[:, :3]  # a view, as the loader's x is: y lies behind it

    def model(idx):
        assert idx is not x and idx.untyped_storage().nbytes() == idx.numel() * 8  # nothing behind it
        out = idx.float()
        weakref.finalize(idx, events.append, "input freed")
        weakref.finalize(out, events.append, "answer freed")
        return out

    monkeypatch.setattr(prepare, "_unpinned", lambda pins: events.append("checked"))
    monkeypatch.setitem(prepare._served, "unpinned", None)
    gc.disable()  # as in the evaluation
    try:
        assert torch.equal(prepare._call(model, x), x.float())
    finally:
        gc.enable()
    assert events == ["input freed", "answer freed", "checked"] and prepare._served["unpinned"] is None


def test_the_copies_are_made_by_torchs_own_clone(monkeypatch):
    """Red team 32: the `clone` of the model's answer, or one added to torch.Tensor, answered _call's copy
    with an object of the model's, whose own `flatten` score then ran."""
    answer = torch.ones(2, 3)
    answer.clone = lambda *args, **kwargs: "the answer's"
    monkeypatch.setitem(prepare._served, "unpinned", None)
    torch.Tensor.clone = lambda *args, **kwargs: "the class's"
    try:
        out = prepare._call(lambda idx: answer, torch.zeros(2, dtype=torch.long))
    finally:
        del torch.Tensor.clone
    assert type(out) is torch.Tensor and torch.equal(out, torch.ones(2, 3)) and vars(out) == {}


def test_scores_ops_record_no_autograd_whatever_the_model_leaves(tok, data_dir, prepared, monkeypatch):
    """Red team 38: a model switched grad mode on and left a saved-tensor hook pushed; score's losses on its
    answer then saved tensors for backward, and the hook (train.py's code) clamped the log-probabilities
    between checks. The answer comes back detached and grad mode as it was: the hook never runs in score."""
    ran, hooks = [], contextlib.ExitStack()

    def pack(t):
        ran.append(t.dim())
        if t.dim() == 2 and t.dtype == torch.float32:
            t.data.clamp_(min=-0.4)  # log-probabilities of at most 0.4 nats

    class Uniform(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(8192))

        def forward(self, x):
            torch.set_grad_enabled(True)
            if not ran:
                hooks.enter_context(torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t))
            ran.append("model")
            return torch.zeros(*x.shape, 8192) + self.w

    monkeypatch.setattr(prepare, "TOKENIZER_DIR", str(prepared[0] / TOKENIZER))
    monkeypatch.setattr(prepare, "MAX_SEQ_LEN", 64)
    monkeypatch.setattr(prepare, "EVAL_TOKENS", 4 * 64 * 3)
    monkeypatch.setattr(audit, "MAIN_FILE", __file__)  # no record
    monkeypatch.setitem(prepare._served, "evaluations", 0)
    monkeypatch.setitem(prepare._served, "unpinned", None)
    try:
        with torch.no_grad():
            bpb = prepare.evaluate_bpb(Uniform(), tok, 4)
    finally:
        hooks.close()
    assert set(ran) == {"model"} and len(ran) == 3 + 1  # 3 batches and the probe's other call; no pack ran
    ref = reference_batches(tok, 4, 64, [str(data_dir / prepare.VAL_FILENAME)], 1000)
    targets = torch.cat([next(ref)[1].reshape(-1) for _ in range(3)]).tolist()
    byte_counts = [len(tok.enc.decode_single_token_bytes(t)) if t < 8188 else 0 for t in targets]
    assert bpb == pytest.approx(sum(n > 0 for n in byte_counts) * math.log(8192) / (math.log(2) * sum(
        byte_counts)), rel=1e-6)  # uniform: ln 8192 nats a scored token, not 0.4


def test_score_of_the_first_rows_is_one_number_whatever_the_batch_size(tok, data_dir, prepared, monkeypatch):
    """A batch size that does not divide the rows scores fewer (29 of 64: 58, as the original's formula);
    `rows` scores the first ones at any batch size, so the confirm compares two runs on the same rows (red
    team 49 gained on the baseline's very model by a batch size that left out its worst rows)."""
    monkeypatch.setattr(prepare, "TOKENIZER_DIR", str(prepared[0] / TOKENIZER))
    monkeypatch.setattr(prepare, "MAX_SEQ_LEN", 64)
    monkeypatch.setattr(prepare, "EVAL_TOKENS", 64 * 64)  # 64 rows
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(8192, 16), torch.nn.Linear(16, 8192))  # untrained

    def bpb(batch_size, rows=0):
        prepare._served["evaluations"] = 0  # scored once a process: each reading here is its own
        value, tokens, _, probe = prepare.score(model, tok, batch_size, "val", rows)
        assert probe == 0
        return value, tokens

    monkeypatch.setitem(prepare._served, "evaluations", 0)
    (all_rows, tokens), (first, fewer) = bpb(4), bpb(29)
    assert tokens == 64 * 64 and fewer == 58 * 64 and abs(first - all_rows) > 1e-4
    for batch_size in (2, 4, 7, 58):
        assert bpb(batch_size, rows=58)[0] == pytest.approx(first, rel=1e-6)  # float32, other shapes


def evaluate_here(monkeypatch, prepared, batch_size=4, T=64, batches=3):
    """evaluate_bpb here on the prepared data, with no run record: (val_bpb, the batch size of each call)."""
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, x):
            calls.append(len(x))
            return torch.zeros(*x.shape, 8192)

    monkeypatch.setattr(prepare, "TOKENIZER_DIR", str(prepared[0] / TOKENIZER))
    monkeypatch.setattr(prepare, "MAX_SEQ_LEN", T)
    monkeypatch.setattr(prepare, "EVAL_TOKENS", 4 * T * batches)
    monkeypatch.setattr(audit, "MAIN_FILE", __file__)  # no record
    monkeypatch.setitem(prepare._served, "evaluations", 0)
    monkeypatch.setitem(prepare._served, "unpinned", None)
    return prepare.evaluate_bpb(Counting(), prepare.Tokenizer.from_directory(), batch_size), calls


def test_the_evaluation_closes_trainings_loaders_first(tok, data_dir, prepared, monkeypatch):
    """Red team 31: a tokenizer of train.py's (or an int subclass) runs its methods in the loader's threads,
    which ran on during the evaluation. The evaluation closes training's loaders before it starts; a later
    next() of one ends at once, it does not hang."""
    ran = []

    class Encoding:  # train.py's wrapper of the tokenizer's encoding: it counts its calls
        def __init__(self, enc):
            self.enc = enc

        def __getattr__(self, name):
            return getattr(self.enc, name)

        def encode_to_numpy(self, text, **kwargs):
            ran.append(1)
            return self.enc.encode_to_numpy(text, **kwargs)

    theirs = prepare.Tokenizer.from_directory(str(prepared[0] / TOKENIZER))
    theirs.enc = Encoding(theirs.enc)
    loader = prepare.make_dataloader(theirs, 4, 64, "train", buffer_size=50)
    next(loader)
    assert ran
    val_bpb, calls = evaluate_here(monkeypatch, prepared)
    assert val_bpb > 0 and len(calls) == 3 + 1  # scored: 3 batches and the probe's other call
    assert not [t for t in threading.enumerate() if t.name.startswith("dataloader")]
    ran.clear()
    with pytest.raises(StopIteration):
        next(loader)
    assert ran == []


def test_a_training_loader_that_runs_on_is_rejected(tok, data_dir, prepared, monkeypatch):
    """A thread of the loader's that does not stop (its tokenizer never returns) rejects the run."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="dataloader-train", daemon=True)
    thread.start()
    try:
        with pytest.raises(SystemExit, match="train.py changed a training loader"):
            evaluate_here(monkeypatch, prepared)
    finally:
        stop.set()
        thread.join()


def test_a_batch_size_of_an_int_subclass_runs_none_of_its_methods(tok, data_dir, prepared, monkeypatch):
    """Red team 31's class of routes: an int's methods in score would be train.py's code between checks."""
    ran = []

    class Four(int):
        def __mul__(self, other):
            ran.append("mul")
            return int(self) * other

        def __index__(self):
            ran.append("index")
            return int(self)

    four = evaluate_here(monkeypatch, prepared, Four(4))
    assert ran == [] and four == evaluate_here(monkeypatch, prepared, 4)


# ---------------------------------------------------------------------------
# Failure paths: downloads, Ctrl-C, a damaged tokenizer, unreadable shards, closing the loader


def test_shard_the_server_does_not_have_fails_at_once(monkeypatch, corpus, tmp_path, no_sleep, capsys):
    server = serve(monkeypatch, corpus)  # has shards 0, 1 and the validation shard: not 2
    with pytest.raises(RuntimeError) as info:
        prepare.download_data(3, 2, data_dir=str(tmp_path), stop=no_sleep)
    server.close()
    assert server.requests["shard_00002.parquet"] == 1 and no_sleep.waits == []  # no retries, no backoff
    assert "error: shard_00002.parquet: the server does not have it (HTTP 404" in capsys.readouterr().err
    assert str(info.value) == (f"3 of 4 files are ready in {tmp_path} (from {prepare.base_url()}): use a "
                               "smaller --num-shards, or check HF_ENDPOINT (the hub, or a complete mirror).")


def test_a_one_file_data_set_missing_on_the_server_says_to_check_the_endpoint(monkeypatch, tmp_path,
                                                                              no_sleep):
    (tmp_path / "empty").mkdir()
    server = serve(monkeypatch, tmp_path / "empty")  # a mirror without TinyStories
    with pytest.raises(RuntimeError) as info:
        prepare.download_data(10, 2, data_dir=str(tmp_path / "data"), stop=no_sleep, dataset="tinystories")
    server.close()
    assert no_sleep.waits == [] and "--num-shards" not in str(info.value)  # one file: no shard count to lower
    assert str(info.value).endswith("check HF_ENDPOINT (the hub, or a complete mirror).")


def test_hf_endpoint_without_scheme_fails_before_any_request(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "hf-mirror.com")
    monkeypatch.setattr(prepare.requests, "get", lambda *a, **k: pytest.fail("requested"))
    with pytest.raises(SystemExit) as exit_info:
        prepare.download_data(2, 2, data_dir=str(tmp_path))
    assert "HF_ENDPOINT='hf-mirror.com' must start with http:// or https://" in str(exit_info.value.code)


def test_unreachable_server_stops_the_other_downloads(monkeypatch, corpus, tmp_path, no_sleep, capsys):
    server = ShardServer(corpus)
    server.close()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    calls = []
    real_get = prepare.requests.get
    monkeypatch.setattr(prepare.requests, "get", lambda *a, **k: calls.append(1) or real_get(*a, **k))
    with pytest.raises(RuntimeError, match="The server is unreachable, so the other downloads were stopped"):
        prepare.download_data(200, 4, data_dir=str(tmp_path), stop=no_sleep)
    # the first shard to exhaust its 5 attempts stops the rest: each of the 4 workers tried one shard at most
    assert 5 <= len(calls) <= 4 * 5  # not 201 * 5
    assert os.listdir(tmp_path) == []


def test_progress_counts_shards_already_on_disk(monkeypatch, corpus, tmp_path, capsys):
    (tmp_path / "shard_00000.parquet").write_bytes((corpus / "shard_00000.parquet").read_bytes())
    server = serve(monkeypatch, corpus)
    prepare.download_data(2, 2, data_dir=str(tmp_path))
    server.close()
    out = capsys.readouterr().out
    assert out.split("\r")[-1].startswith("downloading: 3/3 files") and "data: 3 of 3 files ready" in out


@pytest.fixture
def ctrl_c_heard():
    """A child hears Ctrl-C as a terminal's command does: a shell's background job (`cmd &`, as a CI script
    may start the suite) ignores SIGINT, and its children inherit that; a handler is reset at exec."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_stops_downloads_at_once_and_keeps_finished_shards(corpus, tmp_path, ctrl_c_heard):
    server = ShardServer(corpus, stall=("shard_00001.parquet", prepare.VAL_FILENAME))
    env = cpu_env(tmp_path, HF_ENDPOINT=server.url)
    proc = subprocess.Popen([sys.executable, "prepare.py", "--num-shards", "2", "--download-workers", "3"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = tmp_path / DATA / "shard_00000.parquet"
    deadline = time.time() + 120  # interpreter and torch start-up on a loaded machine
    while (not (done.exists() and len(server.requests) == 3) and time.time() < deadline
           and proc.poll() is None):
        time.sleep(0.05)
    time.sleep(0.2)  # the stalled downloads are inside their reads
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        server.close()
    elapsed = time.time() - t0
    assert proc.returncode == 130 and elapsed < 10, (elapsed, err)
    assert "Traceback" not in err and err.strip().splitlines() == [
        f"interrupted: kept the 1 complete files in {tmp_path / DATA}; run prepare.py again to fetch the "
        "rest"]
    assert os.listdir(tmp_path / DATA) == ["shard_00000.parquet"]  # the two cut short leave no .tmp behind
    assert done.read_bytes() == (corpus / "shard_00000.parquet").read_bytes()


# rustbpe's training, as it behaves to a signal: native code that runs on without looking for Ctrl-C
FAKE_RUSTBPE = """import hashlib
class Tokenizer:
    def train_from_iterator(self, texts, vocab_size, pattern):
        sum(1 for _ in texts)
        print("training in native code", flush=True)
        hashlib.pbkdf2_hmac("sha256", b"", b"", 10**8)  # tens of seconds, deaf to signals
"""


def test_ctrl_c_during_tokenizer_training_exits_at_once_in_one_line(corpus, tmp_path, ctrl_c_heard):
    shutil.copytree(corpus, tmp_path / DATA)  # every file on disk: nothing is downloaded
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "rustbpe.py").write_text(FAKE_RUSTBPE)
    env = cpu_env(tmp_path, HF_ENDPOINT="http://127.0.0.1:9", PYTHONPATH=tmp_path / "fake")
    proc = subprocess.Popen([sys.executable, "prepare.py", "--num-shards", "2"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120  # interpreter and torch start-up on a loaded machine
    while "training in native code" not in proc.stdout.readline() and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()
    time.sleep(0.5)  # inside the native code
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    try:
        err = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    elapsed = time.time() - t0
    assert proc.returncode == 130 and elapsed < 5, (elapsed, err)
    assert err.strip().splitlines() == [  # not the interrupted command as advice, as if it had failed
        f"interrupted: kept the 3 complete files in {tmp_path / DATA}; run prepare.py again to train the "
        "tokenizer (nothing is downloaded again)"]
    assert sorted(os.listdir(tmp_path / DATA)) == sorted(os.listdir(corpus))
    assert not (tmp_path / TOKENIZER).exists()


def test_tinystories_with_the_default_vocabulary_warns_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(prepare, "download_data", lambda *a, **k: sys.exit(0))  # the warning comes first
    monkeypatch.setattr(sys, "argv", ["prepare.py", "--dataset", "tinystories"])
    warning = ("warning: VOCAB_SIZE = 8192 for TinyStories: README's small-computer recipe sets VOCAB_SIZE = "
               "2048 in prepare.py (this run trains a tokenizer of 8192, as set)")
    for vocab_size, expected in ((8192, [warning]), (2048, [])):
        monkeypatch.setattr(prepare, "VOCAB_SIZE", vocab_size)
        with pytest.raises(SystemExit) as info:
            prepare.main()
        assert info.value.code == 0 and capsys.readouterr().err.splitlines() == expected


def test_more_training_shards_on_disk_than_asked_for_are_named(prepared, tmp_path, monkeypatch, capsys):
    shutil.copytree(prepared[0] / DATA, tmp_path / DATA)  # shards 0 and 1, and the validation shard
    shutil.copytree(prepared[0] / TOKENIZER, tmp_path / TOKENIZER)
    monkeypatch.setattr(prepare, "CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the one shard asked for is on disk
    monkeypatch.setattr(sys, "argv", ["prepare.py", "--num-shards", "1"])
    prepare.main()
    out = capsys.readouterr().out
    assert "data: 2 of 2 files ready" in out
    assert "data: training uses all 2 training shards on disk, not only the 1 asked for\n" in out


def test_a_failure_reaches_the_user_as_one_line_and_exit_1(monkeypatch, tmp_path):
    (tmp_path / "empty").mkdir()
    server = serve(monkeypatch, tmp_path / "empty")
    monkeypatch.setattr(prepare, "CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "argv", ["prepare.py", "--num-shards", "1"])
    with pytest.raises(SystemExit) as info:  # sys.exit with a message: Python prints it and exits 1
        prepare.main()
    server.close()
    assert info.value.code == (f"error: 0 of 2 files are ready in {tmp_path / 'cache' / DATA} (from "
                               f"{prepare.base_url()}): use a smaller --num-shards, or check HF_ENDPOINT "
                               "(the hub, or a complete mirror).")


def damage(tdir, how):
    ranks, meta = tdir / "tokenizer.tiktoken", tdir / "tokenizer.json"
    text = ranks.read_text()
    if how == "ranks cut mid-line":
        ranks.write_text(text[: text.index("\n", len(text) // 2) - 3])
    elif how == "ranks cut at a line end":
        ranks.write_text("".join(text.splitlines(keepends=True)[:4000]))
    elif how == "json is not json":
        meta.write_text('{"pattern": "x", "spec')
    elif how == "json has no pattern":
        meta.write_text(json.dumps({"special_tokens": json.loads(meta.read_text())["special_tokens"]}))
    elif how == "json special tokens wrong":
        meta.write_text(json.dumps({"pattern": prepare.SPLIT_PATTERN,
                                    "special_tokens": {"<|reserved_0|>": 8188}}))
    elif how == "json pattern not SPLIT_PATTERN":  # red team 36: "e" kept only the e's of every text
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "pattern": "e"}))
    return ranks if how.startswith("ranks") else meta


@pytest.mark.parametrize("how", ["ranks cut mid-line", "ranks cut at a line end", "json is not json",
                                 "json has no pattern", "json special tokens wrong",
                                 "json pattern not SPLIT_PATTERN"])
def test_damaged_tokenizer_raises_one_line_error(prepared, tmp_path, how):
    shutil.copytree(prepared[0] / TOKENIZER, tmp_path / "tok")
    bad_file = damage(tmp_path / "tok", how)
    with pytest.raises(prepare.TokenizerError) as info:
        prepare.Tokenizer.from_directory(str(tmp_path / "tok"))
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError) and "\n" not in message
    assert message.startswith(str(bad_file))
    assert message.endswith("run `uv run prepare.py` to train the tokenizer again")


def test_prepare_trains_a_damaged_tokenizer_again(prepared, tmp_path, monkeypatch, capsys):
    shutil.copytree(prepared[0] / DATA, tmp_path / DATA)
    shutil.copytree(prepared[0] / TOKENIZER, tmp_path / TOKENIZER)
    damage(tmp_path / TOKENIZER, "ranks cut at a line end")
    monkeypatch.setattr(prepare, "CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(prepare, "DATA_DIR", str(tmp_path / DATA))
    monkeypatch.setattr(prepare, "TOKENIZER_DIR", str(tmp_path / TOKENIZER))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # every shard is on disk: nothing is requested
    monkeypatch.setattr(sys, "argv", ["prepare.py", "--num-shards", "2"])
    prepare.main()
    out = capsys.readouterr().out
    assert "does not hold each rank 0..8187 once (4000 tokens); training it again" in out
    assert "tokenizer: vocab 8192 trained" in out
    assert prepare.Tokenizer.from_directory(str(tmp_path / TOKENIZER)).get_vocab_size() == 8192


def test_original_keyword_and_get_token_bytes(prepared, tok, monkeypatch):
    tdir = str(prepared[0] / TOKENIZER)
    assert prepare.Tokenizer.from_directory(tokenizer_dir=tdir).encode("hello") == tok.encode("hello")
    monkeypatch.setattr(prepare, "TOKENIZER_DIR", tdir)
    token_bytes = prepare.get_token_bytes("cpu")
    assert token_bytes.dtype == torch.int32 and torch.equal(token_bytes, tok.token_bytes)


@pytest.mark.parametrize("val", ["missing", "corrupt"])
def test_train_loader_checks_the_validation_shard_at_once(tok, data_dir, tmp_path, monkeypatch, val):
    shutil.copy(data_dir / "shard_00000.parquet", tmp_path)
    if val == "corrupt":
        (tmp_path / prepare.VAL_FILENAME).write_bytes(b"PAR1 not really")
    monkeypatch.setattr(prepare, "DATA_DIR", str(tmp_path))
    error = FileNotFoundError if val == "missing" else RuntimeError
    with pytest.raises(error, match=r"run `uv run prepare.py`"):
        prepare.make_dataloader(tok, 2, 16, "train")  # the call itself, before any batch


def test_unreadable_train_shard_fails_at_call_time(tok, data_dir, tmp_path, monkeypatch):
    shutil.copy(data_dir / prepare.VAL_FILENAME, tmp_path)
    shutil.copy(data_dir / "shard_00000.parquet", tmp_path)
    good = (data_dir / "shard_00001.parquet").read_bytes()
    (tmp_path / "shard_00001.parquet").write_bytes(good[: len(good) // 2])
    monkeypatch.setattr(prepare, "DATA_DIR", str(tmp_path))
    with pytest.raises(RuntimeError,
                       match=r"cannot read .*shard_00001.parquet .*run `uv run prepare.py` again"):
        prepare.make_dataloader(tok, 2, 16, "train")


def test_closing_the_loader_joins_its_threads(tok, data_dir):
    before = set(threading.enumerate())
    loader = prepare.make_dataloader(tok, 4, 64, "train", buffer_size=50)
    next(loader)
    next(loader)
    started = [t.name for t in set(threading.enumerate()) - before]
    assert "dataloader-train" in started and any(n.startswith("dataloader-tokenize") for n in started)
    loader.close()
    assert [t.name for t in set(threading.enumerate()) - before if t.is_alive()] == []


def test_the_loader_packs_from_the_call_and_closes_before_its_first_batch(tok, data_dir):
    """make_dataloader starts its packing thread at once (train.py builds the model meanwhile), and close()
    stops it even if no batch was ever taken."""
    before = set(threading.enumerate())
    loader = prepare.make_dataloader(tok, 4, 64, "train", buffer_size=50)
    assert "dataloader-train" in [t.name for t in set(threading.enumerate()) - before]
    loader.close()
    assert [t.name for t in set(threading.enumerate()) - before if t.is_alive()] == []

# ---------------------------------------------------------------------------
# Data sets: each fetched from its own repo into its own folder, validation data never trained on, tokenizers
# of different settings side by side; local write errors named at once


def marked_docs(rng, n, marker):
    words = ["alpha", "beta", "gamma", "delta"]
    return [f"{marker} " + " ".join(rng.choice(words) for _ in range(rng.randint(3, 30))) for _ in range(n)]


def lay_out(dataset, folder, rng):
    """Files as the data set's repo holds them, a TRAIN / VALIDATION / HELDOUT marker on every document."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = prepare.DATASETS[dataset]
    if "file" in spec:  # one file: the held-out (test) rows, the pinned validation rows, then training rows
        docs = (marked_docs(rng, 10_000, "HELDOUT") + marked_docs(rng, 10_000, "VALIDATION")
                + marked_docs(rng, 3000, "TRAIN"))
        write_shard(folder / spec["file"], docs, row_group_size=1024)  # row groups cross the split's edges
        return [spec["file"]]
    markers = {spec["val"]: "VALIDATION", spec["heldout"]: "HELDOUT"}
    indices = sorted({0, 1, 1822, spec["heldout"], spec["val"]})  # climbmix trains on 1822
    for i in indices:
        write_shard(folder / prepare.shard_filename(i), marked_docs(rng, 300, markers.get(i, "TRAIN")),
                    row_group_size=64)
    return [prepare.shard_filename(i) for i in indices]


@pytest.mark.parametrize("dataset", ["fineweb-edu", "climbmix", "tinystories"])
def test_each_data_set_downloads_its_files_from_its_repo_into_its_folder(dataset, tmp_path, monkeypatch):
    names = lay_out(dataset, tmp_path / "server", random.Random(1))
    server = serve(monkeypatch, tmp_path / "server")
    monkeypatch.setattr(prepare, "CACHE_DIR", str(tmp_path / "cache"))
    prepare.download_data(2, 2, dataset=dataset)
    server.close()
    repo = prepare.DATASETS[dataset]["repo"]
    # 2 training shards and the validation one, never the held-out shard; TinyStories' one file
    expected = names if dataset == "tinystories" else names[:2] + names[-1:]
    assert sorted(server.paths) == sorted(f"/datasets/{repo}/resolve/main/{n}" for n in expected)
    assert sorted(os.listdir(tmp_path / "cache" / "data" / dataset)) == sorted(expected)


@pytest.mark.parametrize("dataset", ["fineweb-edu", "climbmix", "tinystories"])
def test_validation_data_is_never_in_a_training_batch(dataset, tok, tmp_path, monkeypatch):
    lay_out(dataset, tmp_path, random.Random(2))
    monkeypatch.setattr(prepare, "DATASET", dataset)
    monkeypatch.setattr(prepare, "DATA_DIR", str(tmp_path))
    for split, marker in (("train", "TRAIN"), ("val", "VALIDATION")):
        loader = prepare.make_dataloader(tok, 8, 256, split, buffer_size=100)
        seen = collections.Counter()
        for _ in range(40):  # well past one pass over the validation rows of each layout
            x, _, epoch = next(loader)
            for row in x.tolist():
                docs = tok.decode(row).split("<|reserved_0|>")[1:]
                seen.update(doc.split(" ", 1)[0] for doc in docs if doc)
        loader.close()
        whole = {k: v for k, v in seen.items() if k in ("TRAIN", "VALIDATION", "HELDOUT")}
        assert set(whole) == {marker}, (split, seen.most_common(5))
    # the pinned rows: one shard each, or TinyStories' validation rows 10,000-19,999 and test rows 0-9,999
    for split, marker in (("val", "VALIDATION"), ("heldout", "HELDOUT")):
        texts = [t for batch in prepare._split_texts(prepare.split_row_ranges(split)) for t in batch]
        assert len(texts) == (10_000 if dataset == "tinystories" else 300)
        assert all(t.startswith(marker) for t in texts)


@pytest.mark.parametrize("dataset", ["fineweb-edu", "tinystories"])
def test_the_held_out_data_is_fetched_once_when_asked(dataset, tmp_path, monkeypatch, capsys):
    lay_out(dataset, tmp_path / "server", random.Random(3))
    server = serve(monkeypatch, tmp_path / "server")
    monkeypatch.setattr(prepare, "CACHE_DIR", str(tmp_path / "cache"))
    parts, again = audit.fetch_heldout(dataset), audit.fetch_heldout(dataset)
    server.close()
    spec = prepare.DATASETS[dataset]
    name = spec.get("file") or prepare.shard_filename(spec["heldout"])
    # once: the second call finds it on disk
    assert server.paths == [f"/datasets/{spec['repo']}/resolve/main/{name}"]
    rows = (0, 10_000) if dataset == "tinystories" else (0, None)
    assert parts == again == [(str(tmp_path / "cache" / "data" / dataset / name), *rows)]
    assert capsys.readouterr().out == f"downloading the held-out data: {name} of {spec['repo']}\n"


def test_tokenizers_of_two_settings_live_side_by_side(prepared, corpus, tmp_path):
    """prepare.py with VOCAB_SIZE = 512 trains its own tokenizer beside the 8192 one and leaves that one
    alone; each loads with its own setting, and the wrong setting says which sizes differ."""
    cache = tmp_path / "cache"
    shutil.copytree(prepared[0], cache)
    big = cache / TOKENIZER
    before = {p.name: p.read_bytes() for p in big.iterdir()}
    shrunk_copy(ROOT / "prepare.py", tmp_path / "prepare.py", VOCAB_SIZE=512)
    server = ShardServer(corpus)
    run = run_script(tmp_path, "prepare.py", "--num-shards", "2", env=cpu_env(cache, HF_ENDPOINT=server.url),
                     timeout=300)
    server.close()
    assert run.returncode == 0, run.stderr[-2000:]
    # the data was there
    assert "tokenizer: vocab 512 trained" in run.stdout and sum(server.requests.values()) == 0
    assert sorted(os.listdir(cache / "tokenizer")) == ["fineweb-edu-512", "fineweb-edu-8192"]
    assert {p.name: p.read_bytes() for p in big.iterdir()} == before
    assert prepare.Tokenizer.from_directory(str(big)).get_vocab_size() == 8192
    with pytest.raises(prepare.TokenizerError, match=r"fineweb-edu-512 holds a tokenizer of 512 tokens, not "
                                                     r"VOCAB_SIZE = 8192: run `uv run prepare.py`"):
        prepare.Tokenizer.from_directory(str(cache / "tokenizer" / "fineweb-edu-512"))
    with pytest.raises(FileNotFoundError,
                       match=r"no tokenizer in .*fineweb-edu-4096: run `uv run prepare.py` first "
                             r"\(the others stay as they are: fineweb-edu-512, fineweb-edu-8192\)"):
        prepare.Tokenizer.from_directory(str(cache / "tokenizer" / "fineweb-edu-4096"))


def test_num_shards_is_checked_against_the_data_sets_count(monkeypatch, capsys):
    asked = []
    def download_data(n, workers, dataset):
        asked.append((dataset, n))
        sys.exit(0)
    monkeypatch.setattr(prepare, "download_data", download_data)
    for argv, expected in ((["--num-shards", "-1"], ("fineweb-edu", 1821)),  # shard 1821 is held out
                           (["--dataset", "climbmix", "--num-shards", "-1"], ("climbmix", 6541)),
                           (["--dataset", "climbmix", "--num-shards", "2000"], ("climbmix", 2000))):
        monkeypatch.setattr(sys, "argv", ["prepare.py", *argv])
        with pytest.raises(SystemExit):
            prepare.main()
        assert asked.pop() == expected
    for bad in ("0", "1822"):
        monkeypatch.setattr(sys, "argv", ["prepare.py", "--num-shards", bad])
        with pytest.raises(SystemExit) as info:
            prepare.main()
        assert info.value.code == 2 and asked == []
        err = capsys.readouterr().err
        assert "--num-shards must be between 1 and 1821 for fineweb-edu, or -1 for all" in err


def test_a_full_disk_is_named_at_once_not_blamed_on_the_network(monkeypatch, corpus, tmp_path, no_sleep,
                                                                  capsys):
    server = serve(monkeypatch, corpus)
    real_open = open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_disk_open(path, mode="r", *a, **k):  # files opened for writing fail on their first write
        f = real_open(path, mode, *a, **k)
        return FullDisk(f) if mode == "wb" else f
    monkeypatch.setattr(prepare, "open", full_disk_open, raising=False)
    with pytest.raises(RuntimeError) as info:
        prepare.download_data(2, 1, data_dir=str(tmp_path), stop=no_sleep)
    server.close()
    err = capsys.readouterr().err
    assert no_sleep.waits == [] and sum(server.requests.values()) == 1  # no retry
    partial = tmp_path / "shard_00000.parquet.tmp"
    assert err.strip() == (f"error: cannot write {partial}: No space left on device: free space there or set "
                           "AUTORESEARCH_CACHE_DIR to a folder you can write, with room, then run prepare.py "
                           "again")
    assert str(info.value) == f"0 of 3 files are ready in {tmp_path}." and os.listdir(tmp_path) == []


@pytest.mark.parametrize("code,cause", [(errno.EACCES, "Permission denied"),
                                        (errno.EROFS, "Read-only file system"),
                                        (errno.ENOSPC, "No space left on device"),
                                        (errno.EDQUOT, "Disk quota exceeded")])
def test_an_unwritable_cache_names_its_cause_and_only_then_free_space(monkeypatch, tmp_path, code, cause):
    def refuse(path, exist_ok=False):
        raise OSError(code, os.strerror(code), path)
    monkeypatch.setattr(prepare.os, "makedirs", refuse)
    monkeypatch.setattr(prepare.requests, "get", lambda *a, **k: pytest.fail("requested"))
    with pytest.raises(prepare.WriteError) as info:
        prepare.download_data(2, 2, data_dir=str(tmp_path / "data"))
    room = "free space there or " if code in (errno.ENOSPC, errno.EDQUOT) else ""
    assert str(info.value) == (f"cannot write {tmp_path / 'data'}: {cause}: {room}set AUTORESEARCH_CACHE_DIR "
                               "to a folder you can write, with room, then run prepare.py again")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_cache_under_proc_is_one_line_without_free_space(monkeypatch):
    monkeypatch.setattr(prepare.requests, "get", lambda *a, **k: pytest.fail("requested"))
    with pytest.raises(prepare.WriteError) as info:  # the real file system's answer, nothing simulated
        prepare.download_data(2, 2, data_dir="/proc/x/data/fineweb-edu")
    message = str(info.value)
    assert message.startswith("cannot write /proc/x/data/fineweb-edu: ") and "\n" not in message
    assert "free space" not in message and "set AUTORESEARCH_CACHE_DIR to a folder you can write" in message


def test_gpu_peak_table():
    # Names as torch.cuda.get_device_name() gives them, one per entry that another entry's name contains or is
    # contained in: matching is by substring, so a shorter key listed first would take a longer one's GPUs
    names = {"NVIDIA H100 80GB HBM3": 989.5e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA H100 NVL": 835e12,
             "NVIDIA GH200 480GB": 989.5e12, "NVIDIA H200": 989.5e12, "NVIDIA A100-SXM4-80GB": 312e12,
             "NVIDIA L40S": 362.05e12, "NVIDIA L40": 181.05e12, "NVIDIA L4": 121e12, "NVIDIA A10G": 70e12,
             "NVIDIA A10": 125e12, "NVIDIA GeForce RTX 4090": 165.2e12, "NVIDIA RTX A6000": 154.8e12}
    assert {name: prepare.gpu_peak_flops(name) for name in names} == names
    assert prepare.gpu_peak_flops("Some Future Accelerator") is None
    # Every entry reaches its own GPUs: no earlier key is a substring of a later one
    keys = [key for key, _ in prepare.GPU_BF16_PEAK_FLOPS]
    shadowed = [(a, b) for i, a in enumerate(keys) for b in keys[i + 1:] if a in b]
    assert shadowed == []


def test_a_download_is_checked_against_the_hubs_sha256_and_the_digest_kept(monkeypatch, corpus, tmp_path,
                                                                             no_sleep):
    # the hub's digest, and a bad one
    server = serve(monkeypatch, corpus, digests={"shard_00001.parquet": "0" * 64})
    prepare.download_shard("shard_00000.parquet", str(tmp_path), prepare.base_url(), stop=no_sleep)
    good = hashlib.sha256((corpus / "shard_00000.parquet").read_bytes()).hexdigest()
    assert (tmp_path / "shard_00000.parquet.sha256").read_text() == good + "\n"
    with pytest.raises(RuntimeError,
                       match=r"shard_00001.parquet: failed 5 attempts, last error: OSError: sha256 "
                             r"\w{12}\.\.\. is not the hub's 000000000000\.\.\."):
        prepare.download_shard("shard_00001.parquet", str(tmp_path), prepare.base_url(), stop=no_sleep)
    server.close()
    assert sorted(os.listdir(tmp_path)) == ["shard_00000.parquet", "shard_00000.parquet.sha256"]
    train_parts = [p for p, _, _ in prepare.split_row_ranges("train", str(tmp_path))]
    assert train_parts == [str(tmp_path / "shard_00000.parquet")]
