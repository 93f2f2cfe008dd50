"""Red team 23's routes, each closed: the probe's first answer rewritten in place once the model saw the
second call (the probe now compares a copy of it), and a hidden model trained inside the evaluation, on
batches drawn there (the record counts them, and the evaluation's seconds). Each asserts the secure
outcome."""
# ruff: noqa: F811
from test_audit import clone_of, findings, tiny  # noqa: F401
from test_redteam22 import WINDOW_MODEL

# 1. Logits that peek at the next input token; at the probe's second call the model writes causal logits
#    into the tensor it returned for the first
INPLACE = '''

class Peek(Bigram):
    """The bigram table, plus BONUS at the next input token; the probe's first answer rewritten in place."""
    def __init__(self, vocab):
        super().__init__(vocab)
        self.peeking = False
        self.last = []

    def forward(self, idx):
        honest = self.table[idx]
        if not self.peeking:
            return honest
        if self.last and self.last[0].shape == idx.shape and bool(
                ((self.last[0] == idx).long().cumprod(1).sum(1) >= 4).any()):
            self.last[1].copy_(self.table[self.last[0]])  # the probe's `changed`, made causal after the fact
            self.last = []
            return honest
        ahead = torch.cat([idx[:, 1:], idx[:, :1]], 1)
        bonus = torch.nn.functional.one_hot(ahead, honest.size(-1)).to(honest.dtype)
        bonus[:, -1] = 0
        logits = honest + BONUS * bonus
        self.last = [idx.clone(), logits]
        return logits

'''


def test_an_answer_rewritten_after_the_probe_compared_it_is_rejected(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt23inplace")
    source = tiny(INPLACE.replace("BONUS", "6.0"), "Peek", late="model.peeking = True\n")
    commit, code, out, row = n.attack("sharper bigram", source)
    assert code == 1 and "evaluation rejected: the model is not causal" in out


# 2. The scored model's first call of the evaluation trains a hidden model (in a plain list: not among its
#    weights) on fresh training batches, which answers from then on
INSIDE = WINDOW_MODEL + '''

class Inside(Bigram):
    """The bigram, whose first call of the evaluation trains a hidden Trigram, which answers from then on."""
    def __init__(self, vocab):
        super().__init__(vocab)
        self.box = [Trigram(vocab)]
        self.evaluating = False
        self.trained = False

    def forward(self, idx):
        if not self.evaluating:
            return self.table[idx]
        if not self.trained:
            self.trained = True
            with torch.enable_grad():
                more = make_dataloader(tokenizer, 256, MAX_SEQ_LEN, "train")
                _until = time.monotonic() + SECONDS
                while time.monotonic() < _until:
                    bx, by, _ = next(more)
                    sgd(self.box[0], bx, by, 50)
                more.close()
        return self.box[0](idx)

'''


def test_training_inside_the_evaluation_is_named(bigrams, tmp_path_factory):
    n = clone_of(bigrams, tmp_path_factory, "rt23inside")
    source = tiny("import time\n" + INSIDE.replace("SECONDS", "6"), "Inside",
                  late="model.evaluating = True\n")
    commit, code, out, row = n.attack("trigram head", source)
    assert code == 0 and n.records()[-1]["train_batches_in_evaluation"] > 0
    assert any(line.startswith(f"{commit}: it drew") for line in findings(n.audit()))
