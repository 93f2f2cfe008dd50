"""The suite writes only to temporary folders: HOME and every cache a test touches (torch.compile's,
Jupyter's, IPython's, matplotlib's) point into one made for this session, before any test module imports
train.py.
Fixtures shared by several modules live here, and the grouping of tests for pytest-xdist (README's test
command runs the suite on two workers)."""

import os
import shutil
import tempfile

import _pytest.nodes
import pytest

# pytest-xdist's workers inherit the environment of the process that started them, whose HOME this file has
# already pointed at a temporary folder of its own: the real one travels to them in a variable
REAL_HOME = os.environ.setdefault("REAL_HOME_OF_TESTS", os.path.expanduser("~"))
TEST_HOME = tempfile.mkdtemp(prefix="autoresearch-test-home-")
os.environ["HOME"] = TEST_HOME
for name in ("AUTORESEARCH_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "IPYTHONDIR",
             "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR"):
    os.environ.pop(name, None)
os.environ["XDG_CACHE_HOME"] = os.path.join(TEST_HOME, ".cache")
os.environ["MPLCONFIGDIR"] = os.path.join(TEST_HOME, ".config", "matplotlib")
if "PYTEST_XDIST_WORKER" in os.environ:  # workers side by side: one torch thread each, as in the scripts
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the tests run (common.cpu_env)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(TEST_HOME, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """With `--dist loadgroup`, the tests that share an instance of a module's own module- or session-scoped
    fixture (tests/test_audit.py's honest night, one of its attacks) form one group, run on one worker in file
    order; every other test goes to whichever worker is free. A fixture that several groups build on (the
    attacks' bigram night) is then built once per worker that needs it."""
    if config.getoption("dist", "no") != "loadgroup" and not getattr(config.option, "loadgroup", False):
        return  # a worker sees dist "no" and pytest-xdist's own `loadgroup` (before, no test was grouped)
    for item in items:
        info = getattr(item, "_fixtureinfo", None)  # every fixture the test uses, directly or through others
        shared = sorted(name for name, defs in (info.name2fixturedefs.items() if info else ())
                        if defs[-1].scope != "function" and defs[-1].func.__module__ == item.module.__name__)
        if shared:
            group = f"{item.module.__name__}:{'+'.join(shared)}"
            item.add_marker(pytest.mark.xdist_group(group))
            if hasattr(_pytest.nodes, "coerce_node_id"):  # pytest 9.2 reads a test's id from _id, which
                item._id = _pytest.nodes.coerce_node_id(f"{item.nodeid}@{group}")  # xdist 3.8 cannot set


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


@pytest.fixture(scope="session")
def bigrams(tmp_path_factory):
    """tests/test_audit.py's night of attacks, built once a worker for every module of attacks (as a module's
    own fixture it was built again at each switch between modules: ~180 s of the suite)."""
    from test_audit import make_bigrams

    return make_bigrams(tmp_path_factory)
