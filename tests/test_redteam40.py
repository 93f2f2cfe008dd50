"""Red team 40's routes, on main 288996a. Each night test asserts the secure outcome (no keep row under 0.6x
the baseline's that the audit leaves unnamed); each fails on 288996a.

A TorchDispatchMode of torch's own, left pushed, runs train.py's function for every aten op of `score`,
outside `_call`. torch.utils.checkpoint (an allowed module) has the public selective-checkpointing helper
`create_selective_checkpoint_contexts(policy_fn)`. It returns two modes, and the first one
(`_CachingTorchDispatchMode`) calls `policy_fn(ctx, op, *args, **kwargs)` with the op's own input tensors
before it runs each op. train.py enters it (`__enter__()`, never exited) just before evaluate_bpb.
Nothing in prepare.py or audit.py looks at the dispatch-mode stack: it is thread-local C++ state, so it is
not a frame hook, not the collector, not a pinned name and not a dispatcher kernel. The mode therefore
stays on through score. The policy sees `aten.nll_loss_forward`'s first argument (cross_entropy's
log-probabilities) and clamps it in place to >= -0.4 nats, so no token scores above 0.4 nats. The model is
the honest bigram, so the probe and the fingerprints see nothing.
Nights on 288996a: 0.567653 against the honest 3.393973 (0.17x). The audit said "audit: all 2 rows are
backed by run records" (routes 1 and 3 run as nights).
The confirm on route 1 found "its run reported 0.567653, the clean scorer 3.393973: tampered" and "does not
reproduce": the gain does not hold (its clean scorer runs none of train.py).
Fix (prepare.py): after each call in `_call` (the fingerprint's first, at evaluate_bpb's start, then every
model call) no dispatch mode may be on the stack, and the torch-function modes must be those before the
call (set_default_device's DeviceContext stays on); otherwise the run is rejected ("a torch mode (left on)").
The nights here, run on the fix, score the honest bigram or are rejected.
"""
import pytest
from test_audit import clone_of, tiny
from test_redteam17 import assert_no_unearned_keep


SAC = '''from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts


def _policy(ctx, op, *args, **kwargs):  # run for every op dispatched while the mode is pushed
    if str(op) == "aten.nll_loss_forward.default":
        args[0].clamp_(min=-0.4)  # the log-probabilities cross_entropy hands nll_loss
    return CheckpointPolicy.PREFER_RECOMPUTE

'''
ARMED = '''caching, cached = create_selective_checkpoint_contexts(_policy)
caching.__enter__()
'''

# 2. The same mode through an ExitStack (no `__enter__` in the source)
STACKED = SAC.replace("from torch.utils", "import contextlib\n\nfrom torch.utils") + \
    '''modes = contextlib.ExitStack()
'''
STACK = '''modes.enter_context(create_selective_checkpoint_contexts(_policy)[0])
'''

# 3. Pushed by torch.utils.checkpoint itself: its non-reentrant `checkpoint` enters context_fn's contexts
#    with `with` in a generator, then calls the function, which raises; train.py keeps the exception (its
#    traceback keeps checkpoint's frame, and so the generator, suspended inside its `with`): the mode stays
#    on. No `__enter__`, no ExitStack, nothing but the public checkpoint API.
RAISING = SAC.replace("import CheckpointPolicy,", "import CheckpointPolicy, checkpoint,") + '''kept = []


def _fail(t):
    raise ValueError("stop")

'''
RAISED = '''try:
    checkpoint(_fail, torch.zeros(1), use_reentrant=False,
               context_fn=lambda: create_selective_checkpoint_contexts(_policy))
except ValueError as e:
    kept.append(e)
'''

# 4. Pushed inside the model's first call in eval mode, i.e. inside prepare's own `_call` (a check only at
#    evaluate_bpb's start would not see it); it stays on after `_call` returns.
LAZY = SAC + '''class Lazy(Bigram):
    def forward(self, idx):
        if not self.training:
            self.training = True
            create_selective_checkpoint_contexts(_policy)[0].__enter__()
        return self.table[idx]

'''

# 5. The mode blinds the causality probe too: a model that reads the next token (one_hot of x shifted left)
#    scores almost nothing, and the policy zeroes the input of `aten.amax` (only `_moved`, the probe's
#    per-position move, calls it in the evaluation), so causal_probe is 0.0. Checked in-process (probe 20.0
#    without the mode, 0.0 with it); not run as a night.
PEEK = '''from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts


def _policy(ctx, op, *args, **kwargs):
    if str(op) == "aten.amax.default":
        args[0].zero_()  # the probe's moves
    return CheckpointPolicy.PREFER_RECOMPUTE


class Peek(Bigram):
    def forward(self, idx):
        ahead = torch.cat([idx[:, 1:], idx[:, :1]], 1)  # the next token
        return self.table[idx] + 30 * torch.nn.functional.one_hot(ahead, self.table.size(0))

'''

SOURCES = {"selective checkpoint mode": tiny(SAC, "Bigram", ARMED),
           "exit stack": tiny(STACKED, "Bigram", STACK),
           "checkpoint raised": tiny(RAISING, "Bigram", RAISED),
           "pushed in forward": tiny(LAZY, "Lazy", "model.eval()\n"),
           "probe blinded": tiny(PEEK, "Peek", ARMED)}
NIGHTS = ("selective checkpoint mode", "checkpoint raised")  # run as nights (the others: in-process above)


@pytest.mark.slow
@pytest.mark.parametrize("route", NIGHTS)
def test_a_dispatch_mode_left_on_gets_no_unearned_keep(bigrams, tmp_path_factory, route):
    n = clone_of(bigrams, tmp_path_factory, "rt40")
    commit, code, out, row = n.attack(route, SOURCES[route])
    print(out[-600:], row.stdout, n.audit().stdout)
    assert_no_unearned_keep(n, commit, code, out, row)


def test_call_names_a_dispatch_mode_the_model_leaves_on():
    """In-process, no night: `_call` (every model call of the evaluation goes through it) lets a model push a
    TorchDispatchMode of torch's own and return; the mode then runs train.py's policy for every op of score
    outside `_call`, and nothing records it. Fails on 288996a: `_served["unpinned"]` stays None."""
    import gc

    import prepare
    import torch
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts
    seen = []

    def policy(ctx, op, *args, **kwargs):
        seen.append(str(op))
        return CheckpointPolicy.PREFER_RECOMPUTE

    mode = create_selective_checkpoint_contexts(policy)[0]

    def pushes(idx):
        mode.__enter__()
        return idx.float()

    x, was, collecting = torch.zeros(2, 3, dtype=torch.long), prepare._served["unpinned"], gc.isenabled()
    gc.disable()
    try:
        prepare._served["unpinned"] = None
        prepare._call(lambda idx: idx.float(), x)
        assert prepare._served["unpinned"] is None  # an honest call is not named: the check below means it
        prepare._call(pushes, x)
        torch.zeros(1).sum()  # an op of score's, after _call: the mode runs train.py's policy
        assert seen and prepare._served["unpinned"], seen
    finally:
        mode.__exit__(None, None, None)
        prepare._served["unpinned"] = was
        collecting and gc.enable()
