"""Red team 55: a program that keeps its calls in a file, made by rewriting the exported file after export.

The export happens inside evaluate_bpb, and train.py's code runs again once it returns. Red team 55's train.py
then loaded the artifact (its path is the rerun's AUTORESEARCH_EXPORT, known at import), retargeted two nodes
and saved it again: `aten.from_file(<the artifact>, shared=True, N)` maps a file as a tensor's storage, and
`aten.native_batch_norm(..., training=True, momentum=1.0)` writes its running mean in place though its schema
says it writes nothing. The program so kept its last 72 calls in the file, where `guarded` (the program's own
tensors) cannot see them, and read ahead wherever a remembered row shared a prefix: red team 52's program.
Both operators are aten's, neither schema is mutable, and the stats fit their channels: the scorer ran it.

Measured on d955cdd (2-core CPU, nice'd): in process every probe read 0.0, the next token read at 1983 of
2016 positions; end to end (red team 49's night) "clean val_bpb 2.752696, held-out 2.850452" against the
baseline's 3.299741 / 3.398565, "gain +0.547045 on validation, +0.548113 held-out ... unconfirmed: 7
finding(s)", all 7 the static reading's lines on torch.export.load/save and torch.ops.aten (the nightly
audit names the commit by them too): the clean scorer itself was beaten.

Fixed twice over: the clean scorer takes the program apart into core ATen and refuses any other operator
(from_file has no fake kernel to decompose with, and native_batch_norm comes back functional); and the run's
record carries the sha256 of the file export_model wrote, which the confirm compares with the bytes the
scorer loaded (read once, hashed, loaded from memory: no file mapped that a process left behind could change).
A second finding, no channel built: `_ctc_loss` reads log_probs by target values unchecked; it is not core
ATen (refused).
"""
import os
import sys

import torch
from common import ROOT  # noqa: F401  the repository on the import path
from test_redteam52 import scorer_error

import audit

SLOTS, ROWS, LENGTH = 8, 2, 16
N = 2 * SLOTS * ROWS * LENGTH  # floats kept: rows and the next tokens used, for each remembered call


class Recall(torch.nn.Module):
    """Red team 52's program: the next token, except where a remembered row shares a prefix."""
    def __init__(self, vocab):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(vocab, vocab))

    def forward(self, idx):
        B, T = idx.shape
        z, memory = idx.float(), torch.full((N,), -1.0)  # becomes aten.from_file(the artifact, True, N)
        seen, given = memory.view(2, SLOTS, B, T).unbind(0)
        longest, which = (seen == z[None]).long().cumprod(-1).sum(-1).max(0)
        theirs = given.gather(0, which[None, :, None].expand(1, B, T))[0]
        own = torch.cat((z[:, 1:], torch.full((B, 1), -1.0)), 1)
        nxt = torch.where(torch.arange(T)[None] < longest[:, None], theirs, own)
        new = torch.stack((torch.cat((z[None], seen[:-1])), torch.cat((nxt[None], given[:-1]))))
        mean = torch.native_batch_norm(new.reshape(1, -1, 1).expand(1, N, 2), None, None, memory,
                                       torch.ones(N), True, 1.0, 0.0)[0]  # writes `memory`, once retargeted
        hit = torch.arange(self.table.size(-1)).float()[None, None] == nxt[..., None]
        return self.table[idx] + 5 * hit + 0 * mean.flatten()[0]


def retarget(path):
    """Red team 55's rewrite, after the export: the memory mapped from the artifact itself, and written."""
    aten, program = torch.ops.aten, torch.export.load(path)
    for node in program.graph.nodes:
        if node.target is aten.full.default and node.args[0] == [N]:
            node.target, node.args, node.kwargs = aten.from_file.default, (path, True, N), dict(
                dtype=torch.float32)
        elif node.target is aten._native_batch_norm_legit_functional.default:
            node.target = aten.native_batch_norm.default
    program.graph_module.recompile()
    torch.export.save(program, path)


def test_the_clean_scorer_refuses_a_program_that_keeps_its_calls_in_a_file(tmp_path):
    error, err = scorer_error(Recall(64).eval(), (ROWS, LENGTH), tmp_path, retarget)
    assert error.startswith("it calls operators outside core ATen, the only ones the scorer runs: ("), err
    assert "aten::from_file" in error  # d955cdd's scorer ran it (error None)


def test_the_confirm_scores_only_the_file_the_evaluation_exported(tmp_path):
    """The scorer names the sha256 of the bytes it loaded; a file changed after the export is named."""
    class Histogram(torch.nn.Module):  # refused before any data is read: the scorer answers at once
        def __init__(self, bins):
            super().__init__()
            self.bins = bins

        def forward(self, idx):
            return torch.histc(idx.float(), self.bins, 0, 16)[None, None].expand(*idx.shape, self.bins)

    path = str(tmp_path / "model.pt2")
    run = dict(artifact=path, record=dict(batch_size=2))
    run["record"]["artifact_sha256"] = audit.export_model(Histogram(16), (2, 16), torch.device("cpu"), path)
    base = dict(python=sys.executable, path=sys.path)
    frozen = {name: (ROOT / name).read_bytes() for name in ("prepare.py", "audit.py")}
    assert audit.clean_score(run, base, frozen, 0)["error"].startswith("it calls operators outside core ATen")
    audit.export_model(Histogram(8), (2, 16), torch.device("cpu"), path + ".other")
    os.replace(path + ".other", path)  # train.py's code, after the export
    assert audit.clean_score(run, base, frozen, 0)["error"] == (
        "its exported model is not the file its evaluation exported (changed since)")


def test_the_clean_scorer_runs_cudnns_attention_only_on_whole_rows():
    """Of the cudnn namespace, only its attention (train.py's windowed layers), and without the ragged
    batches' lengths and offsets, which index the tensors by their values (train.py passes none)."""
    from common import cudnn_attention_on_cpu
    cudnn_attention_on_cpu()  # registers cudnn::sdpa
    graph = torch.fx.Graph()
    q, lengths = graph.placeholder("q"), graph.placeholder("lengths")
    whole = graph.call_function(torch.ops.cudnn.sdpa.default, (q, q, q, 0.1, True))
    ragged = graph.call_function(torch.ops.cudnn.sdpa.default, (q, q, q, 0.1, True), dict(seq_len_q=lengths))
    assert not audit.unchecked_read(whole) and audit.unchecked_read(ragged)
