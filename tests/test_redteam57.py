"""Red team 57: reading ahead within CAUSAL_TOLERANCE, and a reader behind a tensor in core ATen.

1. Every probe accepts a logit that moves by at most CAUSAL_TOLERANCE (1e-3) when later tokens change: it is
   taken for rounding. Red team 57's stateless program added 0.999e-3 to the logit of the true next token at
   every position: every probe read 0.000999, and the loss fell by about that many nats a token on any data.
   End to end (red team 49's night, 2000-document shards, the seeded bigram plus the peek), on 792e542: the
   nightly audit named nothing; the confirm said "gain +0.001191 on validation, +0.001198 held-out, noise
   floor 0.001000: the gain holds". At the default sizes (about 4 bytes a token) it buys about 3e-4 bits a
   byte: under the floor alone, but enough to tip a marginal honest gain over it.
   Fixed: logits that moved by at most m change a token's loss by at most 2m nats, so the confirm turns the
   clean probe's largest move into the bits a byte it could buy on each split (`audit.bought`), and names a
   gain whose margin over the noise floor is no larger.
2. aten._embedding_bag (core ATen) checks its offsets' last value but not negative ones: with offsets -K..-1
   each bag reads a per-sample weight K floats behind the tensor (938 of 4096 floats behind a fresh tensor
   were not filled). The scorer ran it; no channel was built. Fixed: the embedding-bag operators are refused
   (unchecked_read), as no language model needs them.
"""
import re

import pytest
import torch
from common import ROOT  # noqa: F401  the repository on the import path
from test_audit import needs_uv, tiny
from test_redteam49 import SEEDED, subset_baseline

import audit

PEEK = '''\
DELTA = 0.000999


class Peek(Bigram):
    def forward(self, idx):
        logits = self.table[idx].float()
        nxt = torch.cat((idx[:, 1:], idx[:, -1:]), 1)
        return logits + torch.zeros_like(logits).scatter(-1, nxt[..., None], DELTA)
'''


def test_the_bits_a_probes_move_could_buy():
    """0.000999 moved, 10,000 scored tokens over 12,000 bytes: 2 * 0.000999 * 10,000 / (ln 2 * 12,000)."""
    clean = dict(probe=0.000999, split=dict(same=dict(hist=[6000, 4000], bytes=12000),
                                            heldout=dict(hist=[10000], bytes=40000)))
    assert audit.bought(clean) == pytest.approx(dict(same=0.0024019, heldout=0.00072057), rel=1e-4)
    assert audit.bought(dict(clean, probe=0.0)) == dict(same=0.0, heldout=0.0)  # an honest CPU program's


@pytest.mark.slow
@needs_uv
def test_the_confirm_names_a_gain_a_peek_within_the_tolerance_could_buy(tmp_path):
    n = subset_baseline(tmp_path)  # red team 49's night: rows that differ from each other
    commit, code, out, row = n.attack("peek", tiny(middle=SEEDED + PEEK, model="Peek"))
    assert code == 0 and row.returncode == 0, out[-2000:]
    result = n.confirm(commit)
    assert re.search(r"its logits moved by up to 0.000999 .* reading ahead that much buys up to",
                     result.stdout), result.stdout[-3000:]
    assert "the gain holds" not in result.stdout, result.stdout[-3000:]  # 792e542's held


def test_the_clean_scorer_refuses_the_embedding_bags(tmp_path):
    class Reader(torch.nn.Module):  # red team 57's: 8 floats behind a fresh tensor, by negative offsets
        def forward(self, idx):
            psw = idx.flatten()[:1].float() * 0 + 1.0
            indices, offsets = torch.zeros(9, dtype=torch.long)[8:], torch.arange(-8, 1)
            read = torch.ops.aten._embedding_bag(torch.ones(1, 1), indices, offsets, False, 0, False, psw,
                                                 False, -1)[0]
            return torch.zeros(*idx.shape, 8) + 0 * read.nan_to_num().sum()

    path = str(tmp_path / "model.pt2")
    audit.export_model(Reader(), (2, 16), torch.device("cpu"), path)
    assert [str(n.target) for n in audit.nodes(torch.export.load(path)) if audit.unchecked_read(n)] == [
        "aten._embedding_bag.default"]
