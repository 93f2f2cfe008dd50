"""A cache in an old layout (the original autoresearch's, or this project's before it had data sets) is moved
into the data sets' folders by what it holds: no validation shard ever lands in a training split."""

import os
import pickle

from common import ROOT, cpu_env, run_script, shrunk_copy, write_byte_tokenizer, write_shards

import prepare


class OpensAFile:
    """Pickled, it makes its unpickler create `path`: a tokenizer.pkl that says whether anyone loaded it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def original_layout(cache, shard_indices, seed=0):
    """The original's cache: data/shard_{i:05d}.parquet and its pickled tokenizer in tokenizer/."""
    write_shards(cache / "data", [f"shard_{index:05d}.parquet" for index in shard_indices], n_docs=50,
                 seed=seed, row_group_size=None)
    (cache / "tokenizer").mkdir()
    (cache / "tokenizer" / "tokenizer.pkl").write_bytes(pickle.dumps(OpensAFile(str(cache / "unpickled"))))
    (cache / "tokenizer" / "token_bytes.pt").write_bytes(b"the original's token byte counts")


def names(parts):
    return [os.path.basename(path) for path, _, _ in parts]


def run_prepare(tmp_path, cache, endpoint, *args):
    """prepare.py with VOCAB_SIZE = 512 (the generated documents hold too few distinct words for 8192)."""
    shrunk_copy(ROOT / "prepare.py", tmp_path / "prepare.py", VOCAB_SIZE=512)
    return run_script(tmp_path, "prepare.py", *args, env=cpu_env(cache, HF_ENDPOINT=endpoint), timeout=600)


def test_the_originals_climbmix_cache_keeps_its_validation_shard_out_of_training(tmp_path, shard_server):
    cache = tmp_path / "cache"
    original_layout(cache, [0, 1, 1822, 6541, 6542])  # ClimbMix's shard 1822 is one of its training shards
    run = run_prepare(tmp_path, cache, shard_server, "--num-shards", "2")  # the default data set, FineWeb-Edu
    assert run.returncode == 0, run.stderr[-2000:]
    climbmix, fineweb = cache / "data" / "climbmix", cache / "data" / "fineweb-edu"
    assert sorted(os.listdir(climbmix)) == [f"shard_{i:05d}.parquet" for i in (0, 1, 1822, 6541, 6542)]
    assert "moved 5 shard files of an old layout (climbmix: shard_06542.parquet is one)" in run.stdout
    assert 'set DATASET = "climbmix" in prepare.py' in run.stdout
    # FineWeb-Edu was downloaded into its own folder, its validation shard from the server
    assert sorted(os.listdir(fineweb)) == [f"shard_{i:05d}.parquet" for i in (0, 1, 1822)]
    for dataset, folder in (("climbmix", climbmix), ("fineweb-edu", fineweb)):
        train = names(prepare.split_row_ranges("train", str(folder), dataset))
        assert not {"shard_06541.parquet", "shard_06542.parquet", "shard_01821.parquet"} & set(train)
        assert dataset == "climbmix" or "shard_01822.parquet" not in train
        val = names(prepare.split_row_ranges("val", str(folder), dataset))
        assert val == [prepare.shard_filename(prepare.DATASETS[dataset]["val"])]
    # the original's pickle is left where it was and never loaded; our tokenizer is trained beside it
    assert sorted(os.listdir(cache / "tokenizer")) == ["fineweb-edu-512", "token_bytes.pt", "tokenizer.pkl"]
    assert sorted(os.listdir(cache / "tokenizer/fineweb-edu-512")) == ["tokenizer.json", "tokenizer.tiktoken"]
    assert "left tokenizer.pkl and token_bytes.pt in" in run.stdout and not (cache / "unpickled").exists()


def test_a_layout_with_fineweb_edus_validation_shard_moves_to_fineweb_edu(tmp_path, monkeypatch, capsys):
    original_layout(tmp_path, [0, 1, 1822])
    monkeypatch.setattr(prepare, "CACHE_DIR", str(tmp_path))
    prepare.move_old_layout()
    assert sorted(os.listdir(tmp_path / "data")) == ["fineweb-edu"]
    train = prepare.split_row_ranges("train", str(tmp_path / "data" / "fineweb-edu"), "fineweb-edu")
    assert names(train) == ["shard_00000.parquet", "shard_00001.parquet"]
    out = capsys.readouterr().out
    assert "moved 3 shard files of an old layout (fineweb-edu: shard_01822.parquet is one)" in out
    assert "set DATASET" not in out  # it is the default data set
    assert sorted(os.listdir(tmp_path / "tokenizer")) == ["token_bytes.pt", "tokenizer.pkl"]
    assert not (tmp_path / "unpickled").exists()


def test_shards_without_a_validation_shard_are_not_guessed(tmp_path, shard_server):
    cache = tmp_path / "cache"
    original_layout(cache, [0, 1, 2])
    run = run_prepare(tmp_path, tmp_path / "cache", shard_server, "--num-shards", "2")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip() == (
        f"error: {cache}/data holds 3 shard files of an old layout but no validation shard "
        "(shard_06542.parquet: ClimbMix, shard_01822.parquet: FineWeb-Edu), so their data set is unknown: "
        f"move them by hand into {cache}/data/climbmix or {cache}/data/fineweb-edu and run prepare.py again")
    assert sorted(os.listdir(cache / "data")) == [f"shard_{i:05d}.parquet" for i in (0, 1, 2)]  # untouched


def test_shards_already_in_the_new_folder_are_kept(tmp_path, monkeypatch, capsys):
    original_layout(tmp_path, [0, 6542])
    (tmp_path / "data" / "climbmix").mkdir()
    (tmp_path / "data" / "climbmix" / "shard_00000.parquet").write_bytes(b"already there")
    monkeypatch.setattr(prepare, "CACHE_DIR", str(tmp_path))
    prepare.move_old_layout()
    assert (tmp_path / "data" / "climbmix" / "shard_00000.parquet").read_bytes() == b"already there"
    assert sorted(os.listdir(tmp_path / "data")) == ["climbmix", "shard_00000.parquet"]
    assert "moved 1 shard files" in capsys.readouterr().out


def test_the_originals_tokenizer_files_are_never_taken_for_ours(tmp_path, monkeypatch):
    original_layout(tmp_path, [])
    monkeypatch.setattr(prepare, "CACHE_DIR", str(tmp_path))
    prepare.move_old_layout()
    assert sorted(os.listdir(tmp_path / "tokenizer")) == ["token_bytes.pt", "tokenizer.pkl"]
    assert not (tmp_path / "unpickled").exists()


def test_this_projects_layout_before_data_sets_moves_into_their_folders(tmp_path, monkeypatch, capsys):
    """This project's cache before data sets (FineWeb-Edu's shards in data/, its 8192-token tokenizer in
    tokenizer/) is moved, not fetched, and the tokenizer still loads."""
    write_shards(tmp_path / "data", [f"shard_{i:05d}.parquet" for i in (0, 1, 1822)], n_docs=50, seed=0)
    write_byte_tokenizer(tmp_path / "tokenizer", 8192, prepare.SPECIAL_TOKENS, prepare.SPLIT_PATTERN)
    monkeypatch.setattr(prepare, "CACHE_DIR", str(tmp_path))
    prepare.move_old_layout()
    assert sorted(os.listdir(tmp_path / "data")) == ["fineweb-edu"]
    ours = tmp_path / "tokenizer" / "fineweb-edu-8192"
    assert sorted(os.listdir(ours)) == ["tokenizer.json", "tokenizer.tiktoken"]
    assert prepare.Tokenizer.from_directory(str(ours)).get_vocab_size() == 8192
    out = capsys.readouterr().out
    assert "moved 3 shard files of an old layout (fineweb-edu: shard_01822.parquet is one)" in out
    assert "moved 2 tokenizer files of an old layout" in out
