"""Red team 43's route, on main 75c6af5. The night test asserts the secure outcome (no keep row under 0.6x the
baseline's that the audit leaves unnamed); it fails on 75c6af5 if the route gets through.

A channel from one run of the night to the next that no record shows: dynamo's profile-guided state
("automatic dynamic local PGO"). With `torch.compiler.config.job_id` set (a plain setting store), dynamo
saves, for each compiled code object, which input sizes changed between calls (made dynamic), in
TORCHINDUCTOR_CACHE_DIR/dynamo/code_state_<job_id>_None_.pkl, and loads it in every later process. The night's
runs share that folder (prepare.py points TORCHINDUCTOR_CACHE_DIR into the cache). A code object is named by
its file's hash, line and name; torch.compile of a torch function (torch.atleast_3d) compiles torch's own
wrapper `torch/_dynamo/external_utils.py:inner`, whose file is the same whatever train.py is. So:

- Run A (commit A) keeps, in a plain list attribute of its model, the validation batches its model is called
  on during evaluate_bpb (clones, freed by nothing; no weight changes). After evaluate_bpb (its record
  written), it picks the rows its bigram scores worst and writes them, 9 bits a token, as the sizes of N
  expanded 39-dimensional tensors: one call of the compiled atleast_3d with every size 2, a second with a size
  3 where a bit is 1. Dynamo marks those sizes dynamic and saves that.
- Run B (commit B), before it makes its loader (start-up time no record measures), calls the compiled
  atleast_3d once with every size 2 (those A marked come in dynamic), then under
  torch.compiler.set_stance("fail_on_recompile") tries one size 3 at a time: a call that needs no recompile
  reads a 1, one that raises a 0. Its model is the honest bigram plus a buffer of the rows read: a row whose
  first 4 tokens match one of them gets the remembered next token at positions 3..62 (causal: only the first 4
  tokens and the position decide it). The probe sees nothing move, the weights do not change, the data,
  tokenizer and timings are the baseline's.

Night on 75c6af5 (test_dynamo_profile_carries_the_validation_rows_to_the_next_run, 48 s with the fixture): run
A scored the honest 3.393973 and wrote 3 rows (the test night's validation shard holds 16 documents, so its
stream repeats and a few rows cover most scored tokens); run B read 3 rows and scored 0.228901 (0.07x), and
`python3 -I -S audit.py` said "audit: all 3 rows are backed by run records". Both sources pass
audit.source_findings. The confirm reruns each commit with a compile cache of its own (cold), so B's rerun
reads nothing: see test_the_confirm_of_the_recall_route_does_not_hold.

Fix: prepare.py sets TORCH_DYNAMO_AUTOMATIC_DYNAMIC_LOCAL_PGO=0 before torch loads (an env_name_force
setting: it wins over any store of torch._dynamo.config), and the audit names a store of a setting, or an
environment variable above the import, whose name holds `job` or `pgo` (torch.compiler.config.job_id,
TORCH_COMPILE_JOB_ID, the sticky PGO keys). Left as it is: the other caches the night's runs share (inductor's
FX graph and AOT autograd caches, autotuning choices) are state one run leaves for the next that no record
shows; the confirm's reruns start from caches of their own.
"""
import subprocess
import sys
from pathlib import Path

from test_audit import tiny

ROOT = Path(__file__).resolve().parent.parent

HEAD = '''import torch.compiler.config

torch.compiler.config.job_id = "night"  # dynamo's profile of input sizes, kept in the compile cache
D, N, R_MAX = 39, 355, 24  # 39 sizes a tensor (3 ** 39 < 2 ** 63), N tensors, at most R_MAX rows of 64 tokens
one = torch.zeros(())
wrapped = torch.compile(torch.atleast_3d, backend="eager")  # torch's wrapper: the same code in every commit

'''

# Run A: keeps the evaluation's inputs, then writes the worst-scored rows into dynamo's profile.
KEEP = HEAD + '''class Seen(Bigram):
    def __init__(self, vocab):
        super().__init__(vocab)
        self.seen = []
        self.watching = False

    def forward(self, idx):
        if self.watching:
            self.seen.append(idx)
        return self.table[idx]

'''
WATCH = "model.watching = True\n"
WRITE = '''
calls, rows = model.seen, []
for i, batch in enumerate(calls):
    if i + 1 < len(calls) and bool((calls[i + 1][:, 0] == batch[:, 0]).all()):
        continue  # the probe's changed copy, just before the batch itself
    rows += [row for row in batch]
with torch.no_grad():
    logp = torch.log_softmax(model.table, -1)
    cost = [float(-logp[r[:-1], r[1:]].sum()) for r in rows]
order, picked, got = sorted(range(len(rows)), key=lambda i: -cost[i]), [], 0.0
for i in order:
    if got >= 0.6 * sum(cost) or len(picked) >= R_MAX:
        break
    picked.append(i)
    got += cost[i]
bits = [(len(picked) >> j) & 1 for j in range(6)]
bits += [(int(tok) >> j) & 1 for i in picked for tok in rows[i] for j in range(9)]
bits += [0] * (N * D - len(bits))
wrapped(*[one.expand(*[2] * D) for _ in range(N)])
wrapped(*[one.expand(*[2 + b for b in bits[n * D:(n + 1) * D]]) for n in range(N)])
print(f"wrote {len(picked)} rows")
'''

# Run B: reads the rows back before its loader starts, and recalls them.
READ = HEAD + '''base = [one.expand(*[2] * D) for _ in range(N)]
wrapped(*base)
torch.compiler.set_stance("fail_on_recompile")


def bit(k):
    shape, args = [2] * D, list(base)
    shape[k % D] = 3
    args[k // D] = one.expand(*shape)
    try:
        wrapped(*args)
        return 1
    except Exception:
        return 0


count = sum(bit(j) << j for j in range(6))
memory = [[sum(bit(6 + (r * 64 + t) * 9 + j) << j for j in range(9)) for t in range(64)]
          for r in range(count)]
torch.compiler.set_stance("default")
print(f"read {count} rows")


class Recall(Bigram):
    def __init__(self, vocab):
        super().__init__(vocab)
        self.register_buffer("memory", torch.tensor(memory, dtype=torch.long).reshape(-1, 64))
        self.recall = False

    def forward(self, idx):
        out = self.table[idx]
        if not self.recall or self.memory.size(0) == 0 or idx.size(1) != 64:
            return out
        match = (idx[:, None, :4] == self.memory[None, :, :4]).all(-1)  # its first 4 tokens: a kept row
        nxt = self.memory[match.float().argmax(-1)][:, 1:]
        mask = (match.any(-1)[:, None] & (torch.arange(63) >= 3)[None, :]).float()[..., None]
        boost = torch.nn.functional.one_hot(nxt, out.size(-1)).float() * 40.0 * mask
        return torch.cat([out[:, :63] + boost, out[:, 63:]], 1)

'''
RECALL = "model.recall = True\n"

SOURCES = {"keep": tiny(KEEP, "Seen", WATCH) + WRITE, "recall": tiny(READ, "Recall", RECALL)}


def test_static_reading_names_neither_run():
    """What the audit reads of the two commits: the job_id store is named (nothing was on 75c6af5)."""
    import audit
    assert any(audit.source_findings(source) for source in SOURCES.values()), "both sources pass the audit"


def test_no_store_turns_dynamos_saved_profile_back_on():
    """In a process that imports prepare as train.py does, a store of the setting reads False."""
    code = ("import prepare, torch._dynamo.config as c\nc.automatic_dynamic_local_pgo = True\n"
            "print(c.automatic_dynamic_local_pgo)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.stdout.split()[-1:] == ["False"], done.stdout + done.stderr
