"""The suite writes only to temporary folders: HOME and every cache a test touches (torch.compile's,
Jupyter's, IPython's, matplotlib's) point into one made for this session, before any test module imports
train.py.
Fixtures shared by several modules live here."""

import os
import shutil
import tempfile

import pytest

REAL_HOME = os.path.expanduser("~")
TEST_HOME = tempfile.mkdtemp(prefix="autoresearch-test-home-")
os.environ["HOME"] = TEST_HOME
for name in ("AUTORESEARCH_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "IPYTHONDIR",
             "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR"):
    os.environ.pop(name, None)
os.environ["XDG_CACHE_HOME"] = os.path.join(TEST_HOME, ".cache")
os.environ["MPLCONFIGDIR"] = os.path.join(TEST_HOME, ".config", "matplotlib")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(TEST_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def shard_server(tmp_path_factory):
    """Generated FineWeb-style shards 0, 1 and the validation shard 1822, served on 127.0.0.1 as the hub
    does; only read, so one server serves the whole session."""
    from common import serve_folder, write_shards

    root = tmp_path_factory.mktemp("server")
    write_shards(root / "datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main",
                 [f"shard_{index:05d}.parquet" for index in (0, 1, 1822)], n_docs=1200, seed=1234)
    with serve_folder(root) as url:
        yield url
