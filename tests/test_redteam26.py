"""Red team 26's routes, each closed: a frame read through a format field built at run time (named as the
source is read), and a frame hook of train.py's over the evaluation that skipped the pin's check and rewrote
_losses or _moved (the evaluation clears any hook inline after each model call, where no hook can skip the
check, and rejects the run). Each asserts the secure outcome."""
# ruff: noqa: F811
from test_audit import clone_of, findings, tiny  # noqa: F401

import audit

# ---------------------------------------------------------------------------
# 1. str.format is an attribute and item evaluator: "{0.a.b[k][i]}".format(obj) runs getattr and getitem by
#    names in a string. Built from pieces at run time, no literal shows a banned name or a format field the
#    audit's regex reads. From an exception caught in forward, __traceback__.tb_frame.f_back... reaches
#    score's frame, and f_locals[y] prints its targets (256 of them print whole; torch.set_printoptions
#    widens that for bigger batches). The model bets on them; the probe's two calls see the same y.
FORMATTED = '''
_U = "_" * 2
_UP = "." + "f" + "_back"


def _targets(depth):
    """The printed targets of the frame `depth` calls above the caller's caller, or None."""
    try:
        raise ValueError
    except ValueError as e:
        field = "{0." + _U + "trace" + "back" + _U + ".tb" + "_frame" + _UP * depth
        field += ".f" + "_loc" + "als[y]}"
        try:
            return field.format(e)
        except (KeyError, AttributeError, IndexError):
            return None


def _numbers(text):
    out, digits = [], ""
    for ch in text.split("dev" + "ice")[0] + " ":
        if ch.isdigit():
            digits += ch
        elif digits:
            out.append(int(digits))
            digits = ""
    return out


class Formatted(Bigram):
    def forward(self, idx):
        logits = self.table[idx]
        for depth in range(1, 8):
            text = _targets(depth)
            if text is not None:
                ys = _numbers(text)
                if len(ys) == idx.numel():
                    bet = torch.tensor(ys, device=idx.device).view(idx.shape)
                    return logits + 12 * torch.nn.functional.one_hot(bet, logits.size(-1)).to(logits.dtype)
        return logits

'''
WIDE = "torch.set_printoptions(threshold=1000000)\n"


def test_targets_printed_by_str_format_from_the_evaluations_frame_are_named():
    """As the audit reads the commit (its night: 0.003 against 3.394, the audit silent)."""
    assert any("uses .format of a string made at run time" in line
               for line in audit.source_findings(tiny(FORMATTED, "Formatted", late=WIDE)))


# ---------------------------------------------------------------------------
# 2. The frame-hook pin, blinded. A compiled module's dynamo context (`torch.compile(m).dynamo_ctx`, a plain
#    attribute) can be entered as a context manager once `torch._dynamo.config.raise_on_ctx_manager_usage`
#    is False (config: allowed), and its `callback` (a plain attribute) set to train.py's own function: that
#    function is then the PEP 523 frame hook over the whole evaluation, called with every frame that starts.
#    For the frames of audit.unpinned (the pin's check) it answers dynamo's own "skip this frame and all it
#    calls" (a ConvertFrameReturn of FrameAction.SKIP twice, its types read off what dynamo's callback returns
#    for a trivial frame), and dynamo's C shim sets the thread's callback to None while such a frame runs:
#    get_eval_frame_callback() inside the check reads None, outside it the hook is still there. For
#    prepare._losses it hands the frame to dynamo's real callback with red team 24's backend (each cross
#    entropy times 0.5); every other frame it skips.
HOOKED = '''
torch._dynamo.config.raise_on_ctx_manager_usage = False


def _halving_backend(gm, example_inputs):
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch.nn.functional.cross_entropy:
            with graph.inserting_after(node):
                half = graph.call_function(torch.mul, (node, 0.5))
            node.replace_all_uses_with(half, delete_user_cb=lambda user: user is not half)
    gm.recompile()
    return gm.forward


_ctx = torch.compile(torch.nn.Identity(), backend=_halving_backend).dynamo_ctx
_dynamo_callback = _ctx.callback
_made = []


def _name(frame):  # "<frame at 0x..., file '...', line 1, code unpinned>": no attribute read
    return repr(frame).rsplit(" ", 1)[-1].rstrip(">")


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
    name = _name(frame)
    if name == "_losses":
        return _dynamo_callback(frame, cache_entry, frame_state)
    return _answer(name == "unpinned")


_ctx.callback = _sample
_ctx.__enter__()
_nothing()
_ctx.__exit__(None, None, None)
_ctx.callback = _hook

'''
HOOKED_EVAL = '''_ctx.__enter__()
val_bpb = evaluate_bpb(model, tokenizer, 4)
_ctx.__exit__(None, None, None)
print(f"val_bpb: {val_bpb:.6f}")
'''


def hooked_source():
    return tiny(HOOKED).replace('print(f"val_bpb: {evaluate_bpb(model, tokenizer, 4):.6f}")\n', HOOKED_EVAL)


def test_a_frame_hook_that_skips_the_pins_check_is_rejected(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt26hook")
    commit, code, out, row = n.attack("bigram", hooked_source())
    assert code == 1 and "rejected: train.py changed a frame hook" in out, out[-2000:]
    assert row.returncode == 1


# 3. The same hook hands the causality probe's prepare._moved to dynamo with a backend that multiplies its
#    amax by 0: a model that reads the next input token (not causal at all, no state) is probed as moving by
#    0.0, and the record's causal_probe reads 0.0.
PEEKING = HOOKED.replace('if name == "_losses":', 'if name == "_moved":').replace(
    "node.op == \"call_function\" and node.target is torch.nn.functional.cross_entropy",
    'node.target in (torch.amax, "amax")').replace(
    "(node, 0.5)", "(node, 0.0)") + '''

class Peeking(Bigram):
    """The bigram, plus 8 at the next input token: it reads the future."""
    def forward(self, idx):
        logits = self.table[idx]
        ahead = torch.nn.functional.one_hot(idx.roll(-1, 1), logits.size(-1)).to(logits.dtype)
        ahead[:, -1] = 0
        return logits + 8 * ahead

'''


def test_a_frame_hook_that_zeroes_the_probe_passes_no_model_that_reads_ahead(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt26probe")
    source = tiny(PEEKING, "Peeking").replace('print(f"val_bpb: {evaluate_bpb(model, tokenizer, 4):.6f}")\n',
                                              HOOKED_EVAL)
    commit, code, out, row = n.attack("bigram", source)
    assert code == 1 and "rejected: train.py changed a frame hook" in out, out[-2000:]
    assert row.returncode == 1
