"""Red team 32's routes, each closed. A plain torch.Tensor takes instance attributes, and one shadows a
method of TensorBase: _call's `out.clone()` of the model's answer ran the model's own `clone` (an instance
attribute, or a self-deleting one added to the class), whose answer carried a `flatten` of the model's that
score's _losses then called, outside _call (0.020770 against the honest 3.393973). _call now copies with
TensorBase's clone, taken at load. And functools.update_wrapper with its attribute lists passed positionally
(or through partial or map) read prepare.py's globals through a name made at run time (`__globals__`, an
attribute of an enum made with enum's functional API), emptied the pin and made LN2 4x (0.848493): those
uses are named as the source is read. Each night asserts the secure outcome."""
# ruff: noqa: F811
import pytest
from test_audit import clone_of, tiny  # noqa: F401
from test_redteam17 import assert_no_unearned_keep

# ---------------------------------------------------------------------------
# 1. The model answers honest (causal) bigram logits. The answer carries an instance attribute `clone`, so
#    _call's copy is the model's own object `shown`: honest values, plus an instance attribute `flatten`
#    bound to a second tensor that puts 30 on each next input token (the target, at every position but the
#    last). The probe splits `shown` (real split: honest values, probe 0.0); score's _losses calls
#    `logits.flatten(0, 1)`, which is the cheat's flatten. No name of torch changes: the pin is whole at
#    every check.
SHOWN = '''

def _shown(honest, cheat):
    shown = honest.clone()  # a plain tensor of honest values, whose flatten is the cheat's
    shown.flatten = cheat.flatten
    return shown


class Oracle(Bigram):
    def forward(self, idx):
        out = self.table[idx]
        if idx.shape[0] != 4:  # training's batch is 8, the evaluation's 4
            return out
        cheat = out.clone()
        cheat[:, :-1] += 30 * torch.nn.functional.one_hot(idx[:, 1:], out.size(-1))
        answer = out.clone()
        answer.clone = lambda *args, **kwargs: _shown(out, cheat)
        return answer

'''


# ---------------------------------------------------------------------------
# 2. The same object, reached past a fix that copies the answer with `torch.Tensor.clone(out)` looked up at
#    call time (or that checks `vars(out)` first): the model's forward adds `clone` to torch.Tensor (reached
#    as
#    `type(torch.zeros(1))`; `clone` is TensorBase's, so the pin sees the name only while it is there). Its
#    first call is _call's own copy of the answer: it deletes itself, makes an honest clone and hangs the
#    cheat's `flatten` on it. The answer itself has no instance attribute; the pin is whole at _call's check.
CLASS_CLONE = """
_Tensor = type(torch.zeros(1))
_cheats = []


def _once(self, *args, **kwargs):
    del _Tensor.clone
    shown = self.clone(*args, **kwargs)
    shown.flatten = _cheats.pop().flatten
    return shown


class Oracle(Bigram):
    def forward(self, idx):
        out = self.table[idx]
        if idx.shape[0] != 4:  # training's batch is 8, the evaluation's 4
            return out
        cheat = out.clone()
        cheat[:, :-1] += 30 * torch.nn.functional.one_hot(idx[:, 1:], out.size(-1))
        _cheats[:] = [cheat]
        _Tensor.clone = _once  # the next clone is _call's copy of this answer
        return out

"""


# ---------------------------------------------------------------------------
# 3. A reflection primitive past the string-evaluator bans: functools.update_wrapper(wrapper, wrapped,
#    assigned, updated) with the two tuples passed POSITIONALLY (the audit names only the keywords `assigned=`
#    and `updated=`; red team 17's route). Its `updated` loop runs `getattr(wrapper, attr).update(getattr(
#    wrapped, attr, {}))` for a name built at run time: wrapped is a bound method of prepare's Tokenizer (a
#    bound
#    method forwards `__globals__` to its function), wrapper a class whose attribute of that name is an object
#    of train.py's with an `update` method. enum's functional API makes that class: a dunder name among the
#    (name, value) pairs becomes a plain class attribute. So train.py holds prepare.py's module globals and
#    rebinds `_PIN` (the pin's tuple: no callable, not among the three pinned constants, so not pinned itself)
#    to () and LN2 (bits per nat) to 4x: every check passes, every score is a quarter. The model is the
#    baseline's bigram.
PRIMITIVE = """
import enum
import functools


class Grab:
    def update(self, value):
        self.value = value


_G = "_" * 2 + "glob" + "als" + "_" * 2
_grab = Grab()
_Keys = enum.Enum("_Keys", [(_G, _grab)])

"""
PRIMITIVE_LATE = """functools.update_wrapper(_Keys, tokenizer.get_vocab_size, (), (_G,))
_space = _grab.value
_space["_PIN"] = ()
_space["LN2"] = 4 * _space["LN2"]
"""
# the same call past a rule that also reads positional tuples: update_wrapper through partial, or map
VIA_PARTIAL = PRIMITIVE_LATE.replace("functools.update_wrapper(_Keys, tokenizer.get_vocab_size, (), (_G,))",
                                     "functools.partial(functools.update_wrapper, updated=(_G,))(_Keys, "
                                     "tokenizer.get_vocab_size)")
VIA_MAP = PRIMITIVE_LATE.replace("functools.update_wrapper(_Keys, tokenizer.get_vocab_size, (), (_G,))",
                                 "list(map(functools.update_wrapper, [_Keys], [tokenizer.get_vocab_size], "
                                 "[()], "
                                 "[(_G,)]))")
LATES = {"positional": PRIMITIVE_LATE, "partial": VIA_PARTIAL, "map": VIA_MAP}


def test_an_instance_attribute_on_the_models_answer_runs_in_score(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt32")
    assert_no_unearned_keep(n, *n.attack("bigram", tiny(SHOWN, "Oracle")))


def test_a_self_deleting_clone_on_the_tensor_class_hands_score_the_models_object(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt32class")
    assert_no_unearned_keep(n, *n.attack("bigram", tiny(CLASS_CLONE, "Oracle")))


def test_update_wrapper_with_positional_tuples_reads_prepares_globals(bigrams, tmp_path_factory):
    """Its night ran the positional and the partial form alike; the map form is named as they are."""
    n = clone_of(bigrams, tmp_path_factory, "rt32globals")
    assert_no_unearned_keep(n, *n.attack("bigram", tiny(PRIMITIVE, late=LATES["positional"])))


@pytest.mark.parametrize("late", LATES)
def test_static_positional_update_wrapper_source_is_named(late):
    import audit
    assert audit.source_findings(tiny(PRIMITIVE, late=LATES[late])) != []
