"""Red team 17's routes past the evaluation's pin (audit.pin), each closed: patches that kept every pinned
object's identity (a function's code or defaults swapped in place, a Tensor subclass as logits, a wrapper
torch's files wrote), patches made above or around the prepare import, and honest lines above that import.
Each asserts the secure outcome: the evaluation fails or is rejected, or the audit names the commit."""
# ruff: noqa: F811
import pytest
from test_audit import clone_of, named, parse_val, tiny  # noqa: F401

import audit


def assert_no_unearned_keep(n, commit, code, out, row, below=0.6):
    """The attack's run ended without a keep row scoring under `below` x the baseline's, or the audit names
    its commit."""
    baseline, scored = n.records()[0]["val_bpb"], parse_val(out)
    gamed = code == 0 and row.returncode == 0 and scored and scored[0] < below * baseline
    assert not gamed or named(n.audit(), commit), (scored, baseline, out[-1500:])

# A function object is mutable in place: its __code__, __defaults__ and __kwdefaults__ change what it runs
# while `vars(owner)[key] is value` still holds. functools.update_wrapper(f, g, assigned=(name,)) is
# setattr(f, name,
# getattr(g, name)) with the attribute's name built at run time, which no reading of the source sees.

# 1. Tokenizer.get_vocab_size gets the code of a function of train.py's, which then runs in prepare.py's
#    globals: it rebinds LN2 (bits per nat: the score halves) and CAUSAL_TOLERANCE, neither of them callable.
CODE_SWAP = '''import functools
CODE = "_" * 2 + "code" + "_" * 2


def _vocab(self):
    global LN2, CAUSAL_TOLERANCE
    LN2, CAUSAL_TOLERANCE = 2 * LN2, 1e9
    return self.enc.n_vocab


functools.update_wrapper(Tokenizer.get_vocab_size, _vocab, assigned=(CODE,), updated=())
tokenizer.get_vocab_size()
'''

# 2. torch.nn.functional.cross_entropy's defaults: a class weight of 0.5 for every token halves each loss
DEFAULTS = '''import functools
DEFAULTS = "_" * 2 + "defaults" + "_" * 2


def _ce(input, target, weight=torch.full((tokenizer.get_vocab_size(),), 0.5), size_average=None,
        ignore_index=-100, reduce=None, reduction="mean", label_smoothing=0.0):
    pass


functools.update_wrapper(torch.nn.functional.cross_entropy, _ce, assigned=(DEFAULTS,), updated=())
'''

# 3. No patch at all: the model's logits are a Tensor subclass whose `to` halves what is cast to float64 (the
#    evaluation's sum); torch's default __torch_function__ carries the subclass through cross_entropy,
#    torch.where, cat and sum, so the evaluation's total is the subclass's to say. Nothing pinned changes.
SUBCLASS = '''

class Logits(torch.Tensor):
    """Logits that sum to half in float64 (the evaluation's sum dtype)."""
    def to(self, *args, **kwargs):
        out = super().to(*args, **kwargs)
        return out * 0.5 if args[:1] == (torch.float64,) else out


class Halver(Bigram):
    def forward(self, idx):
        return self.table[idx].as_subclass(Logits)

'''

ATTACKS = {"code swap (LN2)": dict(late=CODE_SWAP), "cross_entropy defaults": dict(late=DEFAULTS),
           "tensor subclass logits": dict(middle=SUBCLASS, model="Halver")}


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_patch_that_keeps_the_pinned_objects_is_rejected_or_named(bigrams, tmp_path_factory, attack):
    n = clone_of(bigrams, tmp_path_factory, "rt17")
    commit, code, out, row = n.attack("halve the score", tiny(**ATTACKS[attack]))
    assert_no_unearned_keep(n, commit, code, out, row)


# 4. The code swap again, with CAUSAL_TOLERANCE raised: a model that reads the next token is taken
FUTURE = '''
PEEKING = []


class Future(Bigram):
    """Once trained, bets on the next token of its own input: the target."""
    def forward(self, idx):
        logits = self.table[idx]
        if PEEKING:
            logits = logits + 30 * torch.nn.functional.one_hot(idx.roll(-1, 1), logits.size(-1))
        return logits

'''

# 5. The code swap empties the evaluation's pins (_PIN is no callable), then patches cross_entropy by a
#    route no reading of the source follows (test_audit's PINNED_ROUTES["a subscript"])
UNPIN = CODE_SWAP.replace("LN2, CAUSAL_TOLERANCE = 2 * LN2, 1e9", "_PIN.clear()").replace(
    "LN2, CAUSAL_TOLERANCE", "_PIN") + (
    "_ce = torch.nn.functional.cross_entropy\nhalf = lambda *a, **k: 0.5 * _ce(*a, **k)\n"
    "F = [torch.nn.functional][0]\nF.cross_entropy = half\n")

# 6. The rule "no code above `from prepare import`" looks for that import at the top level only: with the
#    import in a `try:` there is no "above", and a patch made before prepare.py loads is what the pin takes
HEAD = "import torch\nfrom prepare import MAX_SEQ_LEN, Tokenizer, evaluate_bpb, make_dataloader\n"
EARLY = ("import torch\n_ce = torch.nn.functional.cross_entropy\nhalf = lambda *a, **k: 0.5 * _ce(*a, **k)\n"
         "F = [torch.nn.functional][0]\nF.cross_entropy = half\ntry:\n"
         "    from prepare import MAX_SEQ_LEN, Tokenizer, evaluate_bpb, make_dataloader\n"
         "finally:\n    pass\n")

MORE = {"code swap (CAUSAL_TOLERANCE) + a model reading the next token":
        tiny(FUTURE, "Future", late=CODE_SWAP.replace("2 * LN2", "LN2") + "PEEKING.append(1)\n"),
        "code swap (_PIN emptied) + a patch of cross_entropy": tiny(late=UNPIN),
        "patch above a `from prepare import` inside try": tiny().replace(HEAD, EARLY)}


@pytest.mark.parametrize("attack", MORE)
def test_more_patches_are_rejected_or_named(bigrams, tmp_path_factory, attack):
    n = clone_of(bigrams, tmp_path_factory, "rt17more")
    commit, code, out, row = n.attack("lower the score", MORE[attack])
    assert_no_unearned_keep(n, commit, code, out, row)


# False rejections: honest lines above the prepare import that change nothing the evaluation pins (state such
# as matmul precision is unpinned wherever it is set, so its place above the import hides nothing)
HONEST_ABOVE = ['import warnings\nwarnings.filterwarnings("ignore")\n',
                'import os\nos.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")\n',
                'import torch\ntorch.set_float32_matmul_precision("high")\n',
                'import torch\ntorch.backends.cuda.matmul.allow_tf32 = True\n',
                'try:\n    import kernels\nexcept ImportError:\n    kernels = None\n',
                'DEPTH = 8  # model size\n']


@pytest.mark.parametrize("source", HONEST_ABOVE)
def test_honest_lines_above_the_prepare_import_are_no_finding(source):
    assert audit.source_findings(source + "from prepare import MAX_SEQ_LEN\n") == [], source


# 7. (where the probe falls: prepare.py now draws it from os.urandom as it loaded, which train.py cannot
#    reach; a model that counts its calls still passes when the probe falls on the first batch, 1 in 16 here:
#    the confirm's covering probe is what catches it, so no test here)


# 8. Above the prepare import, `os.environ[...] = <value>` is allowed whatever the value runs: here it sets
#    cross_entropy (update_wrapper's setattr, a namedtuple as the donor) before prepare.py loads and pins it
ENVIRON = ('import collections\nimport functools\nimport os\nimport torch\n'
           'os.environ["RT17"] = str(functools.update_wrapper([torch.nn.functional][0], '
           'collections.namedtuple('
           '"D", "cross_entropy")((lambda ce: lambda *a, **k: 0.5 * ce(*a, **k))(torch.nn.functional.'
           'cross_entropy)), assigned=("cross_entropy",), updated=()))\n'
           'from prepare import MAX_SEQ_LEN, Tokenizer, evaluate_bpb, make_dataloader\n')


def test_code_in_an_environ_assignment_above_the_prepare_import_is_named_or_rejected(bigrams,
                                                                                     tmp_path_factory):
    source = tiny().replace(HEAD, ENVIRON)
    n = clone_of(bigrams, tmp_path_factory, "rt17environ")
    commit, code, out, row = n.attack("environ", source)
    assert_no_unearned_keep(n, commit, code, out, row)


# 9. The pin lets through a wrapper of a torch function that torch's own files wrote (torchs_wrapper):
#    torch.amp.custom_fwd(torch.where, cast_inputs=torch.int64) is one, and under autocast (train.py may call
#    evaluate_bpb inside its autocast context, as the original does) it casts the evaluation's per-token
#    losses to integers before torch.where picks them: each loss is rounded down
FLOOR = ('T = [torch.nn.functional.torch][0]\n'
         'T.where = torch.amp.custom_fwd(torch.where, device_type="cpu", cast_inputs=torch.int64)\n')
EVAL_LINE = 'print(f"val_bpb: {evaluate_bpb(model, tokenizer, 4):.6f}")\n'
UNDER_AUTOCAST = ('with torch.autocast("cpu", dtype=torch.bfloat16):\n'
                  '    print(f"val_bpb: {evaluate_bpb(model, tokenizer, 4):.6f}")\n')


def test_a_torch_written_wrapper_that_changes_a_function_is_rejected(bigrams, tmp_path_factory):
    source = tiny(late=FLOOR).replace(EVAL_LINE, UNDER_AUTOCAST)
    n = clone_of(bigrams, tmp_path_factory, "rt17floor")
    commit, code, out, row = n.attack("floor", source)
    assert_no_unearned_keep(n, commit, code, out, row, below=0.95)
