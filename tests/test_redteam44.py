"""Red team 44: a gain the confirm says "holds" that is no model's: the clean scorer never probes the held-out
data.

The clean scorer (audit.score_artifact) probes the exported program for causality on validation batches only:
prepare.score's random-cut probe on "val" and covering_probe on the first "val" batch. On the held-out data it
calls prepare.score too, but keeps only the score (`prepare.score(...)[0]`): the held-out batches' probe is
computed and dropped. So an exported program that is causal on the validation rows and reads the next token on
every other row passes every check of the confirm, and its held-out "gain" is as large as its validation gain,
which makes the overfitting check (held-out gain under half the validation gain) silent too.

The model (train.py's only change, with a SEED line so that the confirm can draw afresh) is the baseline's
bigram table plus, while it is scored, a memory of the rows it is shown (a plain list attribute: no weight or
buffer changes, so the fingerprints match):
- at each position, if a remembered row shares the prefix up to that position, it puts weight 0.9 on that
  row's next token (causal: only the prefix decides it); otherwise on the next token itself (read ahead);
- the probe's changed rows (detected as the donor splice of the rows shown next) are dropped from the memory
  after the probe's second call, which answers the first call's prefixes from the same memory, alike.
- After the evaluation (its record written), the confirm's export traces it with the memory it built: a
  constant of the validation rows. The exported program holds only aten operations and writes no buffer.

In the evaluation (its own, in the night and in the confirm's rerun) the validation rows are read ahead once
and remembered after: the probe never sees a logit move (the probe's cut position is answered from the memory
at both calls). In the clean scorer the validation rows are all remembered (causal: both probes read 0) and
the held-out rows are read ahead (no probe is kept there). The clean validation score equals the rerun's own
(same function, same rows); the held-out score is about as low.

Needs: evaluate_bpb at batch size 1 (one probed row, so a probe at the evaluation's first batch costs its
own score under CLEAN_MATCH), and the test night's validation stream, whose 64 scored rows are few distinct
rows (its shard holds 16 documents). On a real validation set the memory is every scored row (EVAL_TOKENS
of them, a constant of the export); the route is the same.

Measured on main 0fe3d8d (this 2-core machine, nice'd): the night's keep row 0.144137 against the baseline's
3.393973 (0.04x), `audit.py` "all 3 rows are backed by run records"; `audit.py --confirm`: the baseline rerun
clean 3.393973 (held-out 3.348415), the commit's rerun 0.144137 by its own evaluation and the clean scorer
(held-out 0.318798), "gain +3.249836 on validation, +3.029618 held-out, noise floor 0.001000: the gain holds
(weaker, see above)" (weaker only for this machine's own _sandboxing_egress_ca.pth).

Fixed: (1) the clean scorer probes the held-out batches too (every batch it scores, and a covering probe of
one); (2) evaluate_bpb exports the model (in the confirm's reruns) before it scores, so nothing the evaluation
shows the model can become part of the artifact. The nightly audit still passes the night's row (a plain
attribute dodges the in-process probe: a documented limit). The route's night and confirm ("does not hold")
ran in this file from 2c9d66d to 120ed49 (CI included, 150 s of the suite's time); each part of the fix now
has a test of seconds: (2) in test_prepare.py (the export comes before the evaluation's first model call),
(1) here: the clean scorer's process, given such a program (the held-out rows' first tokens a constant),
names it.
"""
import json
import os
import shutil
import subprocess
import sys

import torch
from test_audit import DATA, HELDOUT, PREPARE, clone_of, tiny

import audit

MIDDLE = '''
SEED = 42
torch.manual_seed(SEED)
P = 0.9  # the weight on the remembered (or read) next token


class Recall(Bigram):
    """The bigram, and while scored: the next token of the first remembered row sharing the prefix (causal),
    else the next token itself (read ahead); the rows it is shown are remembered."""
    def __init__(self, vocab):
        super().__init__(vocab)
        self.scoring, self.calls, self.rows, self.added, self.prev = False, 0, [], [], None

    def predict(self, idx, memory):
        B, T = idx.shape
        logp = torch.log_softmax(self.table[idx], -1)
        ahead = torch.cat((idx[:, 1:], idx[:, :1]), 1)  # the next token (the last position: none)
        if memory is not None:
            M = memory.shape[0]
            same = (idx[:, None, :] == memory[None, :, :]).long().cumprod(-1)  # (B, M, T): prefix shared
            first = (same * (M - torch.arange(M))[None, :, None]).argmax(1)  # the first row that shares it
            nexts = torch.cat((memory[:, 1:], memory[:, :1]), 1)  # (M, T)
            remembered = nexts.gather(0, first)
            ahead = torch.where(same.amax(1) > 0, remembered, ahead)
        pick = torch.arange(logp.shape[-1])[None, None, :] == ahead[:, :, None]
        boost = torch.where(pick, math.log(P), -math.inf)
        mixed = torch.logaddexp(logp + math.log(1 - P), boost)
        last = torch.arange(T)[None, :, None] == T - 1
        return torch.where(last, logp, mixed)

    def spliced(self, before, now):  # the probe's changed rows (before) of the rows now shown
        if before.shape != now.shape or torch.equal(before, now):
            return False
        B, T = now.shape
        differ = (before != now).long()
        start = torch.where(differ.amax(1) > 0, differ.argmax(1), T)
        if int(start.amin()) < 1:
            return False
        after = torch.arange(T)[None, :] >= start[:, None]
        for r1 in range(1, max(B, 2)):
            for r2 in range(1, T):
                donor = now.roll((r1, r2), (0, 1))
                if torch.equal(torch.where(after, donor, now), before):
                    return True
        return False

    def forward(self, idx):
        if not self.scoring:
            return self.table[idx]
        self.calls += 1
        if self.calls > EVAL_TOKENS // (idx.shape[0] * MAX_SEQ_LEN) + 1:  # after the evaluation: no state
            return self.predict(idx, torch.stack(self.rows) if self.rows else None)
        out = self.predict(idx, torch.stack(self.rows) if self.rows else None)
        if self.prev is not None and self.spliced(self.prev, idx):
            self.rows = [r for r in self.rows if all(r is not a for a in self.added)]
        self.added = [row for row in idx if not any(torch.equal(row, r) for r in self.rows)]
        self.rows = self.rows + self.added
        self.prev = idx
        return out

'''
LATE = "model.scoring = True\n"
SEEDED = "SEED = 42\ntorch.manual_seed(SEED)\n"
BASELINE = tiny(middle=SEEDED)  # the honest bigram, seeded (its table starts at zeros: no change)
RECALL = tiny(middle=MIDDLE, model="Recall", late=LATE).replace(
    "import torch\n", "import math\n\nimport torch\n", 1).replace(
    "from prepare import MAX_SEQ_LEN,", "from prepare import EVAL_TOKENS, MAX_SEQ_LEN,").replace(
    "evaluate_bpb(model, tokenizer, 4)", "evaluate_bpb(model, tokenizer, 1)")


def test_static_reading_passes_the_recall_model():
    import audit
    assert audit.source_findings(RECALL) == []  # not an assertion of the fix: the route is in the confirm
    assert audit.seed_line(RECALL)[0] == 42


# The first rows of each split, as the night's prepare.py packs them for score (its buffer of 1000 documents)
ROWS = """if True:
    import contextlib, sys, torch, prepare as p
    tok, rows = p.Tokenizer.from_directory(), []
    for split in ("val", "heldout"):
        with contextlib.closing(p._loader(tok, 4, p.MAX_SEQ_LEN, split, 1000, True)) as batches:
            next(batches)
            rows.append(torch.cat([next(batches)[0] for _ in range(p.EVAL_TOKENS // (4 * p.MAX_SEQ_LEN))]))
    torch.save(rows, sys.argv[1])
"""
K = 4  # tokens after BOS that tell a held-out row: a probe's random ids match them once in ~512 ** 4


class Elsewhere(torch.nn.Module):
    """Stateless: a row whose tokens 1 to K are a held-out row's and no validation row's (a constant) has the
    next token read from position K on; every other row, its own token (causal)."""
    def __init__(self, keys, vocab):
        super().__init__()
        self.register_buffer("keys", keys)
        self.vocab = vocab

    def forward(self, idx):
        held = (idx[:, None, 1:K + 1] == self.keys[None]).all(-1).any(-1)  # (B,)
        read = held[:, None] & (torch.arange(idx.shape[1]) >= K)[None]
        nexts = torch.where(read, idx.roll(-1, 1), idx)
        return 10.0 * torch.nn.functional.one_hot(nexts, self.vocab).float()


def test_the_clean_scorer_probes_the_held_out_batches(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "heldout-probe")
    shutil.copy(n.root / HELDOUT, n.cache / DATA / HELDOUT)  # for the rows only: the scorer fetches its own
    subprocess.run([sys.executable, "-c", ROWS, str(n.root / "rows.pt")], cwd=n.repo, env=n.env, check=True,
                   timeout=300)
    os.remove(n.cache / DATA / HELDOUT)
    val, heldout = torch.load(n.root / "rows.pt")
    seen = {tuple(row[1:K + 1].tolist()) for row in val}
    keys = torch.tensor(sorted({tuple(row[1:K + 1].tolist()) for row in heldout} - seen))
    model = Elsewhere(keys, PREPARE["VOCAB_SIZE"])
    assert len(keys) and audit.covering_probe(model, heldout[:4]) > 0  # it reads ahead on a held-out row
    assert max(audit.covering_probe(model, val[i:i + 4]) for i in range(0, len(val), 4)) == 0  # not on val
    path = str(n.root / "model.pt2")
    audit.export_model(model, (4, PREPARE["MAX_SEQ_LEN"]), torch.device("cpu"), path)
    with n.hub() as url:  # the held-out shard, fetched as the confirm's scorer fetches it
        done = subprocess.run([sys.executable, "-I", "-S", "audit.py", "--score", path, "4", "0",
                               os.pathsep.join(sys.path)], cwd=n.repo, env=dict(n.env, HF_ENDPOINT=url),
                              capture_output=True, text=True, timeout=300)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["heldout"] is not None, (result, done.stderr[-2000:])
    assert result["probe"] > audit.CAUSAL_TOLERANCE, result  # the held-out rows' probes: it reads ahead
