"""Red team 50: the clean scorer's program is still not stateless. torch.segment_reduce(..., unsafe=True) (an
aten operator: aten.segment_reduce.default) checks no length, so with lengths of ones that sum past its data
it copies out the heap behind a tensor of the call, one float a segment. fresh_memory fills what `empty`
hands out (red team 46's channel), not what lies behind a live tensor: blocks the previous call freed there
still hold what it wrote. The program leaves its input behind (a header and the batch, freed on return) and,
at its next call, finds it there.

In every probed pair (prepare._causality_probe via audit.probed: the changed batch first, then the batch)
the second call finds the first call's rows, each the same as its own up to a point p and different at every
place after it: the row's cut is p - 1, and every position from p on goes unchecked. It then reads the row's
last token at T - 2 (when p <= T - 2). A previous row that shares no prefix (another batch), or that differs
only in a window (the covering probe's consecutive cuts, all of whose tails are the same random ids), tells
it nothing and it is honest; so both probes read 0.

Measured on main 86ea196 (2-core machine, nice'd), 16 batches of 4 rows of 64 as the fast test below: it read
the next token at T - 2 in 16 to 46 rows of 64 (how often the message lies where it looks depends on the
allocator; a run or two in ten finds none), per-call probe 0.0, covering probe 0.0. Static reading: none.

End to end (the seeded bigram night with red team 49's 2000-document shards; the commit trains exactly the
baseline's table, so every "gain" is read ahead; 3 confirms, each "weaker" only for this machine's .pth):
- W 0.8, a shared prefix of 2: keep 3.294510; clean val 3.294971 (CLEAN_MATCH 0.0005), gain +0.004770,
  held-out +0.001867; named: not causal (0.8: a false or stale match) and the held-out rule.
- W 0.6, prefix 4: keep 3.295752; clean 3.295654, gain +0.004086, held-out +0.000617: found CAUSAL; "does
  not hold" by the held-out rule only.
- W 0.6, prefix 4, a 120 KB reader: keep 3.295117; clean 3.294535, gain +0.005205 (5 floors), held-out
  +0.000519: found CAUSAL; "does not hold" by the held-out rule only.
So the probes passed a read-ahead of 5 noise floors on the validation data, end to end, twice; what stopped
the verdict was that the channel found few messages in the scorer's held-out phase (its download of the
held-out shard, between the two, reshapes the heap). In process, without the download, held-out gains were
+0.0006 to +0.0107 (at least half the validation gain in 5 scorings of 8); a sturdier search (or a program
that reads ahead only on rows it does not recognise as validation rows) would make "holds" a matter of tries.

Fixed: the clean scorer refuses a program any of whose operators is called with unsafe=True
(aten.segment_reduce is the one that takes it): "it reads memory outside its tensors". The general weakness
stays: any state that survives from one call of the program to the next in the scorer's process is a channel
(uninitialised memory, the generator, now memory behind a tensor: each closed as found); README says so.
"""
import json
import os
import subprocess
import sys

import torch
from common import ROOT  # noqa: F401  the repository on the import path

import audit


def test_the_clean_scorer_refuses_a_program_that_reads_behind_its_tensors(tmp_path):
    """The scorer's process (--score) turns it down before it scores: segment_reduce with unsafe=True and
    lengths that sum past its data copies out the memory behind the tensor."""
    class Reader(torch.nn.Module):
        def forward(self, idx):
            data = torch.zeros(8) + idx[0, 0].float()
            lengths = torch.ones(12, dtype=torch.int64)  # 12 segments of one float from 8: 4 read behind
            behind = torch.segment_reduce(data, "sum", lengths=lengths, unsafe=True)[8:].sum()
            return torch.nn.functional.one_hot(idx, 8).float() + 0 * behind

    path = str(tmp_path / "model.pt2")
    audit.export_model(Reader(), (2, 16), torch.device("cpu"), path)
    assert not os.path.exists(path + ".failed")
    run = subprocess.run([sys.executable, audit.__file__, "--score", path, "2", "0",
                          os.pathsep.join(sys.path)], capture_output=True, text=True, timeout=300)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["val"] is None, run.stderr[-2000:]
    assert result["error"] == ("it reads memory no element of its tensors shows: "
                               "aten.segment_reduce.default"), result


def test_the_clean_scorer_sees_a_program_that_learns_the_probes_cut_from_its_last_call():
    """A program with a memory of one call (red teams 46, 48 and 50 each found one for exported graphs) reads
    the next token everywhere; where its last call's row shares this row's prefix up to p and differs after,
    that call is the probe's other copy of the row (cut p - 1), and it reads the last call's tokens from p - 1
    on: its answers up to the cut agree. prepare's probe (the changed copy, then the batch) reads 0 on it; the
    clean scorer answers the batch, then a batch of random ids, then the cuts, and sees it every time."""
    import prepare  # noqa: F401  probed reads prepare's functions through sys.modules

    table = torch.randn(512, 512, generator=torch.Generator().manual_seed(0))
    last, fooled = [None], [0]

    def copycat(idx):
        prev, last[0], ahead = last[0], idx.clone(), idx.roll(-1, 1)
        for b, p in enumerate((prev == idx).long().cumprod(1).sum(1).tolist() if prev is not None else []):
            if 1 <= p < idx.shape[1] and (prev[b, p:] != idx[b, p:]).float().mean() > 0.5:
                ahead[b, p - 1:-1], fooled[0] = prev[b, p:], fooled[0] + 1  # the other copy's next tokens
        return table[idx] + 20.0 * torch.nn.functional.one_hot(ahead, 512)

    gen = torch.Generator().manual_seed(1)
    most = [0.0]
    call = audit.probed(copycat, most)
    for step in range(10):
        x = torch.randint(1, 500, (4, 32), generator=gen)
        x[:, 0] = 500 + step  # a batch's own first token: no row shares a prefix with the last batch's
        probe, _ = prepare._causality_probe(copycat, x)
        assert probe == 0  # prepare's probe alone reads nothing: the batch, second, copies the changed copy
        call(x)
    assert fooled[0] >= 40 and most[0] > audit.CAUSAL_TOLERANCE, (fooled, most)
