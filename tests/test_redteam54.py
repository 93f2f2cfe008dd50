"""Red team 54: the batch-norm kernels index running statistics by channel with no bounds check, so an
exported program reads and writes memory past its tensors' storages, and keeps state there that `guarded`
cannot see.

- aten._native_batch_norm_legit_no_training (torch.native_batch_norm(..., training=False)) reads
  running_mean[c] and running_var[c] for every channel c < input.size(1): with a 1-element running_mean, x = 0
  and running_var = ones the output is -running_mean[c], floats from behind the tensor. It has a meta kernel.
- aten.batch_norm_update_stats (red team 52's writer, whose schema says it writes nothing) writes
  running_mean[c] for every channel: K - 1 floats past a 1-element running_mean. (Export runs its real kernel
  on a zeros_like of each input, a 1-float allocation: K - 1 <= 4 stays in that block's slack; K = 16
  corrupted the exporting process's heap.)
Neither is in audit.STRIDED or audit.UNCHECKED, so audit.unchecked_read passes both.

torch.export.load builds each constant with torch.frombuffer(bytes): a 16-byte constant is a 48-byte pymalloc
block with 16 bytes past the storage that no tensor owns. The program views its constants' last floats, reads
the 4 floats behind each and writes them back (the constant's own float written with the value it holds, so
audit.guarded, which compares and puts back whole storages, sees nothing). Measured on 0f594a9: call k's
output carries call k - 1's input; written = set(); no operator refused. A read-ahead program on this channel
got past every plain probe in process but not yet past score's own probe; no night or confirm ran.

Fixed: the scorer refuses batch_norm_update_stats, and a batch norm whose per-channel tensors do not hold one
element a channel of its input (audit.stats_fit), before it runs anything: guarded cannot see memory outside
the storages, so the refusal is the fix. And reaches_past bounds an as_strided by what its base reaches
through its strides, not by its element count (an expanded base shows more elements than its storage).
"""
import os

import torch
from common import ROOT  # noqa: F401  the repository on the import path

import audit

CELLS, K = 4, 5  # constants; channels: the constant's own last float and the 4 floats behind it


class Channel(torch.nn.Module):
    """Each call's output shows the previous call's first row (its first 16 tokens), kept behind constants."""
    def __init__(self):
        super().__init__()
        for i in range(CELLS):
            setattr(self, f"c{i}", torch.full((4,), 7.0))  # 16 bytes: a 48-byte block, 16 behind the storage
        self.ones = torch.ones(K)

    def forward(self, idx):
        B, T = idx.shape
        got, keep, new = [], [], idx[0, :CELLS * (K - 1)].float().reshape(CELLS, K - 1)
        for i in range(CELLS):
            last = getattr(self, f"c{i}")[3:]
            got.append(-torch.native_batch_norm(torch.zeros(1, K, 1), None, None, last, self.ones, False, 0.0,
                                                0.0)[0].reshape(K)[1:])
            w = torch.cat((last, new[i])).reshape(1, K, 1).expand(2, K, 1).contiguous()
            keep.append(torch.batch_norm_update_stats(w, last, None, 1.0)[0][:1])
        memory = torch.cat(got)
        return torch.zeros(B, T, 16) + memory + 0 * torch.cat(keep).sum()


def test_the_clean_scorer_refuses_reads_and_writes_past_running_stats(tmp_path):
    """The scorer's static reading (unchecked_read, the namespaces, the graph signature) must refuse a
    batch-norm operator whose running statistics are shorter than its channels. Fails on 0f594a9: nothing
    is refused."""
    path = str(tmp_path / "model.pt2")
    audit.export_model(Channel(), (2, 64), torch.device("cpu"), path)
    assert not os.path.exists(path + ".failed")
    program = torch.export.load(path)
    assert {s.kind.name for s in program.graph_signature.output_specs} == {"USER_OUTPUT"}
    refused = {str(n.target) for n in program.graph.nodes if audit.unchecked_read(n)}
    assert refused, "unchecked_read passes native_batch_norm / batch_norm_update_stats past their stats"


def test_an_as_strided_past_an_expanded_bases_storage_is_refused():
    """Red team 54's note: an expanded base (stride 0) shows n elements over one float, so its element count
    does not bound what an as_strided of it may reach: a constant's storage behind its one shown float."""
    class Behind(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.full((9,), 7.0)[:1]

        def forward(self, idx):
            seen = torch.as_strided(self.c.expand(8), (8,), (1,), 1)  # the 8 floats behind the shown one
            return torch.nn.functional.one_hot(idx, 8).float() + seen

    program = torch.export.export(Behind(), (torch.zeros(2, 16, dtype=torch.int64),)).run_decompositions({})
    assert [str(n.target) for n in program.graph.nodes if audit.unchecked_read(n)] == [
        "aten.as_strided.default"]
