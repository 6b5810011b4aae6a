"""The results store: atomic writes with a record, validated reads, reuse only for the same request."""
import numpy as np
import pandas as pd
import pytest

from lossbook import store


def test_round_trip_of_each_kind(tmp_path):
    df = pd.DataFrame({"loss": ["ce", "cw"], "risk": [0.5, 0.625]})
    arrays = {"broken": np.array([[True, False], [False, False]]), "eps": np.array([0.1])}
    store.save(tmp_path / "t.csv", df, {"eps": 0.1})
    store.save(tmp_path / "o.json", {"formula": "p", "fit": 0.5}, {"eps": 0.1})
    store.save(tmp_path / "a.npz", arrays, {"eps": 0.1})
    pd.testing.assert_frame_equal(store.load(tmp_path / "t.csv", {"eps": 0.1}), df)
    assert store.load(tmp_path / "o.json") == {"formula": "p", "fit": 0.5}
    got = store.load(tmp_path / "a.npz")
    assert got.keys() == arrays.keys() and all(np.array_equal(got[k], arrays[k]) for k in arrays)
    rec = store.record(tmp_path / "t.csv")
    assert rec["kind"] == "table" and rec["rows"] == 2 and rec["request"] == {"eps": 0.1} and rec["code"]
    assert not list(tmp_path.glob("*.tmp"))
    assert sorted(p.name for p, _ in store.records(tmp_path)) == ["a.npz", "o.json", "t.csv"]


def test_damaged_files_and_missing_records_are_named(tmp_path):
    path = store.save(tmp_path / "t.csv", pd.DataFrame({"x": range(10)}), {"n": 10})
    path.write_text("\n".join(path.read_text().splitlines()[:5]) + "\n")
    with pytest.raises(store.ResultError, match=r"t.csv: content does not match its record \(10 rows, 22 bytes written, "
                                                r"10 now\): the file was truncated or edited; recompute it"):
        store.load(path)
    (tmp_path / "bare.csv").write_text("x\n1\n")
    with pytest.raises(store.ResultError, match=r"bare.csv: no record bare.csv.record beside it"):
        store.load(tmp_path / "bare.csv")
    store.record_path(path).write_text("{not json")
    with pytest.raises(store.ResultError, match=r"t.csv.record: unreadable record"):
        store.load(path)
    with pytest.raises(FileNotFoundError, match="nothing.csv: no such result"):
        store.load(tmp_path / "nothing.csv")


def test_another_request_is_never_reused(tmp_path):
    path = store.save(tmp_path / "r.json", {"risk": 0.7}, {"setting": {"eps": 0.15, "norm": "linf"}, "seed": 5})
    with pytest.raises(store.ResultError, match=r"r.json: made for another request \(setting.eps=0.15 \(asked 0.07\)\)"):
        store.load(path, {"setting": {"eps": 0.07, "norm": "linf"}, "seed": 5})
    assert store.matches(path, {"setting": {"eps": 0.15, "norm": "linf"}, "seed": 5})
    assert not store.matches(path, {"setting": {"eps": 0.07, "norm": "linf"}, "seed": 5})
    calls = []
    got = store.cached(path, {"setting": {"eps": 0.07, "norm": "linf"}, "seed": 5},
                       lambda: calls.append(1) or {"risk": 0.65})
    assert got == {"risk": 0.65} and calls == [1]
    assert store.cached(path, {"setting": {"eps": 0.07, "norm": "linf"}, "seed": 5}, lambda: 1 / 0) == {"risk": 0.65}


def test_a_failed_recomputation_leaves_the_old_result(tmp_path):
    path = store.save(tmp_path / "r.csv", pd.DataFrame({"risk": [0.7]}), {"eps": 0.1})

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.cached(path, {"eps": 0.1}, interrupted, recompute=True)
    assert store.load(path, {"eps": 0.1})["risk"].tolist() == [0.7]


def _write_many(args):
    folder, who = args
    for i in range(40):
        store.save(folder / "shared.csv", pd.DataFrame({"who": [who] * (1 + who), "i": [i] * (1 + who)}), {"what": "x"})
    return who


def test_concurrent_writers_of_one_file_never_collide_and_file_matches_record(tmp_path):
    # the cluster's workers write accuracies.csv at the same time: a shared temporary name made one fail
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(3) as pool:
        assert sorted(pool.map(_write_many, [(tmp_path, w) for w in range(3)])) == [0, 1, 2]
    got = store.load(tmp_path / "shared.csv", {"what": "x"})  # the file and its record belong together
    assert len(got) == 1 + got["who"].iloc[0] and got["i"].iloc[0] == 39
    assert not list(tmp_path.glob("*.tmp"))


def test_saving_an_identical_result_leaves_file_and_record_alone(tmp_path):
    df = pd.DataFrame({"a": [1, 2]})
    store.save(tmp_path / "t.csv", df, {"eps": 0.1})
    before = (tmp_path / "t.csv.record").read_text()
    (tmp_path / "t.csv.record").write_text(before.replace('"written": "', '"written": "old-'))
    store.save(tmp_path / "t.csv", df, {"eps": 0.1})
    assert '"written": "old-' in (tmp_path / "t.csv.record").read_text()
    store.save(tmp_path / "t.csv", df, {"eps": 0.2})  # another request: rewritten
    assert store.record(tmp_path / "t.csv")["request"] == {"eps": 0.2}
    store.save(tmp_path / "t.csv", pd.DataFrame({"a": [1, 3]}), {"eps": 0.2})  # other content: rewritten
    assert store.load(tmp_path / "t.csv")["a"].tolist() == [1, 3]


def _add_rows(args):
    folder, who = args
    for i in range(15):
        store.update(folder / "rows.csv", {"what": "rows"},
                     lambda cur: pd.concat([cur, pd.DataFrame({"who": [who], "i": [i]})]) if cur is not None
                     else pd.DataFrame({"who": [who], "i": [i]}))
    return who


def test_concurrent_updates_keep_every_row(tmp_path):
    # two grid processes add their settings' rows to one summary.csv: neither may drop the other's
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(3) as pool:
        pool.map(_add_rows, [(tmp_path, w) for w in range(3)])
    got = store.load(tmp_path / "rows.csv", {"what": "rows"})
    assert sorted(zip(got["who"], got["i"])) == [(w, i) for w in range(3) for i in range(15)]


def test_update_starts_afresh_from_a_result_of_another_request(tmp_path):
    store.save(tmp_path / "t.csv", pd.DataFrame({"a": [1]}), {"eps": 0.1})
    seen = []
    store.update(tmp_path / "t.csv", {"eps": 0.2}, lambda cur: seen.append(cur) or pd.DataFrame({"a": [2]}))
    assert seen == [None] and store.load(tmp_path / "t.csv", {"eps": 0.2})["a"].tolist() == [2]


def test_the_code_stamp_is_dirty_for_changed_code_only(tmp_path):
    """A background run rewriting a tracked result file leaves the stamp clean; a changed or new module, which
    can change results, does not; an ignored bytecode cache does not count."""
    import subprocess

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "lossbook").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "lossbook" / "m.py").write_text("x = 1\n")
    (tmp_path / "results" / "r.csv").write_text("a\n1\n")
    (tmp_path / ".gitignore").write_text("__pycache__/\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    rev = store.git_stamp(tmp_path)
    assert len(rev) >= 7 and not rev.endswith("-dirty")
    (tmp_path / "results" / "r.csv").write_text("a\n2\n")
    (tmp_path / "results" / "new.csv").write_text("a\n3\n")
    (tmp_path / "lossbook" / "__pycache__").mkdir()
    (tmp_path / "lossbook" / "__pycache__" / "m.pyc").write_bytes(b"\0")
    assert store.git_stamp(tmp_path) == rev
    (tmp_path / "lossbook" / "new.py").write_text("y = 1\n")
    assert store.git_stamp(tmp_path) == rev + "-dirty"
    (tmp_path / "lossbook" / "new.py").unlink()
    assert store.git_stamp(tmp_path) == rev
    (tmp_path / "lossbook" / "m.py").write_text("x = 2\n")
    assert store.git_stamp(tmp_path) == rev + "-dirty"
    assert store.git_stamp(tmp_path / "results" / "no-such-folder") == ""
