"""Red team 47: a stateless exported program that reads ahead and hides from the clean scorer's probes by
rebuilding, from the probe's own changed row, the token the probe took away. Against main e3b0571. Nothing got
past --confirm end to end: 3 confirms, each "not causal".

The model is the bigram table, except at the positions READ, where it reads the row's next token (the target)
and puts weight W on it. The clean scorer's probes change every token after a cut. Position t's answer
changes only when the cut is exactly t, and then the model rebuilds x[t + 1] from what the probe leaves:
- prepare._causality_probe (audit.probed's per-call probe, and score's): the tail after the cut becomes
  the row rolled by r (at batch size 1, the row itself).
  - If r > cut, the row's own BOS lands at r, and x[t + 1] at r + t + 1. Rule: read z[j + t + 1] behind the
    first inner BOS j.
  - If 2 <= r <= cut, the tail repeats the prefix at lag r. Rule: read z[t + 1 + r].
  - Lost only when r + t + 1 > T - 1, or r = 1: (t + 2) / 63 of rolls, at a cut of t (1 in 63).
- audit.covering_probe: the tail becomes x - 1. Rule: the table picks among "no cut", "cut at t" (both tokens
  one up) and "cut at t + 1" (the second one up). This is right wherever the bigram tells the true pair from
  its neighbour ids. On the test night's val row it is right at 0, 4, 5, 6, 8, 9 and 11 of 0..11; on the
  held-out row at 1..11 (not at 0). READ holds the positions right on val.
Nothing is remembered between calls: aten ops only, no mutation. The exported program is the same function as
the eager model, so CLEAN_MATCH holds, and it "gains" about as much on held-out as on validation.
Confirms, all run (3 of 3):
  READ (0,)       +0.083 val / +0.089 held-out, not causal 6.24 (held-out row, covering: table wrong at 0)
  READ (4, 5, 6)  +0.145 / +0.127, not causal 12.5 (cause not pinned down)
  READ (4,)       +0.036 / +0.050, not causal 6.79
Run in-process 12 times as the scorer does (both splits), READ (4,) read 0 on both splits 7 times, and
(4, 5, 6) 5 times. So about one confirm in two says "holds" in this night; the 3rd confirm was the
unlucky half.

Fixed: both probes put random ids after the cut (prepare._causality_probe's donor, audit.covering_probe's
other: drawn from an unforeseeable generator, up to the batch's largest id), which tell the model nothing
of the tokens they replace: now a scoring of the test's 64 rows misses it about 1 time in 700.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MIDDLE = '''
SEED = 42
torch.manual_seed(SEED)
W = 0.9  # the weight on the token read ahead
READ = (4,)  # the position that reads ahead (where the covering rule is right on val's row)


class Peek(Bigram):
    def __init__(self, vocab, bos):
        super().__init__(vocab)
        self.bos, self.peeking = bos, False

    def forward(self, idx):
        logits = self.table[idx]
        if not self.peeking:
            return logits
        T, V = idx.shape[1], logits.shape[-1]
        table = torch.log_softmax(self.table, -1)
        out = torch.log_softmax(logits, -1)
        inner = idx[:, 1:T - 1] == self.bos  # a BOS inside: the roll probe's (its donor's first token)
        has, j = inner.any(1), inner.long().argmax(1) + 1
        cols = []
        for t in range(T):
            if t not in READ:
                cols.append(out[:, t])
                continue
            prev, a, b = idx[:, t], idx[:, t + 1], idx[:, t + 2]
            a1, b1 = (a + 1).clamp(max=V - 1), (b + 1).clamp(max=V - 1)
            kept = table[prev, a] + table[a, b]  # no cut at t or t + 1
            both = table[prev, a1] + table[a1, b1]  # the covering probe's cut at t: x - 1 after it
            second = table[prev, a] + table[a, b1]  # its cut at t + 1
            guess = torch.where((both > kept) & (both > second), a1, a)
            at = j + t + 1  # the roll probe's: the donor row's token t + 1, behind its BOS
            rolled = idx.gather(1, at.clamp(max=T - 1)[:, None])[:, 0]
            for r in range(t, 1, -1):  # a roll by 2 <= r <= t hides the donor's BOS: the prefix repeats
                same = (idx[:, t + 1:t + 1 + r] == idx[:, t + 1 - r:t + 1]).all(1)
                guess = torch.where(same, idx[:, t + 1 + r], guess)
            guess = torch.where(has & (at <= T - 1), rolled, guess)
            pick = torch.arange(V)[None, :] == guess[:, None]
            boost = torch.where(pick, math.log(W), -math.inf)
            cols.append(torch.logaddexp(out[:, t] + math.log(1 - W), boost))
        return torch.stack(cols, 1)

'''


def test_the_clean_scorers_probes_see_a_reconstructing_program(tmp_path):
    """The mechanism alone, in seconds, on synthetic rows (one BOS each, as the test night's). The Peek
    program is exported as audit.export_model does, then loaded and probed as the clean scorer does: fresh
    memory, every call probed, and covering_probe on the first row. It reads the next token at position 4 of
    every row. A stateless read at one position meets a cut there 1 time in 63 a row, so each scoring of 64
    rows should see it. But the probe's own changed rows hand the true token back (the roll's donor BOS, the
    repeated prefix, or the covering probe's x - 1 undone by the table), so most scorings read 0 (8 of 10
    here).
    """

    import torch
    from common import bigram_classes

    import audit
    import prepare  # noqa: F401  probed and covering_probe read prepare through sys.modules

    space = bigram_classes(MIDDLE)
    V, BOS, T = 512, 508, 64
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 500, (64, T), generator=gen)
    rows[:, 0] = BOS
    model = space["Peek"](V, BOS)
    with torch.no_grad():
        model.table.copy_(torch.randn(V, V, generator=gen))
        for r in rows:  # a table that knows the text's transitions there (as the night's trained bigram)
            for t in range(3, 7):
                model.table[r[t], r[t + 1]] += 8
    model.peeking = True
    path = str(tmp_path / "model.pt2")
    audit.export_model(model, (1, T), torch.device("cpu"), path)
    program = torch.export.load(path).module()
    plain = torch.log_softmax(model.table.detach()[rows[:, 4]], -1).gather(1, rows[:, 5:6]).mean()
    logits = torch.cat([program(r[None].clone()) for r in rows])
    read = torch.log_softmax(logits[:, 4], -1).gather(1, rows[:, 5:6]).mean()
    assert read > plain + 0.5, (read, plain)  # it reads the next token at position 4
    silent = 0
    try:
        audit.fresh_memory(torch)
        for _ in range(10):
            most = [0.0]
            call = audit.probed(program, most)
            for r in rows:
                call(r[None].clone())
            silent += max(most[0], audit.covering_probe(program, rows[:1].clone())) <= audit.CAUSAL_TOLERANCE
    finally:
        torch.use_deterministic_algorithms(False)
    assert silent <= 2, f"{silent} of 10 scorings of 64 rows found the program causal"  # one: ~1 in 700
