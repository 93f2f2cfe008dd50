"""Red team 52: a program with state the clean scorer cannot see, written through an operator whose schema
says it writes nothing.

aten.batch_norm_update_stats(input, running_mean, running_var, momentum) updates running_mean and running_var
in place, but its schema marks neither as written (no `Tensor(a!)`). torch.export (functionalization) takes
it for a pure operator: the exported program keeps it as it is, its graph signature has USER_OUTPUT only, its
operators are all aten's, none is called with unsafe=True: the clean scorer loads and runs it. With momentum
1.0 and an input shaped (1, C, 1) the running mean becomes the input exactly, so a program writes any floats
into a tensor constant of its own (a plain tensor attribute of train.py's module: not a parameter or buffer,
so no fingerprint sees it in the run's own evaluation either), and reads them at its next call.

The program remembers its last 24 calls (their rows, and the next token it used at each position), and
reads the next token from its input, except where a row shares a prefix with a remembered row: there it
uses the remembered row's choice. So a logit at t is a function of the tokens up to t and of what came
before; changing the tokens after a cut moves nothing at or before it (the per-call probe, the decoy check
whose repeated batch matches the remembered one in full, the covering probe whose first batch is remembered
through its 16 calls). It reads the true next token at ~97 % of positions (all but each probed row's cut).

Measured on 18d3ceb (2-core CPU, nice'd):
- in process (below: the saved .pt2 loaded, fresh_memory, reseeded, every call through audit.probed,
  score's own probe, covering_probe): every probe 0.0 in 5 seeds of 5, argmax = next token at ~3905 of 4032.
- end to end (red team 49's night, 2000-document shards): WEIGHT 0.5: the clean scorer found it causal, but
  "its run reported 2.756389, the clean scorer 2.762276: tampered" (CLEAN_MATCH: the clean scorer probes
  every batch, so more cut positions inherit a random token): "unconfirmed". WEIGHT 0.1: 3 confirms of 3
  "the gain holds (weaker, see above)" (weaker only for this machine's _sandboxing_egress_ca.pth), e.g.
  "gain +0.110919 on validation, +0.110859 held-out, noise floor 0.001000"; clean 3.188822 / 3.287706
  against the baseline's 3.299741 / 3.398565; the commit's table is the baseline's, trained alike.

Fixed: the clean scorer keeps a copy of every tensor the program holds (parameters, buffers, constants) and,
after every call, puts back any that moved and names the program ("it writes to its own tensors between
calls"): no state survives a call through its own tensors, whatever operator wrote them. A second finding:
segment_reduce reads past its data through `offsets` with unsafe left False; the scorer now refuses
segment_reduce in any form. The night and confirm of this route (red team 49's night, about 3 minutes) ran
once on the fix and stay out of the suite: the fast tests below are the mechanism.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
from common import ROOT  # noqa: F401  the repository on the import path
from test_audit import tiny

import audit
import prepare

RECALL = '''\
SLOTS = 24


class Recall(torch.nn.Module):
    def __init__(self, vocab, rows=4, length=MAX_SEQ_LEN, weight=WEIGHT):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(vocab, vocab))
        self.rows, self.length, self.weight = rows, length, weight
        self.memory = torch.full((2 * SLOTS * rows * length,), -1.0)
        self.spread = torch.ones(2 * SLOTS * rows * length)

    def forward(self, idx):
        logits = self.table[idx]
        B, T = idx.shape
        if self.training or (B, T) != (self.rows, self.length):
            return logits
        z = idx.float()
        seen, given = self.memory.view(2, SLOTS, B, T).unbind(0)
        shared = (seen == z[None]).long().cumprod(-1).sum(-1)
        longest, which = shared.max(0)
        theirs = given.gather(0, which[None, :, None].expand(1, B, T))[0]
        own = torch.cat((z[:, 1:], torch.full((B, 1), -1.0)), 1)
        nxt = torch.where(torch.arange(T)[None] < longest[:, None], theirs, own)
        new = torch.stack((torch.cat((z[None], seen[:-1])), torch.cat((nxt[None], given[:-1]))))
        mean = torch.batch_norm_update_stats(new.reshape(1, -1, 1), self.memory, self.spread, 1.0)[0]
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


def scored_in_process(recall, seed, tmp_path, cuts=1):
    """(positions read ahead, the probes' largest move, the tensors guarded named) of a Recall program,
    exported and run as the clean scorer runs it: loaded, fresh memory, guarded, every call probed with
    `cuts` cuts a row, score's own probe around one batch, the covering probe."""
    torch.manual_seed(seed)
    model = recall(512)
    model.table.data = torch.randn(512, 512) * 0.1
    model.eval()
    path = str(tmp_path / "model.pt2")
    audit.export_model(model, (4, 64), torch.device("cpu"), path)
    program = torch.export.load(path)
    assert {s.kind.name for s in program.graph_signature.output_specs} == {"USER_OUTPUT"}
    audit.fresh_memory(torch)
    written = set()
    try:
        run = audit.guarded(program.module(), written)
        gen, most, reads = torch.Generator().manual_seed(seed), [0.0], 0
        call = audit.probed(run, most, cuts)
        batches = [torch.cat((torch.full((4, 1), 511), torch.randint(1, 500, (4, 63), generator=gen)), 1)
                   for _ in range(16)]
        for step, x in enumerate(batches):
            if step == 3:  # score's own probe of one batch, around the probed call
                probe, logits = prepare._causality_probe(call, x)
                most[0] = max(most[0], probe)
            else:
                logits = prepare._call(call, x)
            reads += (logits.argmax(-1)[:, :-1] == x[:, 1:]).sum().item()
        most[0] = max(most[0], audit.covering_probe(run, batches[0]))
    finally:
        torch.use_deterministic_algorithms(False)
    return reads, most[0], written


def scorer_error(program, shape, tmp_path, rewrite=lambda path: None):
    """What the clean scorer's process says of the exported program (it refuses it before any scoring);
    `rewrite`: what train.py does to the file after (red team 55)."""
    path = str(tmp_path / "model.pt2")
    audit.export_model(program, shape, torch.device("cpu"), path)
    assert not os.path.exists(path + ".failed")
    rewrite(path)
    run = subprocess.run([sys.executable, audit.__file__, "--score", path, str(shape[0]), "0",
                          os.pathsep.join(sys.path)], capture_output=True, text=True, timeout=300)
    lines = run.stdout.strip().splitlines()
    return (json.loads(lines[-1]) if lines else {}).get("error"), run.stderr[-1500:]


@pytest.mark.parametrize("seed", range(2))
def test_the_clean_scorers_probes_see_a_program_with_hidden_state(tmp_path, seed):
    """The exported program as the clean scorer runs it: it reads the next token at most positions, and every
    probe must see it."""
    reads, most, written = scored_in_process(recall_class(), seed, tmp_path)
    assert reads > 0.9 * 16 * 4 * 63  # it reads ahead
    assert most > audit.CAUSAL_TOLERANCE, most  # 18d3ceb's scorer read 0.0
    assert "inner.memory" in written, written  # named, and put back after every call


def test_the_clean_scorer_refuses_segment_reduce_reading_past_its_data_by_offsets(tmp_path):
    """A second, smaller finding: red team 50's fix refuses segment_reduce called with unsafe=True, but with
    `offsets` (unsafe left False) segment_reduce checks nothing either: offsets past the data's end copy out
    the memory behind the tensor (here: non-NaN floats under fresh_memory, which fills only what `empty` hands
    out). The scorer runs such a program. Fails on 18d3ceb (the scorer does not refuse it)."""
    class Reader(torch.nn.Module):
        def forward(self, idx):
            data = torch.zeros(8) + idx[0, 0].float()
            offsets = torch.cat((torch.zeros(1, dtype=torch.int64), torch.arange(8, 8 + 65)))
            behind = torch.segment_reduce(data, "sum", offsets=offsets)[1:]  # 64 floats behind the data
            return torch.nn.functional.one_hot(idx, 8).float() + 0 * behind.nan_to_num().sum()

    error, err = scorer_error(Reader(), (2, 16), tmp_path)
    program = torch.export.load(str(tmp_path / "model.pt2"))
    audit.fresh_memory(torch)
    try:
        data = torch.zeros(8)
        offsets = torch.cat((torch.zeros(1, dtype=torch.int64), torch.arange(8, 8 + 65)))
        behind = torch.segment_reduce(data, "sum", offsets=offsets)[1:]
        assert (~behind.isnan()).sum() > 0  # it read memory that is not the tensor's
    finally:
        torch.use_deterministic_algorithms(False)
    assert any("segment_reduce" in str(n.target) for n in program.graph_module.graph.nodes)
    assert error == "it reads memory no element of its tensors shows: aten.segment_reduce.default", err


def test_the_runs_own_fingerprint_sees_a_plain_tensor_attribute_written():
    """In the night's own evaluation the program writes its memory in place too: a plain tensor attribute,
    no weight or buffer, which the fingerprint before and after scoring (audit.fingerprint) now counts."""
    model = recall_class()(512).eval()
    x = torch.randint(1, 500, (4, 64), generator=torch.Generator().manual_seed(0))
    before = audit.fingerprint(model)
    with torch.no_grad():
        model(x)
    assert before.shape == (3, 2) and not torch.equal(before, audit.fingerprint(model))
