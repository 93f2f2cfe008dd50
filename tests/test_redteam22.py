"""Red team 22's routes, each closed: training the timed part of the record left out (a first batch trained
on for minutes, in steps 0 and 1; steps slow enough that the allowances the median step sets grew with
them), and the evaluation's targets read from its frames with inspect.stack and operator.attrgetter, taken
as names of public torch modules. Each asserts the secure outcome."""
# ruff: noqa: F811
import pytest
from test_audit import BUDGET, clone_of, findings, tiny  # noqa: F401

import audit

# A model with more to learn than the bigram: hashed contexts of up to four tokens, trained by plain SGD
WINDOW_MODEL = '''

class Trigram(torch.nn.Module):
    """Causal: the logit at t reads tokens t-1 and t (a hashed pair) and t alone."""
    def __init__(self, vocab, buckets=16384):
        super().__init__()
        self.buckets = buckets
        self.table = torch.nn.Parameter(torch.zeros(vocab, vocab))
        self.pair = torch.nn.Parameter(torch.zeros(buckets, vocab))
        self.triple = torch.nn.Parameter(torch.zeros(buckets, vocab))
        self.quad = torch.nn.Parameter(torch.zeros(buckets, vocab))

    def forward(self, idx):
        p1 = torch.cat([torch.zeros_like(idx[:, :1]), idx[:, :-1]], 1)
        p2 = torch.cat([torch.zeros_like(idx[:, :2]), idx[:, :-2]], 1)
        p3 = torch.cat([torch.zeros_like(idx[:, :3]), idx[:, :-3]], 1)
        h2 = (p1 * 1000003 + idx) % self.buckets
        h3 = (p2 * 998244353 + p1 * 1000003 + idx) % self.buckets
        h4 = (p3 * 7919 + p2 * 998244353 + p1 * 1000003 + idx) % self.buckets
        return self.table[idx] + self.pair[h2] + self.triple[h3] + self.quad[h4]


def sgd(model, x, y, lr):
    torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad
    model.zero_grad()

'''

# 1. One big batch of a second training loader (the record's first batch), trained on for 15 s before the
#    counted loop: steps 0 and 1 are left out of the timed part
WINDOW_LOOP = '''import time
big = make_dataloader(tokenizer, BIGROWS, MAX_SEQ_LEN, "train")
hx, hy, _ = next(big)  # the record's times[0]: everything until times[2] is untimed
big.close()
_until = time.monotonic() + UNTIMED
while time.monotonic() < _until:
    for i in range(0, hx.size(0), 256):
        sgd(model, hx[i:i + 256], hy[i:i + 256], LRX)
for step in range(STEPS):
    x, y, _ = next(loader)
    sgd(model, x, y, LRX)
loader.close()
'''


def window_source(rows=2048, seconds=30, lr=50, steps=30):
    source = tiny(WINDOW_MODEL, "Trigram")
    head, tail = source.split("for step in range(300):")
    tail = tail.split("loader.close()\n", 1)[1]
    return head + WINDOW_LOOP.replace("BIGROWS", str(rows)).replace("UNTIMED", str(seconds)).replace(
        "LRX", str(lr)).replace("STEPS", str(steps)) + tail


# 2. 12 big batches, 2 s of training on each: the warm-up allowance (20 median steps) and the "+ one step"
#    of the limit grow with the run's own step
SLOW_LOOP = '''import time
loader = make_dataloader(tokenizer, BIGROWS, MAX_SEQ_LEN, "train")
for step in range(12):
    hx, hy, _ = next(loader)
    _until = time.monotonic() + SECONDS
    while time.monotonic() < _until:
        for i in range(0, hx.size(0), 256):
            sgd(model, hx[i:i + 256], hy[i:i + 256], LRX)
loader.close()
'''


def slow_source(rows=512, seconds=10, lr=100):
    source = tiny(WINDOW_MODEL, "Trigram")
    head, tail = source.split("loader = make_dataloader(")
    tail = tail.split("loader.close()\n", 1)[1]
    return head + SLOW_LOOP.replace("BIGROWS", str(rows)).replace("SECONDS", str(seconds)).replace(
        "LRX", str(lr)) + tail


UNTIMED_TRAINING = {"a first batch trained on": lambda: window_source(rows=4096, seconds=15, steps=30),
                    "slow steps": lambda: slow_source(seconds=2)}


@pytest.mark.parametrize("attack", UNTIMED_TRAINING)
def test_training_the_timed_part_leaves_out_is_named(bigrams, tmp_path_factory, attack):
    n = clone_of(bigrams, tmp_path_factory, "rt22untimed")
    commit, code, out, row = n.attack("more context", UNTIMED_TRAINING[attack]())
    assert code == 0 and row.returncode == 0 and n.records()[-1]["train_span_s"] >= 15
    assert any(line.startswith(f"{commit}: it trained") and "untimed" in line for line in findings(n.audit()))


def test_the_same_model_within_the_budget_is_no_finding(bigrams, tmp_path_factory):
    """Honest: its loop stops once TIME_BUDGET has passed after the 11 warm-up steps, however slow the machine
    (70 steps on a loaded CI machine took 13 s once, which is far past a 2 s budget)."""
    n = clone_of(bigrams, tmp_path_factory, "rt22honest")
    loop = "for step in range(70):\n    x, y, _ = next(loader)\n"
    timed = ("t0 = None\n" + loop + "    t0 = time.monotonic() if step == 11 else t0\n"
             f"    if step > 11 and time.monotonic() - t0 > {BUDGET}:\n        break\n")
    source = window_source(rows=8, seconds=0, steps=70)
    assert source.count(loop) == 1
    commit, code, out, row = n.attack("more context", source.replace(loop, timed))
    assert code == 0 and not [line for line in findings(n.audit()) if commit in line]


# 3. The targets read from the evaluation's frame: inspect.stack and operator.attrgetter, imported by the
#    names torch.distributed.elastic.timer.api and torch.autograd.profiler_util give them
FRAMES = '''
from torch.autograd.profiler_util import attrgetter
from torch.distributed.elastic.timer.api import stack

_locals = attrgetter("f_loc" + "als")


class Peek(Bigram):
    """The bigram table, plus 3 at the targets the evaluation holds while it calls the model."""
    def forward(self, idx):
        logits = self.table[idx]
        for info in stack(0):
            if info[3] == "score":
                ys = _locals(info[0]).get("y")
                if torch.is_tensor(ys) and ys.shape == idx.shape:
                    return logits + 3 * torch.nn.functional.one_hot(ys, logits.size(-1))
        return logits

'''


def test_a_torch_module_no_research_code_imports_from_is_named():
    lines = audit.source_findings(tiny(FRAMES, "Peek"))
    for module in ("torch.autograd.profiler_util", "torch.distributed.elastic.timer.api"):
        assert any(f"imports from {module}, not on the audit's list" in line for line in lines), lines
