"""Red team 30's routes, each closed: code of train.py run by the cyclic garbage collector, between two
checks. A generator train.py left in a reference cycle was finalized at whatever allocation crossed the
threshold train.py set (`gc.set_threshold`), in score's `_losses` or before the probe's `_moved`, and added a
self-deleting `Tensor.sum` or `amax`. The evaluation now switches the collector off, names it switched on
again after a model call, and collects once itself right before its last checks. Each asserts the secure
outcome: the cheat is rejected or scores as the honest model."""
# ruff: noqa: F811
from test_audit import clone_of, tiny  # noqa: F401
from test_redteam17 import assert_no_unearned_keep

# ---------------------------------------------------------------------------
# 1. The collected generator's `finally` adds `sum` to torch.Tensor (reached as `type(torch.zeros(1))`, as red
#    team 29 did): it deletes itself at its first call and answers 0.2 x the sum. That first call is score's
#    `torch.where(nbytes > 0, _losses(logits, y), 0.0).sum()`: the step's nats scaled; nothing is left for the
#    next check. The model's forward first disarms the generator and removes a patch left unused (the
#    probe's two calls). The `finally` patches only in a thread with grad mode off (score's `no_grad`): the
#    loader's packing thread also allocates and can run the collection, at a moment the pin might see it.

CYCLE = '''import gc

_Tensor = type(torch.zeros(1))
_sum = torch.Tensor.sum
_armed = [False]
_leaf = torch.ones(1, requires_grad=True)


def _cheap(self, *args, **kwargs):
    del _Tensor.sum
    return 0.2 * _sum(self, *args, **kwargs)


def _on_collect():
    try:
        yield
    finally:  # grad mode is per thread: off in score (no_grad), on in the loader's packing thread
        if _armed[0] and not (_leaf * 1).requires_grad:
            _armed[0] = False
            _Tensor.sum = _cheap


class Cycled(Bigram):
    def forward(self, idx):
        _armed[0] = False  # first: a cycle collected from here on patches nothing
        try:
            del _Tensor.sum  # a patch made after the last check but not used yet (the probe's two calls)
        except AttributeError:
            pass
        out = self.table[idx]
        if idx.shape[0] == 4:  # the evaluation's batch (training's is 8)
            gc.collect()  # an earlier cycle goes now, disarmed, inside the model's call
            gc.set_threshold(10, 10**6, 10**6)  # the next collection: ~10 allocations after this one
            later = _on_collect()
            next(later)
            cycle = [later]
            cycle.append(cycle)
            _armed[0] = True
        return out

'''


def test_a_generator_in_a_garbage_cycle_patches_the_sum_between_two_pin_checks(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt30cycle")
    commit, code, out, row = n.attack("bigram", tiny(CYCLE, "Cycled"))
    print(out[-600:])
    assert_no_unearned_keep(n, commit, code, out, row)  # rejected, or scored as the honest bigram


# 2. The same collection blinds the probe, and a model that reads the next input token passes. The
#    generator's `finally` adds `amax` (answering zeros) and `sum` (honest, cleaning up both) to torch.Tensor.
#    On the probe step the collection falls in _causality_probe after its second _call's check, before
#    _moved: _moved's `.amax(-1)` reads zeros, and the probe 0.0. On every step score's `.sum()` then
#    removes both patches before the next check, wherever the probe step falls.
PEEK_CYCLE = '''import gc

_Tensor = type(torch.zeros(1))
_sum = torch.Tensor.sum
_armed = [False]
_leaf = torch.ones(1, requires_grad=True)


def _blind(self, *args, **kwargs):
    del _Tensor.amax
    return torch.zeros(self.shape[:-1], device=self.device)


def _clean(self, *args, **kwargs):
    del _Tensor.sum
    try:
        del _Tensor.amax
    except AttributeError:
        pass
    return _sum(self, *args, **kwargs)


def _on_collect():
    try:
        yield
    finally:  # grad mode is per thread: off in score (no_grad), on in the loader's packing thread
        if _armed[0] and not (_leaf * 1).requires_grad:
            _armed[0] = False
            _Tensor.amax = _blind
            _Tensor.sum = _clean


class PeekCycled(Bigram):
    def forward(self, idx):
        _armed[0] = False  # first: a cycle collected from here on patches nothing
        try:
            del _Tensor.sum
        except AttributeError:
            pass
        try:
            del _Tensor.amax
        except AttributeError:
            pass
        out = self.table[idx]
        if idx.shape[0] == 4:  # the evaluation's batch (training's is 8)
            out = out.clone()
            out[:, :-1] += 8 * torch.nn.functional.one_hot(idx[:, 1:], out.size(-1))
            gc.collect()  # an earlier cycle goes now, disarmed, inside the model's call
            gc.set_threshold(10, 10**6, 10**6)  # the next collection: ~10 allocations after this one
            later = _on_collect()
            next(later)
            cycle = [later]
            cycle.append(cycle)
            _armed[0] = True
        return out

'''


def test_a_generator_in_a_garbage_cycle_blinds_the_probe_for_a_model_reading_ahead(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt30peek")
    commit, code, out, row = n.attack("bigram", tiny(PEEK_CYCLE, "PeekCycled"))
    print(out[-600:])
    assert_no_unearned_keep(n, commit, code, out, row)  # rejected, or scored as the honest bigram
