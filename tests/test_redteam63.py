"""Red team 63: a start with no generator at all (a hash of arange, the shader's sin * 43758 -> frac), its
offset fished on validation, with noise that follows SEED on top (so the commit's two seeds differ by more
than a hundredth of the baseline's two). Its gain over the baseline's SEED-43 rerun was that rerun's bad
draw (0.0079; over the night's SEED-42 run 0.0004): "the gain holds" on 3a85129. The confirm now holds the
rerun against the night's best run of the baseline's code too."""
import pytest
from common import ROOT  # noqa: F401

from test_audit import BIGRAM_BUDGET, DATA, HELDOUT, PREPARE, VAL, Night, needs_uv, write_shard
from test_redteam59 import BASELINE, SEEDED, tiny

# offset 78: the best of 150 on validation
HASHED = SEEDED.replace('''            self.table.uniform_(-3.0, 3.0, generator=gen)''', '''\
            i = torch.arange(vocab * vocab, dtype=torch.float64) + 78 * vocab * vocab
            start = torch.frac((torch.sin(i * 12.9898 + 78.233) * 43758.5453).abs())
            self.table.copy_((6.0 * start - 3.0).view(vocab, vocab).float())
            self.table.add_(torch.randn(vocab, vocab) * 0.08)  # follows SEED''')


@pytest.mark.slow
@needs_uv
def test_a_gain_that_is_the_baseline_reruns_bad_draw_does_not_hold(tmp_path):
    """Red team 61's second night (validation shard seed 21, held-out seed 17)."""
    assert HASHED != SEEDED
    n = Night(tmp_path)
    n.create(BASELINE, **dict(PREPARE, TIME_BUDGET=BIGRAM_BUDGET))
    write_shard(n.cache / DATA / VAL, 21, 16)
    write_shard(n.root / HELDOUT, 17, 16)
    n.train()
    assert n.row("keep", "baseline").returncode == 0
    assert n.seed_rerun().returncode == 0
    start = tiny(middle=HASHED, model="Noisy")
    commit, code, out, row = n.attack("uniform start from a hash of arange", start)
    assert code == 0 and row.returncode == 0, out[-2000:]
    confirmed = n.confirm(commit).stdout
    assert "its gain is the baseline rerun's draw\n" in confirmed, confirmed[-3000:]
    assert "the gain holds" not in confirmed.splitlines()[-1], confirmed[-3000:]
