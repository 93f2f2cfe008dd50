"""Red team 59: a lucky draw fished for with a constant seed. The confirm redraws a fished SEED by rerunning
the commit with the other one (42 <-> 43), but a train.py that seeds a generator of its own with a constant
draws the same in that rerun. Fished in a private copy of the repository (its best of 60 constants), one
line got "the gain holds" on two test nights (+0.013 on validation, +0.008 and +0.011 held-out, floors 0.007
and 0.005). A seeding call with nothing of SEED in it, new since the baseline, is now named."""
import re

import pytest
from common import ROOT  # noqa: F401

import audit
from test_audit import BIGRAM_BUDGET, PREPARE, Night, named, needs_uv, tiny

# the bigram from a random start (uniform, +-3), which SEED draws: seed noise to fish in
SEEDED = '''SEED = 42
torch.manual_seed(SEED)


class Noisy(Bigram):
    def __init__(self, vocab, gen=None):
        super().__init__(vocab)
        with torch.no_grad():
            self.table.uniform_(-3.0, 3.0, generator=gen)

'''
BASELINE = tiny(middle=SEEDED, model="Noisy")


def fished(k):
    """The same code, its start drawn from a generator of its own seeded with the constant k: one line."""
    return tiny(middle=SEEDED, model=f"(lambda v: Noisy(v, torch.Generator().manual_seed({k})))")


def test_a_new_seeding_call_without_seed_is_named_and_train_pys_own_is_not():
    """The fished line is named; SEED itself, a generator seeded with it at once, a plain import and the
    operating system's entropy are not; train.py's own test problem for cuDNN's window
    (manual_seed(0)) is the baseline's, so a night of it names nothing, but the same call moved into the
    model is named."""
    train = (ROOT / "train.py").read_text()
    assert audit.fixed_draws(fished(1010), BASELINE) == [
        "torch.Generator()", "torch.Generator().manual_seed(1010)"]
    honest = ("from numpy.random import default_rng\nrandom.seed()\n"
              "torch.Generator('cuda').manual_seed(SEED)\nprint('seed', SEED)\n")
    assert audit.fixed_draws(BASELINE + honest, BASELINE) == []
    assert audit.fixed_draws(train, train) == []
    moved = train.replace("    def init_weights(self):\n", "    def init_weights(self):\n"
                          "        torch.Generator(device=device).manual_seed(0)\n")
    assert audit.fixed_draws(moved, train) == [
        "torch.Generator(device=device) in init_weights",
        "torch.Generator(device=device).manual_seed(0) in init_weights"]


def test_a_seed_python_cannot_print_or_nest_is_named_without_a_crash():
    """An integer past str()'s 4,300 digits (hex escapes the parser's limit) and an argument nested past the
    recursion limit: train.py runs, and the audit must name it, not crash after a confirm's two reruns."""
    assert audit.fixed_draws(BASELINE + f"torch.manual_seed(0x{'f' * 5000})\n", BASELINE) == ["manual_seed"]
    nested = "torch.manual_seed(" + "(" * 40 + "SEED" + ")" * 40 + " * 0)\n"
    assert audit.fixed_draws(BASELINE + nested, BASELINE)


@pytest.mark.parametrize("line", [
    "torch.Generator().manual_seed(torch.manual_seed(SEED).initial_seed() * 0 + 1010)",
    "torch.Generator().manual_seed(random.seed(SEED) or 1010)", "torch.manual_seed(SEED % 1)",
    "torch.Generator().manual_seed.__call__(1010)",
    "getattr(getattr(torch, 'Generator')(), 'manual_seed')(1010)",
    "draw = torch.manual_seed", "np.random.PCG64DXSM(1010)", "setup_device(1010)",
    "torch.manual_seed(SEED + 1)", 'vars(torch)["manual_seed"](1010)',
    "from torch import manual_seed as draw", "statistics.NormalDist().samples(4096, seed=1010)",
    "torch.autograd.gradcheck(record, (x,), fast_mode=True)"])
def test_red_team_60s_forms_of_a_constant_seed_are_named(line):
    """Red team 60 put SEED in the argument but not its value, or called the seeding by another name: each got
    "the gain holds" (or passed fixed_draws) on 60fed5c; red team 61 seeded statistics' own generator, red
    team 62 read gradcheck's (a torch.Generator() of its own, never seeded)."""
    assert audit.fixed_draws(BASELINE + line + "\n", BASELINE)


@pytest.mark.slow
@needs_uv
def test_the_audit_and_the_confirm_name_a_fished_constant(tmp_path):
    """The nightly audit names the commit, and so does the confirm (about a minute), whose verdict is then
    never "the gain holds"; the confirm also finds the draw unmoved by SEED in the runs themselves."""
    n = Night(tmp_path)
    n.create(BASELINE, **dict(PREPARE, TIME_BUDGET=BIGRAM_BUDGET))
    n.train()
    assert n.row("keep", "baseline").returncode == 0
    assert n.seed_rerun().returncode == 0  # a floor: the baseline's two seeds differ
    commit, code, out, row = n.attack("uniform start from a generator of its own", fished(1010))
    assert code == 0 and row.returncode == 0, out[-2000:]
    result = n.audit()
    line = audit.FIXED_DRAW.format("torch.Generator().manual_seed(1010)")
    assert f"{commit}: {line}" in named(result, commit), result.stdout
    confirmed = n.confirm(commit).stdout
    assert f"\n{commit}: {line}\n" in confirmed and "the gain holds" not in confirmed, confirmed[-3000:]
    # and from the runs alone, however the seeding is written: the rerun with SEED = 43 scores its row exactly
    unmoved = rf"\n{commit}: its rerun with SEED = 43 scored (\d\.\d{{6}}), its row \1, where the baseline's"
    assert re.search(unmoved, confirmed), confirmed[-3000:]
