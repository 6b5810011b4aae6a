"""Every chapter runs at smoke scale; bad parameter values stop it at the first cell with the allowed values."""
import pytest

from lossbook.publish.build import available_chapters, run_chapter

pytestmark = pytest.mark.notebooks


@pytest.mark.parametrize("chapter", available_chapters())
def test_chapter_runs_at_smoke_scale(chapter, tmp_path, data_available):
    import nbformat

    out = run_chapter(chapter, "smoke", out_dir=tmp_path)
    nb = nbformat.read(out, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the chapter shows no figure"
    assert "<code>smoke</code>" in str(outputs[0].get("data", {}).get("text/html", "")), "no banner with the scale on top"


def test_bad_parameters_stop_the_notebook_at_its_first_cell(tmp_path):
    """Straight through papermill (no runner in between): a bad value or an unknown name stops the
    chapter at its check cell, with the allowed values."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    from lossbook.params import ParameterError
    from lossbook.publish.build import NBS_DIR, _kernel_env

    chapter = available_chapters()[0]
    for params, msg in [({"scale": "huge"}, "parameter scale='huge' is not allowed; allowed values: 'smoke', 'cpu', 'paper'"),
                        ({"sede": 1}, f"unknown parameter 'sede' of chapter {chapter}; allowed: scale, seed")]:
        with pytest.raises(PapermillExecutionError) as err, _kernel_env():
            pm.execute_notebook(str(NBS_DIR / f"{chapter}.ipynb"), str(tmp_path / "out.ipynb"), parameters=params,
                                cwd=str(NBS_DIR), progress_bar=False, kernel_name="python3")
        assert msg in str(err.value)
        assert err.value.exec_count <= 3  # parameters, injected parameters, check
        (line,) = err.value.traceback  # the message alone, no traceback above it
        assert line.startswith(f"ParameterError: {msg}") and line.endswith("did you mean 'seed'?") == ("sede" in msg)
    # the runner checks before it starts a kernel
    with pytest.raises(ParameterError, match="parameter scale='huge' is not allowed"):
        run_chapter(chapter, "huge", out_dir=tmp_path)


def test_long_tables_are_closed_short_ones_shown(monkeypatch):
    import pandas as pd

    from lossbook.publish import notebook as nb

    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj.data))
    nb.table(pd.DataFrame({"a": range(16)}), "settings")
    nb.table(pd.DataFrame({"a": range(15)}).style.hide(axis="index"))
    assert shown[0].startswith("<details><summary>Show all 16 settings</summary>") and "overflow-x:auto" in shown[0]
    assert not shown[1].startswith("<details>") and shown[1].count("<tr") == 16  # header and 15 rows
