"""Red team 29's routes, each closed: code of train.py that runs when the model's answer is freed (a
generator hung on the logits), patching cross_entropy or Tensor.amax between two checks. _call now copies
the answer and frees the model's own object before it checks, so the patch shows there. Each asserts the
secure outcome."""
# ruff: noqa: F811
from test_audit import clone_of, tiny  # noqa: F401


# ---------------------------------------------------------------------------
# 1. Code of train.py that runs when an object is freed, between two pin checks. The pin is read only in
#    _call (after each model call) and after score; what score runs between two _calls (_losses, the sums)
#    runs with whatever is patched in that window, as long as the patch is gone by the next check. A plain
#    torch.Tensor takes attributes: the model hangs a started generator on the logits it returns. When score
#    rebinds `logits` to the next step's answer (after _call's check), the old logits is freed, the generator
#    is closed, and its `finally` runs train.py's code outside any _call: it sets F.cross_entropy (reached as
#    `[torch.nn.functional][0]`, which no alias tracks) to a scaled one, so the step's _losses is scaled. The
#    model's next call puts the original back before _call checks the pin. The last call's logits, freed as
#    score returns (before evaluate_bpb's checks), puts the original back. No dunder, no hook, no banned name.
FREED = '''from prepare import EVAL_TOKENS

_F = [torch.nn.functional][0]
_honest = torch.nn.functional.cross_entropy


def _scaled(*args, **kwargs):
    return 0.3 * _honest(*args, **kwargs)


def _on_free(loss):
    try:
        yield
    finally:
        _F.cross_entropy = loss


class Freed(Bigram):
    calls = 0

    def forward(self, idx):
        _F.cross_entropy = _honest
        out = self.table[idx]
        if idx.shape[0] == 4:  # the evaluation's batch (training's is 8)
            Freed.calls += 1
            last = Freed.calls > EVAL_TOKENS // idx.numel()  # the evaluation's last call (steps + 1)
            later = _on_free(_honest if last else _scaled)
            next(later)
            out.keep = later
        return out

'''


def test_freed_logits_run_a_patch_between_two_pin_checks(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt29freed")
    commit, code, out, row = n.attack("bigram", tiny(FREED, "Freed"))
    print(out[-600:])
    assert code == 1 and "evaluation rejected: train.py changed" in out, out[-2000:]
    assert row.returncode == 1



# ---------------------------------------------------------------------------
# 2. The same window blinds the probe, and a model that reads the next token passes. In _causality_probe
#    `changed, logits = changed.clone(), _call(model, x)` frees the first answer AFTER the second _call's pin
#    check, so its generator's `finally` runs just before _moved: it adds `amax` to torch.Tensor (reached as
#    `type(...)` of a tensor, which no alias tracks), answering zeros, so the probe reads 0.0. The model's
#    next call deletes it again (the pin's set of Tensor's names is whole again); so does the last call's
#    logits, freed as score returns.
#    The model: the bigram plus 8 at the next input token (no state).
PEEKING = '''from prepare import EVAL_TOKENS

_Tensor = type(torch.zeros(1))


def _blind(self, *args, **kwargs):
    return torch.zeros(self.shape[:-1], device=self.device)


def _unblind():
    try:
        del _Tensor.amax
    except AttributeError:
        pass


def _on_free(blind):
    try:
        yield
    finally:
        if blind:
            _Tensor.amax = _blind
        else:
            _unblind()


class Peeking(Bigram):
    calls = 0

    def forward(self, idx):
        _unblind()
        out = self.table[idx]
        if idx.shape[0] == 4:  # the evaluation's batch (training's is 8)
            Peeking.calls += 1
            out = out.clone()
            out[:, :-1] += 8 * torch.nn.functional.one_hot(idx[:, 1:], out.size(-1))
            later = _on_free(Peeking.calls <= EVAL_TOKENS // idx.numel())  # not the last call's
            next(later)
            out.keep = later
        return out

'''


def test_freed_probe_answer_blinds_the_probe_for_a_model_reading_ahead(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt29peek")
    commit, code, out, row = n.attack("bigram", tiny(PEEKING, "Peeking"))
    print(out[-600:])
    assert code == 1 and "evaluation rejected: train.py changed" in out, out[-2000:]
    assert row.returncode == 1
