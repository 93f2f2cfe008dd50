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

Fixed: (1) the clean scorer keeps the held-out batches' probe and runs the covering probe on a held-out batch
too; (2) evaluate_bpb exports the model (in the confirm's reruns) before it scores, so nothing the evaluation
shows the model can become part of the artifact. The nightly audit still passes the night's row (a plain
attribute dodges the in-process probe: a documented limit); the confirm is the test here.
"""
import pytest
from test_audit import BIGRAM_BUDGET, PREPARE, Night, needs_uv, tiny

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


@pytest.fixture(scope="module")
def recall_night(tmp_path_factory):
    """The bigram night (make_bigrams), but its baseline seeds torch from a top-level SEED, as program.md's
    train.py does: the confirm reruns each commit with the other seed, and names a baseline it cannot (the
    bigram fixture's has no SEED). program.md's setup: the baseline, its seed rerun (SEED = 43, discarded,
    reset), then the recall model as a keep."""
    n = Night(tmp_path_factory.mktemp("recall"))
    n.create(BASELINE, **dict(PREPARE, TIME_BUDGET=BIGRAM_BUDGET))
    n.train()
    assert n.row("keep", "baseline").returncode == 0
    rerun = n.commit("baseline (seed 43)", SEED=43)
    n.train()
    n.git("reset", "-q", "--keep", "HEAD~1")
    assert n.row("discard", "baseline (seed 43)", commit=rerun).returncode == 0
    commit, code, out, row = n.attack("recall", RECALL)
    return n, commit, code, out, row


@needs_uv
def test_the_confirm_of_the_recall_model_does_not_hold(recall_night):
    n, commit, code, out, row = recall_night
    result = n.confirm(commit)
    print(result.stdout[-3000:], result.stderr[-2000:])
    verdict = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert "the gain holds" not in verdict, result.stdout[-3000:]
