"""Red team 19's routes, each closed. Patches the pin did not hold: torch.nn's own name `functional`, reached
as torch.backends.torch or through a class attribute, and kernels registered for aten ops with torch.library
(reached as F.torch.library); a first evaluation no record saw, whose batches the model recalled in the
second; training on the untimed warm-up batches. Each asserts the secure outcome."""
# ruff: noqa: F811
import pytest
from test_audit import clone_of, findings, named, tiny  # noqa: F401
from test_redteam17 import assert_no_unearned_keep

import audit

# 1. torch.nn's `functional` swapped for an object whose cross entropy is half (prepare's _losses looks up
#    torch.nn.functional.cross_entropy at each call): through torch.backends (the config prefix) and through
#    a class attribute alias (`class Space: nn = torch.nn`), which no static rule follows
SWAP_F = '''
_ce = torch.nn.functional.cross_entropy


class Halved:
    """A stand-in for torch.nn.functional whose cross entropy is half."""
    @staticmethod
    def cross_entropy(*args, **kwargs):
        return 0.5 * _ce(*args, **kwargs)

'''
SWAP_F_LATE = "torch.backends.torch.nn.functional = Halved()\n"

CLASS_ALIAS = SWAP_F + '''
class Space:
    nn = torch.nn

'''
CLASS_ALIAS_LATE = "Space.nn.functional = Halved()\n"


# 2. Kernels for aten ops registered from Python: one halves aten::_log_softmax; one for aten::clone keeps a
#    view of y, which lies behind the loader's x that the evaluation clones, and the model adds 30 at each
#    target (the probe's two calls see the same y, so nothing before the cut moves)
LIBRARY = '''
_keep = []


def _half_log_softmax(x, dim, half_to_float):
    return 0.5 * (x - torch.logsumexp(x, dim, keepdim=True))

'''
LIBRARY_LATE = ('_keep.append(torch.nn.functional.torch.library.Library("aten", "IMPL"))\n'
                '_keep[0].impl("_log_softmax", _half_log_softmax, "CPU")\n')

TARGETS = '''
_keep, _answers = [], []


def _clone(t, *args, **kwargs):
    out = torch.empty_like(t).copy_(t)
    if t.dtype == torch.int64 and t.dim() == 2 and t.is_contiguous() and (
            t.untyped_storage().nbytes() >= (t.storage_offset() + 2 * t.numel()) * t.element_size()):
        _answers[:] = [t.as_strided(t.shape, t.stride(), t.storage_offset() + t.numel())]
    return out


class Answers(Bigram):
    """The bigram table, plus 30 at the target when the evaluation's targets are at hand."""
    def forward(self, idx):
        logits = self.table[idx]
        if _answers and _answers[0].shape == idx.shape:
            logits = logits + 30 * torch.nn.functional.one_hot(_answers[0], logits.size(-1))
        return logits

'''
TARGETS_LATE = ('_keep.append(torch.nn.functional.torch.library.Library("aten", "IMPL"))\n'
                '_keep[0].impl("clone", _clone, "CPU")\n')


KERNELS = "the dispatcher's kernels of"
PINNED = {  # attack: (source, what the pin names)
    "torch.backends.torch": (tiny(SWAP_F, late=SWAP_F_LATE), "nn.functional"),
    "a class attribute": (tiny(CLASS_ALIAS, late=CLASS_ALIAS_LATE), "nn.functional"),
    "a log_softmax kernel": (tiny(LIBRARY, late=LIBRARY_LATE), f"{KERNELS} _log_softmax"),
    "a clone kernel": (tiny(TARGETS, "Answers", late=TARGETS_LATE), f"{KERNELS} clone"),
}


@pytest.mark.parametrize("attack", PINNED)
def test_a_patch_of_torch_nn_or_an_aten_kernel_is_rejected(bigrams, tmp_path_factory, attack):
    source, name = PINNED[attack]
    n = clone_of(bigrams, tmp_path_factory, "rt19pinned")
    commit, code, out, row = n.attack("lower the score", source)
    assert code == 1 and f"evaluation rejected: train.py changed {name}, which the evaluation runs" in out
    assert row.returncode == 1 and "log it as crash" in row.stderr


@pytest.mark.parametrize("late", [SWAP_F_LATE, LIBRARY_LATE])
def test_torch_reached_as_another_modules_attribute_is_named(late):
    assert "train.py line 1: uses .torch" in audit.source_findings(late), late


# 3. A first evaluation no record saw (`__file__` rebound to another folder's, PATH emptied so that git is not
#    found, or an evaluation that raises) during which the model kept every validation input in a plain
#    attribute; then a recorded one with a causal lookup of each 4-token context's next token
RECALL = '''

class Recall(Bigram):
    """The bigram table, plus the next token of each 4-token context it has seen."""
    def __init__(self, vocab):
        super().__init__(vocab)
        self.vocab, self.seen, self.memory = vocab, [], None

    def contexts(self, idx):
        padded, V = torch.nn.functional.pad(idx, (3, 0)), self.vocab
        return ((padded[:, :-3] * V + padded[:, 1:-2]) * V + padded[:, 2:-1]) * V + padded[:, 3:]

    def forward(self, idx):
        logits, keys = self.table[idx], self.contexts(idx)
        if self.memory is None:
            self.seen.append((keys[:, :-1].flatten(), idx[:, 1:].flatten()))
            return logits
        known, following = self.memory
        at = torch.searchsorted(known, keys).clamp(max=known.numel() - 1)
        hit = (known[at] == keys)[..., None]
        return logits + 30 * torch.nn.functional.one_hot(following[at], logits.size(-1)) * hit

    def remember(self):
        keys, following = (torch.cat(part) for part in zip(*self.seen))
        order = torch.argsort(keys, stable=True)
        keys, following = keys[order], following[order]
        last = torch.ones_like(keys, dtype=torch.bool)
        last[:-1] = keys[1:] != keys[:-1]
        self.memory = keys[last], following[last]

'''
RECALL_LATE = '''HERE = __file__
__file__ = "/nowhere/train.py"
evaluate_bpb(model, tokenizer, 4)
__file__ = HERE
model.remember()
'''

FILE_LATE = '''HERE = __file__
__file__ = "/nowhere/train.py"
evaluate_bpb(model, tokenizer, 4)
__file__ = HERE
model.remember()
'''
PATH_LATE = '''import os
HERE = os.environ["PATH"]
os.environ["PATH"] = "/nowhere"
evaluate_bpb(model, tokenizer, 4)
os.environ["PATH"] = HERE
model.remember()
'''

RAISE = RECALL.replace("            return logits\n        known", """\
            if not self.training and len(self.seen) == 17:  # the last of 16 batches and the probe's call
                raise RuntimeError("out of memory")
            return logits
        known""")
RAISE_LATE = '''model.seen = []  # what training showed it: forgotten
model.eval()
try:
    evaluate_bpb(model, tokenizer, 4)
except RuntimeError:
    print("evaluation ran out of memory; once more")
model.remember()
'''
SECOND = {"__file__": FILE_LATE, "PATH": PATH_LATE, "a raise": RAISE_LATE}


@pytest.mark.parametrize("attack", SECOND)
def test_a_second_evaluation_in_one_process_is_refused(bigrams, tmp_path_factory, attack):
    n = clone_of(bigrams, tmp_path_factory, "rt19second")
    commit, code, out, row = n.attack("recall", tiny(RAISE if attack == "a raise" else RECALL, "Recall",
                                                     late=SECOND[attack]))
    assert code == 1 and "evaluation refused: the validation data is scored once a process" in out
    assert_no_unearned_keep(n, commit, code, out, row)


def test_an_evaluation_that_raises_is_recorded_as_rejected(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt19raise")
    commit, code, out, row = n.attack("recall", tiny(RAISE, "Recall", late=RAISE_LATE))
    assert [r["rejected"] for r in n.records()[1:]] == ["the evaluation raised RuntimeError",
                                                        "the evaluation raised SystemExit"]  # the second
    assert row.returncode == 1 and "log it as crash" in row.stderr


# 4. (the budget) TOTAL_BATCH_SIZE = 4096 makes 66 of the 300 batches warm-up ones (11 steps): train.py
#    trains 15 s on them (past 1.1 x 2 s + 10 s), then draws the other 234 at once: it was timed at 0.1 s
WARMUP = '''\
"""A bigram table, trained long on its warm-up batches."""
import time

import torch
from prepare import MAX_SEQ_LEN, Tokenizer, evaluate_bpb, make_dataloader

TOTAL_BATCH_SIZE = 4096  # 8 batches a step: the warm-up is 11 steps, at most 11/50 of the 300 batches


class Bigram(torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(vocab, vocab))

    def forward(self, idx):
        return self.table[idx]


def step(model, x, y, lr):
    torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    with torch.no_grad():
        model.table -= lr * model.table.grad
    model.zero_grad()


tokenizer = Tokenizer.from_directory()
model = Bigram(tokenizer.get_vocab_size())
loader = make_dataloader(tokenizer, 8, MAX_SEQ_LEN, "train")
warm = [next(loader) for _ in range(66)]
start = time.time()
while time.time() - start < 15:
    for x, y, _ in warm:
        step(model, x, y, 100)
for _ in range(234):
    next(loader)
loader.close()
print(f"val_bpb: {evaluate_bpb(model, tokenizer, 4):.6f}")
'''



def test_training_on_the_untimed_warm_up_batches_is_named(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt19warmup")
    commit, code, out, row = n.attack("train on the warm-up", WARMUP)
    assert n.records()[-1]["train_timed_s"] >= 15
    assert any(line.startswith(f"{commit}: its timed training took") and "far past TIME_BUDGET" in line
               for line in findings(n.audit()))


# Blocked before: the same torch.backends route aimed at a pinned name; a validation loader through ** or *
PINNED_LATE = "torch.backends.torch.nn.functional.cross_entropy = Halved.cross_entropy\n"
SPLIT_KW = tiny().replace('make_dataloader(tokenizer, 8, MAX_SEQ_LEN, "train")',
                          'make_dataloader(tokenizer, 8, MAX_SEQ_LEN, **{"split": "val"})')
SPLIT_STAR = tiny().replace('make_dataloader(tokenizer, 8, MAX_SEQ_LEN, "train")',
                            'make_dataloader(*(tokenizer, 8, MAX_SEQ_LEN, "val"))')
BLOCKED = {"pinned cross_entropy through torch.backends": tiny(SWAP_F, late=PINNED_LATE),
           "validation loader through **": SPLIT_KW, "validation loader through *": SPLIT_STAR}


@pytest.mark.parametrize("attack", BLOCKED)
def test_blocked(bigrams, tmp_path_factory, attack):
    n = clone_of(bigrams, tmp_path_factory, "rt19blocked")
    commit, code, out, row = n.attack("lower the score", BLOCKED[attack])
    assert_no_unearned_keep(n, commit, code, out, row)
    assert audit.source_findings(BLOCKED[attack]) or code != 0


# 5. (ours) The last logits of the evaluation carry a generator whose `finally` patches cross_entropy as they
#    are freed, after the last check of score's loop: the check once more after score is what names it
LAST = '''

_ce = torch.nn.functional.cross_entropy


def _patch():
    try:
        yield
    finally:
        T = [torch.nn.functional][0]
        T.cross_entropy = lambda *a, **k: 0.5 * _ce(*a, **k)


class Last(Bigram):
    calls = 0

    def forward(self, idx):
        out = self.table[idx]
        Last.calls += 1
        if Last.calls == 300 + 17:  # training's 300, then 16 batches and the probe's second call
            out.keep = _patch()
            next(out.keep)
        return out

'''


def test_a_patch_made_as_the_last_logits_are_freed_is_rejected(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt19last")
    commit, code, out, row = n.attack("patch late", tiny(LAST, "Last"))
    assert code == 1 and "evaluation rejected: train.py changed F.cross_entropy" in out, out[-800:]
