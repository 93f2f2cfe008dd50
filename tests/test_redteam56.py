"""Red team 56: two halves of an attack on the fixes of red team 55, neither carried to a confirm.

1. The record's artifact_sha256 was forgeable: train.py made the export's path a named pipe and forked a child
   before evaluate_bpb. torch.export.save wrote the real program into the pipe (the child read it), then
   export_model hashed the path and read back whatever bytes the child wrote. So the record held the sha256
   of a file of the night's choosing, and a rewritten program passed the confirm's comparison. (The static
   reading names os.mkfifo, os.fork, os._exit and open().)
2. aten.max_pool2d_with_indices_backward is core ATen and adds its gradient into its output at indices it
   never checks: index 16 of a 16-float output writes past it, 10**10 crashes the process. A model calling it
   exported as it was, and the clean scorer ran it. No channel between calls was built with it.

Fixed: export_model saves the program to memory, hashes those bytes and writes them to a new file (opened
exclusive: a pipe or anything else already at the path fails the export); the confirm turns down an artifact
that is not a plain file (a pipe would hold the scorer); the clean scorer refuses core ATen's gradient
operators (`*_backward`), which no inference program needs. Measured on 5335aec in process (2-core CPU).
"""
import contextlib
import os
import subprocess
import sys
import threading

import pytest
import torch
from common import ROOT

import audit


class Table(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.e = torch.nn.Embedding(64, 64)

    def forward(self, idx):
        return self.e(idx)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX only")
def test_the_export_writes_a_new_file_and_hashes_what_it_wrote(tmp_path):
    path = str(tmp_path / "model.pt2")
    digest = audit.export_model(Table(), (2, 8), torch.device("cpu"), path)
    assert digest == audit.file_sha256(path)  # the bytes saved, as written
    pipe = str(tmp_path / "pipe.pt2")
    os.mkfifo(pipe)  # what red team 56's train.py made of the path before evaluate_bpb
    code = (f"import sys, torch; sys.path[:0] = {sys.path!r}; import audit, test_redteam56 as t; "
            f"print(audit.export_model(t.Table(), (2, 8), torch.device('cpu'), {pipe!r}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split()[-1:] == ["None"], done.stderr[-800:]  # 5335aec's waited on the pipe
    assert open(pipe + ".failed").read().startswith("FileExistsError")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX only")
def test_the_confirm_turns_down_an_artifact_that_is_not_a_plain_file(tmp_path):
    """A pipe left at the artifact's path would hold the scorer's read until a writer came."""
    path = str(tmp_path / "model.pt2")
    os.mkfifo(path)
    run = dict(artifact=path, record=dict(batch_size=2, artifact_sha256="0" * 64))
    frozen = {name: (ROOT / name).read_bytes() for name in ("prepare.py", "audit.py")}
    result = []
    worker = threading.Thread(target=lambda: result.append(audit.clean_score(
        run, dict(python=sys.executable, path=sys.path), frozen, 0)), daemon=True)
    worker.start()
    worker.join(120)
    for _ in range(60):  # a scorer the pipe holds (no check) is let go: each open of it reads an end of file
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(1)
    assert result == [dict(error="its exported model is not a plain file (a pipe holds the scorer: red team "
                                 "56)")]


class PoolWriter(torch.nn.Module):
    """Writes past a fresh 16-float tensor at index 16, an index taken from the batch."""
    def __init__(self):
        super().__init__()
        self.e = torch.nn.Embedding(64, 64)

    def forward(self, idx):
        ind = (idx[:1, :4] * 0 + 16).reshape(1, 1, 2, 2)
        grad_input = torch.ops.aten.max_pool2d_with_indices_backward(
            torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 4, 4), [2, 2], [2, 2], [0, 0], [1, 1], False, ind)
        return self.e(idx) + grad_input.sum()


def test_the_clean_scorer_refuses_core_atens_gradient_operators(tmp_path):
    path = str(tmp_path / "model.pt2")
    audit.export_model(PoolWriter(), (4, 16), torch.device("cpu"), path)
    assert audit.core_aten(torch.export.load(path))[1] == {"aten.max_pool2d_with_indices_backward.default"}
