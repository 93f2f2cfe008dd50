"""Red team 21's routes, each closed: methods of the standard library's classes on the data's path,
replaced through an expression alias (`_queue().get = ...`, queue.Queue reached as a name torch imports):
queue.Queue.get kept each batch the loader handed the evaluation, threading.Thread.run tapped the loader's
queue, and queue.Queue's get and put let the loader's thread pack batches for untimed training; and pathlib
reached as kernels.utils.Path. Each asserts the secure outcome."""
# ruff: noqa: F811
import pytest
from test_audit import clone_of, findings, tiny  # noqa: F401

import audit

# 1. queue.Queue.get keeps each batch the loader hands out (inputs and targets); the model adds 8 at the kept
#    target wherever its input's prefix is the kept batch's, so the probe's two calls agree up to the cut
PEEK = '''
import torch.fx.passes.infra.pass_manager

_kept = []


def _queue():
    return torch.fx.passes.infra.pass_manager.Queue


_get = _queue().get


def _keeping_get(self, *args, **kwargs):
    item = _get(self, *args, **kwargs)
    if (isinstance(item, tuple) and len(item) == 2 and torch.is_tensor(item[0]) and item[0].dim() == 3
            and isinstance(item[1], int)):
        _kept[:] = [item[0].clone()]
    return item


class Peek(Bigram):
    """The bigram table, plus 8 at the kept target where the input's prefix is the kept batch's."""
    def forward(self, idx):
        logits = self.table[idx]
        if _kept and _kept[0].shape[1:] == idx.shape:
            xs, ys = _kept[0][0].to(idx.device), _kept[0][1].to(idx.device)
            same = (idx == xs).long().cumprod(1).to(logits.dtype)
            logits = logits + 8 * same[..., None] * torch.nn.functional.one_hot(ys, logits.size(-1))
        return logits

'''
PEEK_LATE = "_queue().get = _keeping_get\n"

# 2. threading.Thread.run runs the loader's packing thread with a tap on its queue
TAP = '''
import torch.distributed.elastic.rendezvous.utils

_tapped = []


def _threads():
    return torch.distributed.elastic.rendezvous.utils.Thread


_run = _threads().run


class Tap:
    """The loader's ready queue, keeping what the packing thread puts in it."""
    def __init__(self, queue):
        self.queue = queue

    def put(self, item, *args, **kwargs):
        if isinstance(item, tuple) and torch.is_tensor(item[0]):
            _tapped[:] = [*_tapped[-7:], item[0].clone()]
        return self.queue.put(item, *args, **kwargs)


def _tapping_run(self):
    args = self._args
    if self._target is not None and len(args) == 8:
        return self._target(*args[:-1], Tap(args[-1]))
    return _run(self)


class Tapped(Bigram):
    """The bigram table, plus 8 at a kept target where the input's first t + 1 tokens are a kept batch's."""
    def forward(self, idx):
        logits = self.table[idx]
        leak = torch.zeros_like(logits)
        for host in list(_tapped):
            if host.shape[1:] == idx.shape:
                xs, ys = host[0].to(idx.device), host[1].to(idx.device)
                same = (idx == xs).long().cumprod(1).to(logits.dtype)
                same[:, :8] = 0
                leak = torch.maximum(leak, same[..., None] * torch.nn.functional.one_hot(ys, logits.size(-1)))
        return logits + 8 * leak

'''
TAP_LATE = "_threads().run = _tapping_run\n"

PINNED = {"queue.Queue.get": tiny(PEEK, "Peek", late=PEEK_LATE),
          "threading.Thread.run": tiny(TAP, "Tapped", late=TAP_LATE)}


@pytest.mark.parametrize("name", PINNED)
def test_a_method_of_a_class_on_the_data_path_is_rejected_and_named(bigrams, tmp_path_factory, name):
    n = clone_of(bigrams, tmp_path_factory, "rt21pinned")
    commit, code, out, row = n.attack("peek", PINNED[name])
    assert code == 1 and f"evaluation rejected: train.py changed {name}, which the evaluation runs" in out
    assert any("assigns an attribute of what a call returns" in line for line in audit.source_findings(
        PINNED[name]))


# 3. queue.Queue's get and put, set and put back before the evaluation: the loader's thread packs batches
#    without waiting, and train.py trains 20 s on them before its first counted batch
HARVEST = '''
import time
import torch.fx.passes.infra.pass_manager

_harvest, _ready, _extra = [False], set(), []


def _queue():
    return torch.fx.passes.infra.pass_manager.Queue


_get, _put = _queue().get, _queue().put


def _harvesting_put(self, item, *args, **kwargs):
    if isinstance(item, tuple) and len(item) == 2 and torch.is_tensor(item[0]) and isinstance(item[1], int):
        _ready.add(id(self))
        if _harvest[0]:
            _extra.append(item[0])
    return _put(self, item, *args, **kwargs)


def _unbounded_get(self, *args, **kwargs):
    if _harvest[0] and id(self) not in _ready and self.empty():
        return None, None  # the free queue: a new host buffer, without waiting for the consumer
    return _get(self, *args, **kwargs)


_queue().put = _harvesting_put
_queue().get = _unbounded_get
'''
UNTIMED = '''_harvest[0] = True
_until = time.monotonic() + 20
_trained = 0
while time.monotonic() < _until:
    if len(_extra) <= _trained:
        time.sleep(0.01)
        continue
    hx, hy = _extra[_trained][0], _extra[_trained][1]
    _trained += 1
    torch.nn.functional.cross_entropy(model(hx).flatten(0, 1), hy.flatten()).backward()
    with torch.no_grad():
        model.table -= 100 * model.table.grad
    model.zero_grad()
_harvest[0] = False
_queue().put, _queue().get = _put, _get
'''


def test_training_on_batches_packed_but_never_served_is_named(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt21untimed")
    source = tiny(HARVEST).replace("for step in range(300):", UNTIMED + "for step in range(300):")
    commit, code, out, row = n.attack("train more", source)
    assert code == 0 and n.records()[-1]["train_packed"] > 1000
    assert any(line.startswith(f"{commit}: its loaders packed") for line in findings(n.audit()))


# 4. pathlib, reached as kernels.utils.Path: of kernels and cudnn only their calls are train.py's
PATH = '''import torch
import kernels
from prepare import evaluate_bpb


def _files():
    return kernels.utils.Path


print(_files()("train.py").read_text()[:10])
_files()("planted.txt").write_text("written without open")
'''


def test_a_module_of_kernels_is_named():
    assert any("uses kernels.utils" in line for line in audit.source_findings(PATH))
