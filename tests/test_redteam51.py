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
