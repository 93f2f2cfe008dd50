"""prepare.py's command line: --help and wrong arguments or settings answer before torch is imported."""

import pytest

from common import ROOT, cpu_env, run_script, shrunk_copy

# prepare.py run as a script, with torch made unimportable: reaching `import torch` fails loudly
WITHOUT_TORCH = """import runpy, sys
sys.modules["torch"] = None
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_without_torch(folder, *args):
    return run_script(folder, "-c", WITHOUT_TORCH, "prepare.py", *args, env=cpu_env(), timeout=60)


def test_help_answers_before_torch_is_imported():
    result = run_without_torch(ROOT, "--help")
    assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]
    for word in ("--num-shards", "--download-workers", "--dataset", "AUTORESEARCH_CACHE_DIR", "HF_ENDPOINT"):
        assert word in result.stdout


@pytest.mark.parametrize("args,error", [
    (["--num-shards", "0"], "--num-shards must be between 1 and 1821 for fineweb-edu, or -1 for all"),
    (["--num-shards", "ten"], "argument --num-shards: invalid int value: 'ten'"),
    (["--dataset", "fineweb"], "argument --dataset: invalid choice: 'fineweb'"),
    (["--download-workers", "0"], "--download-workers must be at least 1"),
])
def test_a_wrong_argument_answers_before_torch_is_imported(args, error):
    result = run_without_torch(ROOT, *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.splitlines()[-1].startswith(f"prepare.py: error: {error}")


def test_a_misspelt_dataset_names_the_choices_in_one_line(tmp_path):
    shrunk_copy(ROOT / "prepare.py", tmp_path / "prepare.py", DATASET='"fineweb"')
    expected = ("error: DATASET = 'fineweb' in prepare.py is not a data set here: choose one of fineweb-edu, "
                "climbmix, tinystories")
    for result in (run_without_torch(tmp_path, "--help"),  # as a script, and imported as train.py does
                   run_script(tmp_path, "-c", "import prepare", env=cpu_env())):
        assert result.returncode == 1 and result.stderr.strip() == expected, result.stderr[-2000:]
