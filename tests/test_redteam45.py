"""Red team 45: a gain the confirm says "holds" that is no model's, against main c077da9.

Two holes, used together:
1. evaluate_bpb's export (the confirm's artifact) can still be taken after the model has seen the validation
   data: train.py calls evaluate_bpb a second time after the first returned. That call exports the model as it
   is now (before any check) and then, in `_call(audit.fingerprint, model)`, its `buffers()` raises:
   the exception leaves evaluate_bpb before score runs, so no record is written (the record of the first call
   stays the commit's last), and train.py catches it. The artifact on disk is the model with its memory of
   every validation row: red team 44's fix (2), "export before it saw val", does not hold.
2. The clean scorer refuses an exported program that writes its buffers, but not one that writes its *input*
   (graph_signature.user_inputs_to_mutate). covering_probe calls the program directly on the loader's batch,
   then builds its changed rows from that same tensor: the program rewrites x in place to an encoding
   (2 x + BIG) from which both x and covering_probe's x - 1 decode back to x, so every changed row decodes to
   the original and no logit moves. The covering probe (red team 44's fix (1), on held-out too) reads 0.

The model: the bigram table plus red team 44's memory (while scored in-process, no_grad: the next token of a
remembered row sharing the prefix, else the next token itself, weight W; the probe's changed rows dropped).
Traced for export (a fake tensor, not an exact torch.Tensor): stateless, the memory a constant, its input
decoded and rewritten; on a row no remembered row shares the prefix of, it reads the next token (weight 0.95)
at every third position only. So only prepare.score's random-cut probe on one held-out batch can see it: at
batch size 1, one row, one cut, on a read position about one time in three. W sets the validation gain so
that the held-out "gain" (from reading ahead) is over half of it, and the overfitting rule stays silent.

Measured on main c077da9 (2-core CPU, nice'd): the night's keep 1.593899 against the baseline's 3.393973
(0.47x), audit "all 3 rows are backed by run records"; --confirm: baseline clean 3.393973 (held-out
3.348415), the commit's rerun 1.593899 own and clean (held-out 2.140211), "gain +1.800074 on validation,
+1.208204 held-out, noise floor 0.001000: the gain holds (weaker, see above)" (weaker: this machine's
_sandboxing_egress_ca.pth only). The confirm's verdict depends on the held-out donor probe's cut: 2 in 3 pass.

Fixed: (1) evaluate_bpb exports once a process (it takes the variable out of the environment), so a second
call exports nothing; (2) the clean scorer refuses a program that writes to its inputs as well as its buffers
(any output of the graph that is not the user's), and covering_probe hands the program copies. The nightly
audit still passes the night's row (a plain attribute dodges the in-process probe: a documented limit). The
route's night and confirm ("does not hold", the scorer turning the program down) ran in this file on 391fead
to 708b636 (CI included); they left the suite for its time (100 s): each part of the fix has a fast test,
here and in test_prepare.py (the export once a process).
"""

from test_audit import tiny

MIDDLE = '''
SEED = 42
torch.manual_seed(SEED)
W = 0.22  # the weight on the remembered (or, while first scored, read) next token
BIG = 1 << 20  # the covering probe's rows, rewritten: 2 x + BIG, and x - 1 of that, both decode to x


class Recall(Bigram):
    def __init__(self, vocab):
        super().__init__(vocab)
        self.scoring, self.closing, self.rows, self.added, self.prev = False, False, [], [], None

    def buffers(self, recurse=True):  # the second evaluate_bpb's fingerprint: out before score runs
        if self.closing:
            raise RuntimeError("closed")
        return super().buffers(recurse)

    def predict(self, idx, memory, every, far):
        B, T = idx.shape
        logp = torch.log_softmax(self.table[idx], -1)
        ahead = torch.cat((idx[:, 1:], idx[:, :1]), 1)
        weight = torch.full((B, T), W)
        read = (torch.arange(T)[None, :] % every == every - 1).expand(B, T)
        if memory is not None:
            M = memory.shape[0]
            same = (idx[:, None, :] == memory[None, :, :]).long().cumprod(-1)
            first = (same * (M - torch.arange(M))[None, :, None]).argmax(1)
            nexts = torch.cat((memory[:, 1:], memory[:, :1]), 1)
            remembered = nexts.gather(0, first)
            known = same.amax(1) > 0
            ahead = torch.where(known, remembered, ahead)
            weight = torch.where(known, W, far)
            read = read | known
        pick = torch.arange(logp.shape[-1])[None, None, :] == ahead[:, :, None]
        boost = torch.where(pick, torch.log(weight)[:, :, None], -math.inf)
        mixed = torch.logaddexp(logp + torch.log1p(-weight)[:, :, None], boost)
        use = read[:, :, None] & (torch.arange(T)[None, :, None] < T - 1)
        return torch.where(use, mixed, logp)

    def spliced(self, before, now):
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
                if torch.equal(torch.where(after, now.roll((r1, r2), (0, 1)), now), before):
                    return True
        return False

    def forward(self, idx):
        if not self.scoring:
            return self.table[idx]
        memory = torch.stack(self.rows) if self.rows else None
        if type(idx) is not torch.Tensor:  # traced (fake tensors) for the confirm's export: stateless
            z = torch.where(idx >= BIG, (idx - BIG + 1) // 2, idx)
            out = self.predict(z, memory, 3, 0.95)
            idx.copy_(2 * z + BIG)
            return out
        out = self.predict(idx, memory, 1, W)
        if self.prev is not None and self.spliced(self.prev, idx):
            self.rows = [r for r in self.rows if all(r is not a for a in self.added)]
        self.added = [row for row in idx if not any(torch.equal(row, r) for r in self.rows)]
        self.rows = self.rows + self.added
        self.prev = idx
        return out

'''
LATE = "model.scoring = True\n"
AGAIN = '''
model.closing = True
try:
    evaluate_bpb(model, tokenizer, 1)
except RuntimeError:
    pass
'''
RECALL = tiny(middle=MIDDLE, model="Recall", late=LATE).replace(
    "import torch\n", "import math\n\nimport torch\n", 1).replace(
    "evaluate_bpb(model, tokenizer, 4)", "evaluate_bpb(model, tokenizer, 1)") + AGAIN


def test_static_reading_passes_the_second_export():
    import audit
    assert audit.source_findings(RECALL) == []
    assert audit.seed_line(RECALL)[0] == 42


def test_the_covering_probe_sees_through_a_program_that_rewrites_its_input(tmp_path):
    """Hole 2 alone, in seconds: a program that reads the next token at every position, exported as
    audit.export_model does, rewrites its input in place (user_inputs_to_mutate): covering_probe read 0 on it
    when it handed the program the batch it then changed; now it hands copies and sees it read ahead."""
    import audit
    import prepare  # noqa: F401  covering_probe reads prepare._moved through sys.modules
    import torch

    class Ahead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Parameter(torch.randn(512, 512))

        def forward(self, idx):
            z = torch.where(idx >= (1 << 20), (idx - (1 << 20) + 1) // 2, idx)
            out = self.table[torch.cat((z[:, 1:], z[:, :1]), 1)]  # the next token's row: reads ahead
            idx.copy_(2 * z + (1 << 20))
            return out

    path = str(tmp_path / "model.pt2")
    audit.export_model(Ahead(), (2, 16), torch.device("cpu"), path)
    program = torch.export.load(path)
    assert [s.kind.name for s in program.graph_signature.output_specs][0] == "USER_INPUT_MUTATION"  # refused
    x = torch.randint(1, 500, (2, 16))
    probe = audit.covering_probe(program.module(), x.clone())  # copies: the rewrite no longer hides it
    plain = program.module()(torch.where(torch.arange(16) > 3, x + 7, x))
    assert not torch.equal(plain[:, 3], program.module()(x.clone())[:, 3])  # it does read ahead
    assert probe > audit.CAUSAL_TOLERANCE, probe


def test_the_clean_scorer_refuses_a_program_that_writes_its_input(tmp_path):
    """The clean scorer's process (--score) turns it down before it scores: it writes to its input."""
    import json
    import os
    import subprocess
    import sys

    import audit
    import torch

    class Rewrite(torch.nn.Module):
        def forward(self, idx):
            idx.add_(1)
            return torch.nn.functional.one_hot(idx, 8).float()

    path = str(tmp_path / "model.pt2")
    audit.export_model(Rewrite(), (2, 16), torch.device("cpu"), path)
    run = subprocess.run([sys.executable, audit.__file__, "--score", path, "2", "0",
                          os.pathsep.join(sys.path)], capture_output=True, text=True, timeout=300)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["val"] is None and "inputs (USER_INPUT_MUTATION)" in result["error"], run.stderr[-2000:]


def test_the_clean_scorer_probes_every_batch():
    """A program that reads the next token at every third position of rows starting with an even token (about
    one position in six): a random cut on one row misses it five times in six; the clean scorer's probe of
    every call (probed) sees it within 40 batches of 4 rows, and an honest bigram moves nothing."""
    import audit
    import prepare  # noqa: F401  probed reads prepare._causality_probe through sys.modules
    import torch

    table = torch.randn(512, 512, generator=torch.Generator().manual_seed(0))

    def some_ahead(idx):
        read = (torch.arange(idx.shape[1]) % 3 == 2) & (idx[:, :1] % 2 == 0)
        return table[torch.where(read, torch.cat((idx[:, 1:], idx[:, :1]), 1), idx)]

    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(1, 500, (4, 32), generator=gen) for _ in range(40)]
    for model, seen in ((some_ahead, True), (lambda idx: table[idx], False)):
        most = [0.0]
        call = audit.probed(model, most)
        assert all(torch.equal(call(x), model(x)) for x in batches)  # its answers, unchanged
        assert (most[0] > audit.CAUSAL_TOLERANCE) == seen, most
