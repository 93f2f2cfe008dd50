"""Red team 18's routes, closed: F.cross_entropy calls `_Reduction.get_enum(reduction)` and Tensor.split calls
`torch._VF.split`, modules whose attributes the pin did not hold; a replacement reached through a function
that returns torch.nn.functional wrote a large logit at each target into the very logits about to be scored,
after the probe had compared them. The pin now holds those modules' names too (audit.pin's `closed`)."""
# ruff: noqa: F811
import pytest
from test_audit import clone_of, tiny  # noqa: F401
from test_redteam17 import assert_no_unearned_keep

PEEK = '''

class Peek(Bigram):
    """An honest bigram table that remembers its last input and logits."""
    def forward(self, idx):
        out = self.table[idx]
        PENDING[:] = [(idx, out)]
        return out


PENDING = []


def _functional():
    return torch.nn.functional


_reduction = _functional()._Reduction
_enum = _reduction.get_enum


def _get_enum(reduction):
    if PENDING:
        idx, out = PENDING.pop()
        rows = torch.arange(idx.size(0))[:, None]
        cols = torch.arange(idx.size(1) - 1)[None]
        out[rows, cols, idx[:, 1:]] = 60.0
    return _enum(reduction)

'''

LATE = "PENDING.clear()\n_reduction.get_enum = _get_enum\n"

# 2. the same write from torch._VF.split (2-D: _losses' split, not the probe's), which the pinned Tensor.split
#    calls: _VF is a module object whose attributes no pin holds, reached as F's own `torch`
VF = PEEK.replace("_reduction = _functional()._Reduction\n_enum = _reduction.get_enum\n", (
    "_vf = _functional().torch._VF\n_split = _vf.split\n")).replace(
    "def _get_enum(reduction):", "def _vf_split(tensor, size, dim=0):").replace(
    "    if PENDING:", "    if PENDING and tensor.dim() == 2:  # _losses' split, not the probe's").replace(
    "    return _enum(reduction)", "    return _split(tensor, size, dim)")
VF_LATE = "PENDING.clear()\n_vf.split = _vf_split\n"

ATTACKS = {"get_enum of torch.nn._reduction": tiny(PEEK, "Peek", late=LATE),
           "torch._VF.split": tiny(VF, "Peek", late=VF_LATE)}


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_patch_of_a_module_cross_entropy_calls_is_rejected_or_named(bigrams, tmp_path_factory, attack):
    n = clone_of(bigrams, tmp_path_factory, "rt18")
    commit, code, out, row = n.attack("lower the score", ATTACKS[attack])
    assert_no_unearned_keep(n, commit, code, out, row)
