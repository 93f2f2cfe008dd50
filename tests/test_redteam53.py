"""Red team 53: a program with state the clean scorer cannot see, kept in the storage behind a constant.

Red team 52's fix (audit.guarded) copies every tensor the program holds (own_tensors: parameters, buffers,
constants) and, after every call, compares each with its copy and puts back any that moved. It compares the
tensor, not its storage. torch.export.save writes a constant's whole untyped storage (pt2_archive
_get_raw_tensor_bytes), and torch.export.load rebuilds the constant with as_strided on it: a constant that is
a one-float view of a large storage comes back as a one-float view of the whole storage. The program reads
and writes the rest with aten.as_strided (bounds-checked against the storage, so no unchecked read) and
red team 52's aten.batch_norm_update_stats (its schema says it writes nothing). guarded sees one float that
never moves: nothing is named, nothing put back.

The program is red team 52's Recall with its memory behind the visible float, and 80 slots rather than 24:
the clean scorer now answers each batch, a decoy, then T - 1 = 63 cut passes (every position of every row
on the test nights), and score's own probe calls `probed` twice (the changed batch, then the batch): the
first answer for a prefix must still be remembered 130 calls on. It reads the true next token at ~98 % of
positions.

Measured on 264c2fc (2-core CPU, nice'd): in process, 5 seeds of 5, every probe 0.0 and nothing named; end to
end (red team 49's night, WEIGHT 0.1), 3 confirms of 3 "gain +0.1129 on validation, +0.1129 held-out, noise
floor 0.001000: the gain holds (weaker)", the audit silent. A second finding: fresh_memory fills the elements
of an empty tensor, not its storage: torch.empty_strided((2,), (n - 1,)) holds n - 2 floats as the allocator
hands them back (a freed tensor's, 49,991 of 50,000), which as_strided reads.

Fixed: guarded keeps and puts back the whole storage of each tensor the program holds; and the scorer refuses
a program with an as_strided that reaches past its input's elements or an empty_strided with gaps ("it reads
memory no element of its tensors shows"). The night and confirm (about 3 minutes) ran once on the fix and stay
out of the suite.
"""
import pytest
import torch
from common import ROOT  # noqa: F401  the repository on the import path
from test_audit import tiny
from test_redteam52 import scored_in_process, scorer_error

import audit

RECALL = '''\
SLOTS = 80


class Recall(torch.nn.Module):
    def __init__(self, vocab, rows=4, length=MAX_SEQ_LEN, weight=WEIGHT):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(vocab, vocab))
        self.rows, self.length, self.weight = rows, length, weight
        self.size = 2 * SLOTS * rows * length
        self.memory = torch.full((1 + 2 * self.size,), -1.0)[:1]  # one float shown, the rest behind it

    def forward(self, idx):
        logits = self.table[idx]
        B, T = idx.shape
        if self.training or (B, T) != (self.rows, self.length):
            return logits
        z = idx.float()
        memory = torch.as_strided(self.memory, (self.size,), (1,), 1)
        spread = torch.as_strided(self.memory, (self.size,), (1,), 1 + self.size)
        seen, given = memory.view(2, SLOTS, B, T).unbind(0)
        shared = (seen == z[None]).long().cumprod(-1).sum(-1)
        longest, which = shared.max(0)
        theirs = given.gather(0, which[None, :, None].expand(1, B, T))[0]
        own = torch.cat((z[:, 1:], torch.full((B, 1), -1.0)), 1)
        nxt = torch.where(torch.arange(T)[None] < longest[:, None], theirs, own)
        new = torch.stack((torch.cat((z[None], seen[:-1])), torch.cat((nxt[None], given[:-1]))))
        mean = torch.batch_norm_update_stats(new.reshape(1, -1, 1), memory, spread, 1.0)[0]
        hit = torch.arange(logits.size(-1)).float()[None, None] == nxt[..., None]
        return logits + self.weight * hit + 0 * mean[:1]
'''
SEEDED = "SEED = 42\ntorch.manual_seed(SEED)\n"
BASELINE = tiny(middle=SEEDED)
WEIGHT = 0.1
ATTACK = tiny(middle=SEEDED + RECALL.replace("WEIGHT", str(WEIGHT)), model="Recall", late="model.eval()\n")


def recall_class(weight=5.0):
    space = dict(torch=torch, MAX_SEQ_LEN=64)
    exec(RECALL.replace("WEIGHT", str(weight)), space)
    return space["Recall"]


def test_static_reading_passes_the_attack():
    assert audit.source_findings(ATTACK) == []
    assert audit.seed_line(ATTACK)[0] == 42


@pytest.mark.parametrize("seed", range(2))
def test_the_clean_scorers_probes_see_state_behind_a_constant(tmp_path, seed):
    """The exported program as the clean scorer runs it, with T - 1 cuts a row as on the test nights: it
    reads the next token at most positions, and a probe must see it and guarded name the write. Fails on
    264c2fc: every probe reads 0.0 and nothing is named."""
    reads, most, written = scored_in_process(recall_class(), seed, tmp_path, cuts=63)
    assert reads > 0.9 * 16 * 4 * 63  # it reads ahead
    assert "inner.memory" in written and most > audit.CAUSAL_TOLERANCE, (most, written)  # 264c2fc: 0.0


def test_the_clean_scorer_refuses_a_view_past_a_constants_elements(tmp_path):
    error, err = scorer_error(recall_class()(512).eval(), (4, 64), tmp_path)
    assert error == "it reads memory no element of its tensors shows: aten.as_strided.default", err


def test_the_clean_scorer_refuses_an_empty_with_gaps(tmp_path):
    """torch.empty_strided((2,), (n - 1,)): n - 2 floats no element shows, left as the allocator had them."""
    class Gaps(torch.nn.Module):
        def forward(self, idx):
            gaps = torch.as_strided(torch.empty_strided((2,), (999,)), (1000,), (1,), 0)
            return torch.nn.functional.one_hot(idx, 8).float() + 0 * gaps.nan_to_num().sum()

    error, err = scorer_error(Gaps(), (2, 16), tmp_path)
    assert error == "it reads memory no element of its tensors shows: aten.empty_strided.default", err
    program = torch.export.load(str(tmp_path / "model.pt2"))  # the view stays within its base's strides
    assert [str(n.target) for n in program.graph.nodes if audit.reaches_past(n)] == [
        "aten.empty_strided.default"]


def test_a_models_own_views_are_not_refused():
    """Transposes, slices and expands of a model's tensors stay within their elements (an honest export)."""
    class Views(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Parameter(torch.randn(8, 8))

        def forward(self, idx):
            t = self.table
            return t.t()[idx] + t[:, :1].expand(8, 8)[idx] + t.unfold(0, 2, 2).sum(-1)[idx % 4]

    program = torch.export.export(Views(), (torch.zeros(2, 16, dtype=torch.int64),)).run_decompositions({})
    assert not any(audit.reaches_past(n) for n in program.graph.nodes)


def test_operators_that_skip_checks_are_refused():
    """Found beside red team 53's route (not attacked): the index operators named unsafe are made for indices
    known in bounds, and a sparse tensor can be built with no check of its indices; neither is a model's."""
    class Unchecked(torch.nn.Module):
        def forward(self, idx):
            table = torch.nn.functional.one_hot(idx, 8).float()
            return torch.ops.aten._unsafe_index(table, [None, None, torch.arange(8)])

    x = torch.zeros(2, 16, dtype=torch.int64)
    program = torch.export.export(Unchecked(), (x,)).run_decompositions({})
    assert [str(n.target) for n in program.graph.nodes if audit.unchecked_read(n)] == [
        "aten._unsafe_index.Tensor"]
    refused = {s.name for s in torch._C._jit_get_all_schemas() if audit.UNCHECKED.search(s.name)}
    assert {"aten::_sparse_coo_tensor_unsafe", "aten::_unsafe_masked_index"} <= refused
    assert not refused & {"aten::_unsafe_view", "aten::index", "aten::embedding", "aten::gather"}


def test_a_batch_norm_must_hold_one_statistic_a_channel():
    """Red team 54: the batch norm kernels index their per-channel tensors by channel with no bounds check, so
    a running mean of 1 float with 8 channels reads 7 floats past its storage; one of 8 is a model's own."""
    class Norm(torch.nn.Module):
        def __init__(self, stats):
            super().__init__()
            self.register_buffer("mean", torch.zeros(stats))
            self.register_buffer("var", torch.ones(stats))

        def forward(self, idx):
            x = torch.nn.functional.one_hot(idx, 8).float().transpose(1, 2)  # (B, 8 channels, T)
            out = torch.native_batch_norm(x, None, None, self.mean, self.var, False, 0.0, 1e-5)[0]
            return out.transpose(1, 2)

    def refused(stats):
        x = torch.zeros(2, 16, dtype=torch.int64)
        program = torch.export.export(Norm(stats).eval(), (x,)).run_decompositions({})
        return [str(n.target) for n in program.graph.nodes if audit.unchecked_read(n)]

    assert refused(8) == []
    assert refused(1) == ["aten._native_batch_norm_legit_no_training.default"]
