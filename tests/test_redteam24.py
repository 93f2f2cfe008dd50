"""Red team 24's routes, each closed: frames read through attribute chains of torch's modules (named as the
source is read), the evaluation run under torch.compile with a backend of train.py's (the pin holds the frame
hook), and a causality probe made NaN by a column of -inf (a NaN is a move without bound). Each asserts the
secure outcome."""
# ruff: noqa: F811
import pytest
import torch
from test_audit import clone_of, findings, named, tiny  # noqa: F401

import audit

# 1. Red team 22's frames, reopened: its fix names only *imports* from torch's non-research modules; the same
#    names reached as attributes of a research module's chain pass (torch.autograd.profiler_util.attrgetter is
#    operator.attrgetter; torch.cuda.traceback is traceback, a standard module REACHED does not list, and the
#    chain's last part is never looked up). traceback.walk_stack hands the frames, attrgetter their locals:
#    the model adds 4 at the evaluation's targets. The probe's two calls see the same y: nothing moves.
FRAMES = '''
_locals = torch.autograd.profiler_util.attrgetter("f_loc" + "als")


def _tracebacks():
    return torch.cuda.traceback


def _stack():
    return _tracebacks().walk_stack(None)


def _frames3():
    return [f for f, _ in _stack()]


def _frames2():
    return _frames3()


def _frames():
    return _frames2()


class Peek(Bigram):
    """The bigram table, plus 4 at the targets the evaluation holds while it calls the model."""
    def forward(self, idx):
        logits = self.table[idx]
        for frame in _frames():
            ys = _locals(frame).get("y")
            if torch.is_tensor(ys) and ys.shape == idx.shape and "token_bytes" in _locals(frame):
                return logits + 4 * torch.nn.functional.one_hot(ys, logits.size(-1))
        return logits

'''


def test_frames_read_through_attribute_chains_of_research_modules():
    """As the audit reads the commit (its night: 0.396 against 3.394, the audit silent)."""
    lines = audit.source_findings(tiny(FRAMES, "Peek"))
    assert any(line.endswith("uses .attrgetter") for line in lines), lines
    assert any("reaches the module traceback" in line for line in lines), lines


@pytest.mark.parametrize("line", ["tb = torch.cuda.traceback", "from torch.cuda import traceback",
                                  "s = torch.distributed.elastic.timer.api.stack",
                                  "g = torch.fx.graph.inspect", "f = functools.partial(x.attrgetter, 'a')"])
def test_a_tool_reached_through_torch_is_named(line):
    assert audit.source_findings(f"import functools\nimport torch\n{line}\n")


@pytest.mark.parametrize("line", ["y = torch.select(x, 0, 1)", "t = torch.trace(x)",
                                  "from torch.nn import functional as F", "z = torch.stack([x, x])"])
def test_torch_functions_of_standard_module_names_are_no_finding(line):
    assert audit.source_findings(f"import torch\nx = torch.ones(2, 2)\n{line}\n") == []


# 2. evaluate_bpb itself under torch.compile with a backend of train.py's: dynamo's frame hook (PEP 523) stays
#    on for every frame the call runs, prepare's score and _losses too, and hands each of their graphs to the
#    backend, which multiplies each cross entropy by 0.5. Nothing pinned changes: the frames' code is run by
#    another evaluator, not replaced.
DYNAMO = '''
torch._dynamo.config.suppress_errors = True


def _halving_backend(gm, example_inputs):
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch.nn.functional.cross_entropy:
            with graph.inserting_after(node):
                half = graph.call_function(torch.mul, (node, 0.5))
            node.replace_all_uses_with(half, delete_user_cb=lambda user: user is not half)
    gm.recompile()
    return gm.forward

'''


def test_the_evaluation_compiled_by_dynamo_with_a_backend_of_train_pys(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt24dynamo")
    source = tiny(DYNAMO).replace("evaluate_bpb(model",
                                  "torch.compile(evaluate_bpb, backend=_halving_backend)(model")
    commit, code, out, row = n.attack("compiled evaluation", source)
    assert code == 1 and "rejected: train.py changed a frame hook" in out, out[-2000:]
    assert row.returncode == 1


# 3. A probe of NaN passes: evaluate_bpb rejects `probe > CAUSAL_TOLERANCE`, and NaN > x is False. The logits
#    get one column more than the vocabulary (allowed: V >= vocabulary), of -inf: cross entropy ignores it
#    (exp(-inf) = 0), but the probe's (changed - logits) there is -inf - -inf = NaN, and amax and max carry
#    NaN through. The model reads the next input token (not causal at all, no state): the record keeps
#    causal_probe NaN, which no check reads; the confirm's `(probe or 0) > CAUSAL_TOLERANCE` and covering
#    probe (torch.maximum, Python's max) carry the NaN too.
NAN_PROBE = '''

class Ahead(Bigram):
    """The bigram table, plus 6 at the next input token; one more column, of -inf."""
    def __init__(self, vocab):
        super().__init__(vocab)
        self.peeking = False

    def forward(self, idx):
        logits = self.table[idx]
        if self.peeking:
            ahead = torch.cat([idx[:, 1:], idx[:, :1]], 1)
            vocab = torch.arange(logits.size(-1), device=idx.device)
            logits = logits + 6.0 * (vocab == ahead[..., None]).to(logits.dtype)
        never = torch.full_like(logits[..., :1], float("-inf"))
        return torch.cat([logits, never], -1)

'''
# the same within the vocabulary: the column of <|reserved_3|>, a special token no text encodes to (the loader
# encodes with disallowed_special=(), so no target is ever it)
NAN_IN_VOCAB = NAN_PROBE.replace('''        never = torch.full_like(logits[..., :1], float("-inf"))
        return torch.cat([logits, never], -1)''', '''        never = torch.zeros_like(logits)
        never[..., -1] = float("-inf")
        return logits + never''')
NAN_ROUTES = {"a column past the vocabulary": NAN_PROBE, "a special token's column": NAN_IN_VOCAB}


@pytest.mark.parametrize("route", NAN_ROUTES)
def test_a_probe_of_nan_is_a_model_that_is_not_causal(bigrams, tmp_path_factory, route):
    n = clone_of(bigrams, tmp_path_factory, "rt24nan")
    source = tiny(NAN_ROUTES[route], "Ahead", late="model.peeking = True\n")
    commit, code, out, row = n.attack("sharper bigram", source)
    assert code == 1 and "evaluation rejected: the model is not causal" in out, out[-2000:]
    assert row.returncode == 1


def test_the_confirms_covering_probe_of_a_column_of_minus_inf_is_not_nan():
    """The clean scorer's probe: a column of -inf is no move, the next token read is (the model above)."""
    x = torch.randint(0, 16, (4, 64), generator=torch.Generator().manual_seed(0))

    def model(idx, ahead=True):
        logits = torch.nn.functional.one_hot(idx, 16).float()
        if ahead:
            logits = logits + torch.nn.functional.one_hot(idx.roll(-1, 1), 16).float()
        return torch.cat([logits, torch.full_like(logits[..., :1], float("-inf"))], -1)

    assert audit.covering_probe(model, x) == 1.0
    assert audit.covering_probe(lambda idx: model(idx, ahead=False), x) == 0.0
