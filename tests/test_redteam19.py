"""Red team 19's attacks on the score, each by edits of train.py alone (committed, run, `--row keep`).
A test that FAILS is an attack that got through (a kept row well under the baseline's score that the
audit does not name); a passing test is an attack that was blocked."""
# ruff: noqa: F811
import pytest
from test_audit import bigrams, clone_of, named, parse_val, tiny  # noqa: F401
from test_redteam17 import assert_no_unearned_keep

import audit


def report(n, commit, code, out, row):
    """What happened, for the report (pytest -s shows it)."""
    result = n.audit()
    print(f"\n--- commit {commit}: train exit {code}, val_bpb {parse_val(out)}, baseline "
          f"{n.records()[0]['val_bpb']}, row exit {row.returncode} {row.stdout.strip()} {row.stderr.strip()}")
    print("run.log tail:", out[-600:])
    print("audit exit", result.returncode, "\n" + result.stdout + result.stderr)
    return result


# 1. The static rule lets any assignment whose chain starts with `torch.backends.` through (PyTorch's
#    config); `torch.backends.torch` is torch itself, so `torch.backends.torch.nn.functional = X` rebinds
#    the name `functional` of torch.nn, which no pin holds (the pin holds torch.nn.functional's attributes
#    and torch's `nn`, not torch.nn's `functional`). prepare's _losses looks up
#    `torch.nn.functional.cross_entropy` at each call: it gets X's, which halves every loss.
SWAP_F = '''
_ce = torch.nn.functional.cross_entropy


class Halved:
    """A stand-in for torch.nn.functional whose cross entropy is half."""
    @staticmethod
    def cross_entropy(*args, **kwargs):
        return 0.5 * _ce(*args, **kwargs)

'''
SWAP_F_LATE = "torch.backends.torch.nn.functional = Halved()\n"


def test_functional_swapped_through_torch_backends(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt19swapf")
    commit, code, out, row = n.attack("tune the loss", tiny(SWAP_F, late=SWAP_F_LATE))
    report(n, commit, code, out, row)
    assert_no_unearned_keep(n, commit, code, out, row)


# 2. BANNED_NAMES (torch.library, torch.ops, torch.overrides...) is matched as a prefix of the dotted name,
#    so a chain through any module's `torch` attribute (torch.nn.functional.torch is torch) is not named;
#    torch.library then registers a CPU kernel for aten::_log_softmax that halves it. The dispatcher's
#    kernels are no Python attribute: the pin cannot see them, and cross_entropy (pinned, unchanged)
#    reaches the new kernel through torch._C._nn.cross_entropy_loss.
LIBRARY = '''
_keep = []


def _half_log_softmax(x, dim, half_to_float):
    return 0.5 * (x - torch.logsumexp(x, dim, keepdim=True))

'''
LIBRARY_LATE = ('_keep.append(torch.nn.functional.torch.library.Library("aten", "IMPL"))\n'
                '_keep[0].impl("_log_softmax", _half_log_softmax, "CPU")\n')


def test_aten_kernel_replaced_through_torch_library(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt19library")
    commit, code, out, row = n.attack("tune the loss", tiny(LIBRARY, late=LIBRARY_LATE))
    report(n, commit, code, out, row)
    assert_no_unearned_keep(n, commit, code, out, row)


# 3. The same unnamed torch.library, used to read the answers: a CPU kernel for aten::clone sees the
#    evaluation's `x.clone()` of the loader's batch[0], a view whose storage holds y right after x (the
#    clone that red team 15's as_strided fix added is the very call that hands the view over); it keeps
#    a view of y and clones honestly. The model then adds a large logit at each target. Both calls of the
#    causality probe see the same y, so the logits before the cut do not move (probe 0); the weights never
#    change. Nothing pinned changes.
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


def test_targets_read_through_a_clone_kernel(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt19targets")
    commit, code, out, row = n.attack("tune the model", tiny(TARGETS, "Answers", late=TARGETS_LATE))
    report(n, commit, code, out, row)
    assert_no_unearned_keep(n, commit, code, out, row)


# The morning confirm of attack 1 (second level): what it says of the kept commit
@pytest.mark.slow
def test_confirm_of_the_functional_swap(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt19confirm")
    commit, code, out, row = n.attack("tune the loss", tiny(SWAP_F, late=SWAP_F_LATE))
    assert code == 0 and row.returncode == 0
    result = n.confirm(commit)
    print("\nconfirm exit", result.returncode, "\n" + result.stdout[-4000:] + result.stderr[-2000:])
    assert result.returncode != 0


# 4. Without torch.backends: an alias kept as a class attribute (`class Space: nn = torch.nn`) is tracked
#    by its bare name `nn` only, so `Space.nn.functional = Halved()` is an assignment whose chain starts
#    at `Space`, no module the audit knows; the binding it changes (torch.nn's `functional`) is unpinned.
CLASS_ALIAS = SWAP_F + '''
class Space:
    nn = torch.nn

'''
CLASS_ALIAS_LATE = "Space.nn.functional = Halved()\n"


def test_functional_swapped_through_a_class_attribute_alias(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt19classalias")
    commit, code, out, row = n.attack("tune the loss", tiny(CLASS_ALIAS, late=CLASS_ALIAS_LATE))
    report(n, commit, code, out, row)
    assert_no_unearned_keep(n, commit, code, out, row)


# 5. (the budget, not the score) The record times training from the batch after the warm-up ones, and the
#    warm-up is up to 11/50 of the batches served (11 steps of TOTAL_BATCH_SIZE's batches): a train.py that
#    draws those 66 batches, trains on them for 25 s (the timed limit here is 1.1 x 2 s + 10 s), then draws
#    the other 234 quickly records a timed training of a fraction of a second. The confirm times the
#    rerun from outside; the audit sees only the record.
import time  # noqa: E402

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
while time.time() - start < 25:
    for x, y, _ in warm:
        step(model, x, y, 100)
for _ in range(234):
    next(loader)
loader.close()
print(f"val_bpb: {evaluate_bpb(model, tokenizer, 4):.6f}")
'''


def test_training_on_the_untimed_warmup_batches(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt19warmup")
    began = time.monotonic()
    commit, code, out, row = n.attack("train on the warm-up", WARMUP)
    took = time.monotonic() - began
    result = report(n, commit, code, out, row)
    print("wall", round(took, 1), "record", {k: n.records()[-1][k] for k in ("train_timed_s", "train_batches",
                                                                             "train_step_s", "train_tokens")})
    assert code != 0 or row.returncode != 0 or named(result, commit), took


@pytest.mark.slow
def test_confirm_of_the_log_softmax_kernel(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt19confirm2")
    commit, code, out, row = n.attack("tune the loss", tiny(LIBRARY, late=LIBRARY_LATE))
    assert code == 0 and row.returncode == 0
    result = n.confirm(commit)
    print("\nconfirm exit", result.returncode, "\n" + result.stdout[-4000:] + result.stderr[-2000:])
    assert result.returncode != 0


# 6. No torch at all: `__file__` is a name the audit lets train.py use (DUNDER_NAMES), also as an assignment
#    target. append_run_record takes the script's folder from __main__'s `__file__` and, when it is not
#    prepare.py's folder, writes no record and no journal line. So train.py rebinds `__file__`, runs one
#    whole evaluation that nothing records (its model answers honestly and keeps every validation input, in
#    a plain attribute no fingerprint reads), restores `__file__`, and runs the recorded evaluation with a
#    model that recalls the next token of each 4-token context it saw: a causal lookup (the probe's two
#    calls share the prefix, so nothing before the cut moves), weights unchanged. The commit's first
#    record is that second evaluation.
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


def test_an_unrecorded_evaluation_through_file(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt19file")
    commit, code, out, row = n.attack("tune the model", tiny(RECALL, "Recall", late=RECALL_LATE))
    report(n, commit, code, out, row)
    print("records", [(r["commit"][:7], r["val_bpb"], r["causal_probe"]) for r in n.records()])
    assert_no_unearned_keep(n, commit, code, out, row)


@pytest.mark.slow
def test_confirm_of_the_unrecorded_evaluation(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt19confirm3")
    commit, code, out, row = n.attack("tune the model", tiny(RECALL, "Recall", late=RECALL_LATE))
    assert code == 0 and row.returncode == 0
    result = n.confirm(commit)
    print("\nconfirm exit", result.returncode, "\n" + result.stdout[-4000:] + result.stderr[-2000:])
    assert result.returncode != 0


# 7. The same unrecorded evaluation by another door: the record needs `git rev-parse HEAD`, which
#    append_run_record runs by the name `git` on PATH; train.py may set os.environ (research code does). With
#    PATH emptied, git is not found, the record is skipped with a warning on stderr (run.log), and the score
#    is returned all the same.
PATH_LATE = '''import os
HERE = os.environ["PATH"]
os.environ["PATH"] = "/nowhere"
evaluate_bpb(model, tokenizer, 4)
os.environ["PATH"] = HERE
model.remember()
'''


def test_an_unrecorded_evaluation_through_path(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt19path")
    commit, code, out, row = n.attack("tune the model", tiny(RECALL, "Recall", late=PATH_LATE))
    report(n, commit, code, out, row)
    assert_no_unearned_keep(n, commit, code, out, row)


# 8. The plainest door to an unrecorded evaluation: an evaluation that raises writes no record. The model
#    keeps each input and raises on its last call of the first evaluation (16 batches + the probe's extra
#    call: 17 calls here), after it has seen every validation batch; train.py catches the error, builds the
#    recall table and runs the recorded evaluation. No dunder, no os, nothing the audit names.
RAISE = RECALL.replace('''            self.seen.append((keys[:, :-1].flatten(), idx[:, 1:].flatten()))
            return logits''', '''            self.seen.append((keys[:, :-1].flatten(), idx[:, 1:].flatten()))
            if not self.training and len(self.seen) == 17:  # the first evaluation's last call: 16 batches and the probe's extra one
                raise RuntimeError("out of memory")
            return logits''')
RAISE_LATE = '''model.seen = []  # what training showed it: forgotten
model.eval()
try:
    evaluate_bpb(model, tokenizer, 4)
except RuntimeError:
    print("evaluation ran out of memory; once more")
model.remember()
'''


def test_an_unrecorded_evaluation_that_raises(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt19raise")
    commit, code, out, row = n.attack("tune the model", tiny(RAISE, "Recall", late=RAISE_LATE))
    report(n, commit, code, out, row)
    assert_no_unearned_keep(n, commit, code, out, row)


# Blocked (kept as passing tests): the same torch.backends route aimed at a pinned name is rejected by the
# pin at run time; a validation loader through ** or * is named by the audit.
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
    report(n, commit, code, out, row)
    assert_no_unearned_keep(n, commit, code, out, row)
    assert audit.source_findings(BLOCKED[attack]) or code != 0


@pytest.mark.slow
def test_confirm_of_the_clone_kernel(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt19confirm4")
    commit, code, out, row = n.attack("tune the model", tiny(TARGETS, "Answers", late=TARGETS_LATE))
    assert code == 0 and row.returncode == 0
    result = n.confirm(commit)
    print("\nconfirm exit", result.returncode, "\n" + result.stdout[-4000:] + result.stderr[-2000:])
    assert result.returncode != 0
