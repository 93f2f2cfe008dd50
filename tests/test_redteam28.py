"""Red team 28's routes, each closed: a frame hook switched on by the model's parameters() at the
evaluation's first fingerprint, which skipped _call (the fingerprints now run through _call too, and
evaluate_bpb clears a hook inline after score); the probe's first answer a tensor subclass whose abs() read 0
(only a plain tensor is probed); a private name read through a parameter called `self` of no method
(named). Each asserts the secure outcome. Since the fingerprint reads a module's tensors without calling its
methods (red team 52), the first route's hook is never armed."""
# ruff: noqa: F811
import pytest

from common import ROOT
from test_audit import clone_of, findings, parse_val, tiny  # noqa: F401
from test_redteam17 import assert_no_unearned_keep

EVAL_LINE = 'print(f"val_bpb: {evaluate_bpb(model, tokenizer, 4):.6f}")\n'

# ---------------------------------------------------------------------------
# 1. The inline clearing, skipped. prepare._call clears a frame hook with set_eval_frame(None) right after the
#    model returns, and evaluate_bpb does so as its first statement. But a hook sees _call's frame START, and
#    may answer dynamo's "skip this frame and everything it calls" (FrameAction.SKIP twice): dynamo's C shim
#    then sets the thread's callback to None while _call runs, so the _hook(None) inside reads None (no
#    hook, nothing rejected) and clears nothing, and when _call returns the shim puts the hook back. The one
#    clearing a hook cannot skip is evaluate_bpb's first line (a skip there would switch the hook off for the
#    whole evaluation), so the hook is switched on AFTER it: by the model's own `parameters` (a plain method
#    name), which audit.fingerprint calls on evaluate_bpb's second line, before score. The second fingerprint
#    (after score) switches it off again. In between it hands prepare._losses to dynamo with red team 24's
#    backend (each cross entropy times 0.5). Frames are told apart by f_lineno (the first line of their code:
#    read by the agent from prepare.py), which no rule names; RT26's frame types, read off dynamo's own
#    answer.
HOOK = '''
torch._dynamo.config.raise_on_ctx_manager_usage = False
CALL_LINE, LOSSES_LINE, MOVED_LINE = LINES  # prepare.py's `def _call`, `def _losses`, `def _moved`
ZERO_PROBE = False


def _halving_backend(gm, example_inputs):
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch.nn.functional.cross_entropy:
            with graph.inserting_after(node):
                half = graph.call_function(torch.mul, (node, 0.5))
            node.replace_all_uses_with(half, delete_user_cb=lambda user: user is not half)
        if ZERO_PROBE and node.target in (torch.amax, "amax"):
            with graph.inserting_after(node):
                zero = graph.call_function(torch.mul, (node, 0.0))
            node.replace_all_uses_with(zero, delete_user_cb=lambda user: user is not zero)
    gm.recompile()
    return gm.forward


_ctx = torch.compile(torch.nn.Identity(), backend=_halving_backend).dynamo_ctx
_dynamo_callback = _ctx.callback
_made = []


def _sample(frame, cache_entry, frame_state):
    _made.append(_dynamo_callback(frame, cache_entry, frame_state))
    return _made[0]


def _nothing():
    return None


def _answer(recursive):
    made = _made[0]
    action = type(made.frame_exec_strategy.cur_action)
    strategy = type(made.frame_exec_strategy)(action.SKIP, action.SKIP if recursive else action.DEFAULT)
    return type(made)(frame_exec_strategy=strategy)


def _hook(frame, cache_entry, frame_state):
    line = frame.f_lineno
    if line == LOSSES_LINE or ZERO_PROBE and line == MOVED_LINE:
        return _dynamo_callback(frame, cache_entry, frame_state)
    return _answer(line == CALL_LINE)


_ctx.callback = _sample
_ctx.__enter__()
_nothing()
_ctx.__exit__(None, None, None)
_ctx.callback = _hook
_armed = []


class Armed(Bigram):
    """The bigram; its parameters() switches the hook on at the evaluation's first fingerprint, off at the
    second."""
    def parameters(self, recurse=True):
        if _armed:
            _armed.append(len(_armed))
            if len(_armed) == 2:
                _ctx.__enter__()
            elif len(_armed) == 3:
                _ctx.__exit__(None, None, None)
        return super().parameters(recurse)

'''
ARM = "_armed.append(0)\n"

# 2. The same hook also hands prepare._moved (the causality probe's measure) to dynamo, with the backend
#    multiplying its amax by 0: a model that reads the next input token (no state at all) is probed at 0.0.
PEEKING = HOOK.replace("ZERO_PROBE = False", "ZERO_PROBE = True") + '''

class Peeking(Armed):
    """The bigram, plus 8 at the next input token: it reads the future."""
    def forward(self, idx):
        logits = self.table[idx]
        ahead = torch.nn.functional.one_hot(idx.roll(-1, 1), logits.size(-1)).to(logits.dtype)
        ahead[:, -1] = 0
        return logits + 8 * ahead

'''
HOOKS = {"cross entropy halved": (HOOK, "Armed"), "probe zeroed, model reads ahead": (PEEKING, "Peeking")}


@pytest.mark.parametrize("route", HOOKS)
def test_a_frame_hook_switched_on_after_evaluate_bpbs_first_line_that_skips_call_is_rejected(
        bigrams, tmp_path_factory, route):
    lines = (ROOT / "prepare.py").read_text().splitlines()
    at = [next(i + 1 for i, line in enumerate(lines) if line.startswith(f"def {name}("))
          for name in ("_call", "_losses", "_moved")]
    n = clone_of(bigrams, tmp_path_factory, "rt28hook")
    source = tiny(HOOKS[route][0].replace("LINES", repr(tuple(at))), HOOKS[route][1], late=ARM)
    commit, code, out, row = n.attack("bigram", source)
    # the fingerprint no longer calls the model's parameters(): the hook is never armed, nothing is halved
    # and the model that reads ahead is seen; or armed, it is named
    base = n.records()[0]["val_bpb"]
    assert "evaluation rejected" in out and code == 1 or parse_val(out) == [round(base, 6)], out[-2000:]
    assert "evaluation rejected" in out or route == "cross entropy halved", out[-2000:]


# ---------------------------------------------------------------------------
# 3. The probe's first answer is no logits the evaluation checks: score checks `type(logits) is torch.Tensor`
#    for what it sums, but _causality_probe takes the FIRST call's answer (`changed`, on the input whose rows
#    end in another row's text) as any tensor, and calls its methods: changed.clone(), changed.split(chunk),
#    then in _moved a.float(), (...).abs(). A torch.Tensor subclass with plain-named methods (no dunder, no
#    __torch_function__: torch's default carries the class through `-`) answers .abs() with zeros, so the
#    probe reads 0.0 whatever the model does. The model tells the probe's first input from any other batch
#    by its content alone (no state): its rows' tails are another row's tokens at one shift (rows, shift),
#    the same for every row. It returns the subclass only then; every other call gets plain logits that read
#    the next input token.
DETECT = '''

def _longest_runs(eq):
    """(B,) the longest run of True in each row of a (B, T) bool tensor."""
    run = torch.zeros(eq.shape[0], dtype=torch.long)
    best = torch.zeros(eq.shape[0], dtype=torch.long)
    for t in range(eq.shape[1]):
        run = (run + 1) * eq[:, t].long()
        best = torch.maximum(best, run)
    return best


def _probe_score(z):
    """How much z looks like the probe's first input: the most, over (rows, shift), of the summed longest
    runs (of at least 4) where a row equals another row shifted."""
    B, T = z.shape
    best = 0
    for r in range(1, max(B, 2)):
        for s in range(1, T):
            runs = _longest_runs(z == z.roll((r, s), (0, 1)))
            best = max(best, int((runs * (runs >= 4)).sum()))
    return best

'''
BLIND = DETECT + '''
_evaluating = []


class Tails(torch.Tensor):
    """What the probe's first call answers: its differences' absolute values are all 0."""
    def abs(self):
        return torch.zeros(self.shape, dtype=self.dtype, device=self.device)


class ProbeBlind(Bigram):
    """The bigram, plus 8 at the next input token: it reads the future, and answers the probe's first input
    with Tails."""
    def forward(self, idx):
        logits = self.table[idx]
        ahead = torch.nn.functional.one_hot(idx.roll(-1, 1), logits.size(-1)).to(logits.dtype)
        ahead[:, -1] = 0
        out = logits + 8 * ahead
        if _evaluating and _probe_score(idx) >= 12:
            return out.as_subclass(Tails)
        return out

'''


def test_the_probes_first_answer_is_a_tensor_subclass_that_hides_a_model_reading_ahead(bigrams,
                                                                                       tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt28blind")
    commit, code, out, row = n.attack("bigram", tiny(BLIND, "ProbeBlind", late="_evaluating.append(1)\n"))
    assert code == 1 and "rejected: the model is not causal" in out, out[-2000:]
    assert row.returncode == 1


# ---------------------------------------------------------------------------
# 4. The private-name rule exempts an attribute chain rooted at a name `self` (or `cls`), whatever it is bound
#    to: a plain function whose parameter is called `self` reads `._evaluate` of the ForwardRef that
#    typing.get_args(typing.List["<code>"])[0] hands back (red team 27's evaluator (b), now behind a name the
#    rule trusts). The string runs with builtins: exec empties prepare's _PIN (a tuple, not pinned itself)
#    and multiplies LN2 by 4. The model is the baseline's bigram.
EVALUATOR = '''import typing

CODE = "(exec('import prep' + 'are as p; p._PIN = (); p.LN2 *= 4'), int)[1]"


def _resolve(self):
    return self._evaluate({}, {}, frozenset())

'''
EVALUATED = "_resolve(typing.get_args(typing.List[CODE])[0])\n"


def test_a_private_name_read_through_a_parameter_called_self_is_named(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt28self")
    commit, code, out, row = n.attack("bigram", tiny(EVALUATOR, late=EVALUATED))
    assert_no_unearned_keep(n, commit, code, out, row)
    assert any(line.startswith(commit) and "uses ._evaluate" in line for line in findings(n.audit()))
