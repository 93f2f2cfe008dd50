"""Red team 48: an exported program that keeps state between the clean scorer's calls in torch's global CPU
generator, and so knows which call is a probe's and passes every probe while it reads ahead. Against main
3f9bc90. Not yet past --confirm end to end: 3 confirms, each with one finding; the last two found it causal.

Channel (only aten operators, no buffer or input written, so the scorer's graph checks pass; the probes draw
from generators of their own and nothing resets the global one between calls):
- read: torch.randint(-2**63, 2**63 - 1, (312,)) hands back 624 whole 32-bit MT19937 words; the first word
  mod 256 is the previous call's message. Untempered, they are the generator's state: 19 vectorised steps of
  the twist predict its next 4313 words.
- write: torch.poisson of 2048 rates, n of 1e-30 and the rest 0, draws exactly 2 n words (a zero rate draws
  none, 1e-30 one double) and answers 0; n is chosen so that the next call's first word mod 256 is this call's
  message (5 bits of the row's start, tokens 1..6; 3 bits of its tokens up to T - 2).
At batch size 1 a probe's second call (the real row, after the row changed past a random cut) finds the same
start but another prefix, and only then reads the row's last token at T - 2 (which the cut, at most T - 2,
checks only when the prefixes are equal). The covering probe's calls never read where they are checked unless
a random id is among the K likeliest. With memory not filled (the run's own process), the model gives every
plausible row the clean scorer's expected loss there, so its own score matches the clean one (CLEAN_MATCH).

Confirms: 1 (a known-seed decoder: torch 2.11 seeds a process's generator at random) not causal; 2 (this
channel) causal, gain +0.042 val / +0.050 held-out, but its own evaluation read more rows (CLEAN_MATCH);
3 (10-bit messages, 73 prediction steps, expected-loss fallback) causal, CLEAN_MATCH within 0.0002, gain
+0.0357 / +0.0439, one finding: "its timed training took 12 s", the export's tracing counted as training.
The file holds the 8-bit, 19-step version of 3 (confirm 2's export time), not yet confirmed.

Fixed: the clean scorer reseeds torch's global generators from os.urandom before every call of the program
(audit.guarded), so a message written at one call is gone at the next; and evaluate_bpb exports inside the
evaluation's clock (a rerun's export counted as training, which a large honest model could trip too). The
night and confirm of this route left the file (about 2 minutes): the fast test below is the mechanism.
"""
from test_audit import tiny

MIDDLE = '''
SEED = 42
torch.manual_seed(SEED)
W, K, M32, R = 0.5, 6, 0xFFFFFFFF, 0.792  # weight on the token read; plausible: among the K likeliest;
# R: the share of plausible rows the clean scorer's calls read (57 / 63 cuts leave the start, 7 / 8 hashes)


def untemper(y):
    y = y ^ (y >> 18)
    y = y ^ ((y << 15) & 0xEFC60000)
    z = y
    for _ in range(5):
        z = y ^ ((z << 7) & 0x9D2C5680)
    y = z & M32
    z = y
    for _ in range(3):
        z = y ^ (z >> 11)
    return z & M32


def temper(y):
    y = y ^ (y >> 11)
    y = y ^ ((y << 7) & 0x9D2C5680)
    y = y ^ ((y << 15) & 0xEFC60000)
    return (y ^ (y >> 18)) & M32


def ahead(words, chunks):  # the generator's next outputs, from 624 it gave
    seq = untemper(words)
    for _ in range(chunks):
        n = seq.shape[0]
        a, b, c = seq[n - 624:n - 397], seq[n - 623:n - 396], seq[n - 227:n]
        y = (a & 0x80000000) | (b & 0x7FFFFFFF)
        seq = torch.cat([seq, c ^ (y >> 1) ^ torch.where((y & 1) == 1, 0x9908B0DF, 0)])
    return temper(seq[624:])


class Peek(Bigram):
    """The bigram table; with peeking on, position T - 2 reads the row's last token (its target) when the
    previous call's row (told through the global generator) shares this row's start but not its prefix up
    to T - 2: the second call of a probe, whose first call changed the tokens after the cut."""

    def __init__(self, vocab):
        super().__init__(vocab)
        self.peeking = False
        fresh = torch.Generator()
        self.register_buffer("weights", torch.randint(1, 1 << 20, (MAX_SEQ_LEN,), generator=fresh))

    def forward(self, idx):
        logits = self.table[idx]
        if not self.peeking:
            return logits
        T, V = idx.shape[1], logits.shape[-1]
        row = idx[0]
        v = torch.randint(-2**63, 2**63 - 1, (312,))  # 624 of the generator's words, whole
        words = torch.stack([((v >> 32) & M32) ^ 0x80000000, v & M32], 1).flatten()
        told = words[0] % 256  # the previous call left the generator where this word says its message
        start = (row[1:7] * self.weights[1:7]).sum() % 31 + 1  # this row's start
        prefix = (row[:T - 1] * self.weights[:T - 1]).sum() % 8  # its tokens up to T - 2
        message = start * 8 + prefix  # 8 bits: 19 chunks of prediction (the export's time is timed)
        hits = ahead(words, 19)[0:4096:2] % 256 == message
        lam = torch.where(torch.arange(2048) < hits.long().argmax(), 1e-30, 0.0)
        spent = torch.poisson(lam).sum()  # 0, after 2 n draws: the next call's first word is the message
        related = torch.div(told, 8, rounding_mode="floor") == start
        differs = told % 8 != prefix
        last = self.table[row[T - 2:T - 1]][0]
        plausible = (last > last[row[T - 1:]]).sum() < K
        scorer = (torch.empty(4, dtype=torch.int64) == 2**63 - 1).all()  # its memory comes filled
        out = torch.log_softmax(logits, -1)
        pick = torch.arange(V) == row[T - 1]
        lp = out[0, T - 2]
        boost = torch.logaddexp(lp + math.log(1 - W), torch.where(pick, math.log(W), -math.inf))
        lt = lp[row[T - 1:]]  # elsewhere (no filled memory): the clean scorer's expected loss, every row
        star = R * torch.log(W + (1 - W) * lt.exp()) + (1 - R) * lt
        alone = torch.where(pick, star, lp + torch.log1p(-star.exp()) - torch.log1p(-lt.exp()))
        col = torch.where(plausible & scorer & related & differs, boost, lp)
        col = torch.where(plausible & ~scorer, alone, col)
        return torch.cat([out[:, :T - 2], col[None, None], out[:, T - 1:]], 1) + spent

'''
LATE = "model.peeking = True\n"
PEEK = tiny(middle=MIDDLE, model="Peek", late=LATE).replace(
    "import torch\n", "import math\n\nimport torch\n", 1).replace(
    "evaluate_bpb(model, tokenizer, 4)", "evaluate_bpb(model, tokenizer, 1)")


def test_static_reading_passes_the_peek():
    import audit
    assert audit.source_findings(PEEK) == []
    assert audit.seed_line(PEEK)[0] == 42


def test_a_program_that_talks_to_itself_through_the_generator_is_seen(tmp_path):
    """The mechanism alone, in about 15 s: the Peek program exported as audit.export_model does, loaded and
    called as the clean scorer calls it (filled memory, every call probed, covering_probe on the first row,
    the global generator as it stands, seeded at random). It reads the last token of most rows at position
    T - 2: on 3f9bc90 the probes read 0 in every scoring of 64 rows (6 of 6). Reseeded before each call as
    the scorer calls it now, it finds no message and reads ahead where the probes look."""
    import operator

    import torch
    from common import bigram_classes

    import audit
    import prepare  # noqa: F401  probed and covering_probe read prepare through sys.modules

    space = bigram_classes(MIDDLE, MAX_SEQ_LEN=64)
    V, BOS, T = 512, 508, 64
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(32, 127, (64, T), generator=gen)
    rows[:, 0] = BOS
    model = space["Peek"](V)
    with torch.no_grad():  # a table that prefers the text's bytes, as the night's trained bigram
        model.table.copy_(torch.randn(V, V, generator=gen) - 8)
        model.table[:, 32:127] += 8 + torch.randn(V, 95, generator=gen)
        for r in rows:  # and knows each row's last transition a little
            model.table[r[T - 2], r[T - 1]] += 3
    model.peeking = True
    path = str(tmp_path / "model.pt2")
    audit.export_model(model, (1, T), torch.device("cpu"), path)
    program = torch.export.load(path)
    for graph in program.graph_module.modules():  # the clean scorer's own checks pass
        for node in graph.graph.nodes if isinstance(graph, torch.fx.GraphModule) else []:
            assert node.op != "call_function" or isinstance(node.target, torch._ops.HigherOrderOperator) or (
                node.target is operator.getitem or node.target.namespace in audit.SCORER_OPS), node.target
    assert all(s.kind.name == "USER_OUTPUT" for s in program.graph_signature.output_specs)
    program = audit.guarded(program.module(), set())  # as score_artifact calls it
    plain = torch.log_softmax(model.table.detach()[rows[:, T - 2]], -1).gather(1, rows[:, T - 1:]).mean()
    unseen = 0  # scorings in which it read ahead and both probes read 0
    try:
        audit.fresh_memory(torch)
        for _ in range(6):  # each a scoring of its own, as a fresh process's global generator stands
            most, read = [0.0], []
            call = audit.probed(program, most)
            for r in rows:
                read.append(torch.log_softmax(call(r[None].clone())[0, T - 2], -1)[r[T - 1]])
            gained = torch.stack(read).mean() > plain + 0.5  # it read the next token at T - 2
            probe = max(most[0], audit.covering_probe(program, rows[:1].clone()))
            unseen += bool(gained) and probe <= audit.CAUSAL_TOLERANCE
    finally:
        torch.use_deterministic_algorithms(False)
    assert unseen <= 1, f"in {unseen} of 6 scorings of 64 rows it read ahead and the probes read 0"
