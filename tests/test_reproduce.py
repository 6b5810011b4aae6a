"""``python -m lossbook reproduce``: the chain's status, resume and estimate, on a fresh results folder."""
import os
import subprocess
import sys

import pytest


def _lossbook(tmp_path, *args):
    env = {**os.environ, "LOSSBOOK_RESULTS": str(tmp_path), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "lossbook", *args], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_dry_run_on_nothing_lists_every_unit_as_remaining_and_runs_nothing(tmp_path, data_available):
    got = _lossbook(tmp_path, "reproduce", "--scale", "smoke", "--dry-run")
    assert "models    0/8 done" in got and "eps       0/24 done" in got and "(0/48 GP runs)" in got
    assert "chapters  0/4 done" in got and "61 units of kinds with nothing finished yet" in got
    assert not (tmp_path / "models").exists()  # nothing was computed


def test_a_finished_step_is_skipped_and_its_times_estimate_the_rest(tmp_path, data_available):
    got = _lossbook(tmp_path, "reproduce", "--scale", "smoke", "--datasets", "mnist", "--steps", "models", "eps")
    assert "[models 4/4] mnist-net2-at" in got and "[eps 12/12] mnist-net2-at-l2" in got
    last = [line for line in got.splitlines() if line.startswith(("models ", "eps "))][-2:]  # after the last step
    assert last == ["models    4/4 done: done", "eps       12/12 done: done"]
    again = _lossbook(tmp_path, "reproduce", "--scale", "smoke", "--datasets", "mnist", "--steps", "models", "eps")
    assert "[models" not in again and "[eps" not in again  # nothing redone
    # the grid's runs of MNIST are not measured yet: counted, not guessed
    plan = _lossbook(tmp_path, "reproduce", "--scale", "smoke", "--datasets", "mnist", "--dry-run")
    assert "grid      0/12 done (0/24 GP runs): 12 not yet measured" in plan


def test_bad_choices_name_the_allowed_values():
    from lossbook.publish.reproduce import chain

    with pytest.raises(ValueError, match="unknown step 'train'; allowed: 'models', 'eps', 'grid', 'chapters', 'book'"):
        chain("smoke", steps=("train",))
    with pytest.raises(ValueError, match="unknown scale 'gpu'"):
        chain("gpu")
