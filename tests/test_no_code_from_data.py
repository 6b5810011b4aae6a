"""Opening a results folder never runs code: model checkpoints are read as plain data, search checkpoints
are JSON, result arrays are read without pickle. Each test crafts a file whose pickle would create a
marker file when unpickled, and checks that it is refused in one line and the marker never appears."""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle

import numpy as np
import pytest
import torch


class Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


def test_the_payload_is_live(tmp_path):
    """Control: the crafted files below do run code when read the unsafe way, so the tests that refuse
    them refuse something real."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()
    marker.unlink()
    path = tmp_path / "model.pt"
    torch.save({"config": {}, "model": Payload(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_model_checkpoint_with_a_pickle_payload_is_refused(tmp_path):
    from lossbook.config import train_config
    from lossbook.core.train import checkpoint_path, load_model

    marker = tmp_path / "ran"
    path = checkpoint_path(train_config("mnist", "net1", "st", "smoke"), tmp_path)
    path.parent.mkdir(parents=True)
    torch.save({"config": {}, "model": Payload(marker)}, path)
    with pytest.raises(ValueError) as exc:
        load_model("mnist", "net1", "st", "smoke", root=tmp_path)
    assert "unreadable checkpoint (it holds objects other than plain data, which could run code)" in _one_line(exc)
    assert not marker.exists()


def test_a_search_checkpoint_is_json_and_a_pickle_in_its_place_is_refused(tmp_path):
    from lossbook.search.engine import checkpoint_path, load_checkpoint

    marker = tmp_path / "ran"
    path = checkpoint_path(tmp_path, 0)
    assert path.name == "run-0.ckpt.json"
    path.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ValueError) as exc:
        load_checkpoint(path, {"seed": 0})
    assert "unreadable search checkpoint" in _one_line(exc) and "a checkpoint is plain JSON" in str(exc.value)
    assert not marker.exists()
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="a JSON list, not an object"):
        load_checkpoint(path, {"seed": 0})


def test_an_old_pickle_checkpoint_beside_a_run_is_never_read(tmp_path, data_available, monkeypatch):
    from lossbook.search import runs as SR
    from lossbook.search import settings as SS

    marker = tmp_path / "ran"
    setting = SS.make_setting("mnist", "net1", "st", "linf", 0.05)
    folder = SR.search_dir(setting, "smoke", tmp_path)
    folder.mkdir(parents=True)
    (folder / "run-0.ckpt.pkl").write_bytes(pickle.dumps(Payload(marker)))
    class Reached(Exception):
        pass

    def reached(*a, **k):
        raise Reached

    monkeypatch.setattr(SR, "run_search", reached)
    with pytest.raises(Reached):  # the run starts anew: the old pickle is left alone, unread
        SR.search_setting(setting, "smoke", runs=1, root=tmp_path, progress=False)
    assert not marker.exists()


def test_result_arrays_with_objects_are_refused_even_with_a_matching_record(tmp_path):
    from lossbook import store

    marker = tmp_path / "ran"
    path = tmp_path / "outcomes.npz"
    buf = io.BytesIO()
    np.savez(buf, broken=np.array([Payload(marker)], dtype=object))
    path.write_bytes(buf.getvalue())
    data = path.read_bytes()
    # whoever writes a file can write its record too: the record is no defence, the reader must be
    store.record_path(path).write_text(json.dumps({"kind": "arrays", "request": {}, "rows": None, "bytes": len(data),
                                                   "sha256": hashlib.sha256(data).hexdigest(), "code": "x"}))
    with pytest.raises(ValueError, match="allow_pickle=False"):
        store.load(path)
    assert not marker.exists()


def test_a_stored_formula_is_checked_before_deap_parses_it():
    """DEAP's ``PrimitiveTree.from_string`` evaluates tokens it does not know; a formula read from a search
    checkpoint must be refused, with one line, before it gets there."""
    from lossbook.search.engine import primitive_set, tree_from_formula

    pset = primitive_set()
    assert str(tree_from_formula("Add(Max(q), Neg(Sum(Mul(p, q))))", pset)) == "Add(Max(q), Neg(Sum(Mul(p, q))))"
    for bad in ("9**9**9**9", "__import__", "Max(open)"):
        with pytest.raises(ValueError, match="formula"):
            tree_from_formula(bad, pset)
