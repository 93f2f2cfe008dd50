"""Red team 51: a stateless program that reads the next token where the clean scorer's probes never look.

covering_probe cut row r only at positions r, r + B, r + 2B, ... (and T - 2): its cuts covered every position
across the rows, not every position of a row. A program sees the whole batch, so it knows each row's index and
read ahead at every other position; the per-call probe (one random cut a row) finds a read at t only when the
row's cut is t (1 in T - 1). Measured on main e42c5fe (2-core CPU, nice'd; red team 49's night with 2,000
documents a shard, baseline 3.299741): +20 on the next token's logit at about 10 gated positions a split gave
"gain +0.008407 on validation, +0.009490 held-out, noise floor 0.001000: the gain holds (weaker)" in 1 confirm
of 3 (the others: "unconfirmed", "not causal"); the model is the baseline's table exactly.

Fixed in part: covering_probe cuts each row from an offset drawn at random (a permutation of the rows: all
offsets still taken), so no row can know where it is checked. Open: the per-call probe's odds on a small
evaluation (a read position escapes it with odds (T - 2) / (T - 1)); at the default sizes a gain of a noise
floor needs tens of thousands of read positions, which it would see, but a night of tiny runs does not.
"""
import pytest
import torch
from common import ROOT  # noqa: F401  the repository on the import path

import audit
import prepare  # noqa: F401  covering_probe reads prepare._moved through sys.modules


def test_the_covering_probe_sees_a_program_that_reads_ahead_off_its_rows_cuts():
    """Reading the next token at every position but a row's old cut positions (7 in 8 at B = 8): the old
    probe read 0 on it; a random offset is a row's own index only when the permutation is the identity
    (1 in 8!), so three probes all miss it with odds 1 in 40,320 ** 3."""
    table = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))

    def ahead(idx):
        B, T = idx.shape
        t, b = torch.arange(T)[None], torch.arange(B)[:, None]
        gate = (t <= T - 3) & ((t - b) % B != 0)
        return table[idx] + 20.0 * gate[..., None] * torch.nn.functional.one_hot(idx.roll(-1, 1), 64)

    x = torch.randint(0, 64, (8, 64), generator=torch.Generator().manual_seed(1))
    assert (ahead(x).argmax(-1)[:, :-1] == x[:, 1:]).float().mean() > 0.8  # it does read ahead
    assert max(audit.covering_probe(ahead, x) for _ in range(3)) > audit.CAUSAL_TOLERANCE


def test_a_small_evaluation_is_probed_at_every_position_of_every_row():
    """Red team 51's route: a program with no state reading the next token where a hash of the last three
    tokens says (about 1 position in 251, T - 3 at most). Cut at every position of every row (a reading of
    4,096 tokens gets T - 1 cuts a row: PROBE_TOKENS), each read is seen unless the probe's random token
    happens to be the one read (1 in 512 a read)."""
    table = torch.randn(512, 512, generator=torch.Generator().manual_seed(0))

    def gated(idx):
        T = idx.shape[1]
        t = torch.arange(T)[None]
        gate = ((idx * 7 + idx.roll(1, 1) * 31 + idx.roll(2, 1) * 131) % 251 == 0) & (t >= 2) & (t <= T - 3)
        return table[idx] + 20.0 * gate[..., None] * torch.nn.functional.one_hot(idx.roll(-1, 1), 512)

    gen, reads, most = torch.Generator().manual_seed(2), 0, [0.0]
    cuts = min(63, audit.PROBE_TOKENS // (16 * 4 * 64))
    call = audit.probed(gated, most, cuts)
    for _ in range(16):
        x = torch.randint(1, 512, (4, 64), generator=gen)
        reads += int((gated(x).amax(-1) > 10).sum())
        call(x)
    assert cuts == 63 and reads >= 5 and most[0] == 20.0, (cuts, reads, most)


def test_a_gain_too_small_for_the_probes_odds_is_unconfirmed():
    """The fewest read positions that make up a margin, each saving the baseline's loss there at most (its
    histogram, largest first), and the odds the probes see none. 4,000 tokens of 16,000 bytes whose losses
    lie near 3 nats, and 10 at 39.9: 0.001 bits a byte (11.09 nats) needs one read at 40 nats; 0.05 (554.5
    nats) needs the 10 at 40 and 52 at 3."""
    hist = [0] * audit.LOSS_BINS
    hist[29], hist[-1] = 4000, 10  # 2.9 to 3.0 nats; 39.9 to 40
    base = dict(split=dict(same=dict(hist=hist, bytes=16000), heldout=dict(hist=hist, bytes=16000)))
    mine = dict(split=dict(same=dict(checked=1 / 63), heldout=dict(checked=1 / 63)))
    assert audit.unseen(base, mine, dict(same=0.001, heldout=0.001)) == pytest.approx((62 / 63) ** 2)
    assert audit.unseen(base, mine, dict(same=0.05, heldout=0.0)) == pytest.approx((62 / 63) ** 62)
    every = dict(split=dict(same=dict(checked=1.0), heldout=dict(checked=1.0)))  # every position cut
    assert audit.unseen(base, every, dict(same=0.001, heldout=0.001)) == 0.0
