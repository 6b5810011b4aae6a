"""Every chapter runs at smoke scale; bad parameter values stop it at the first cell with the allowed values."""
import pytest

from lossbook.book import available_chapters, run_chapter

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


def test_unknown_parameter_value_fails_at_the_first_cell(tmp_path):
    from papermill.exceptions import PapermillExecutionError

    chapter = available_chapters()[0]
    with pytest.raises(PapermillExecutionError) as err:
        run_chapter(chapter, "huge", out_dir=tmp_path)
    assert "parameter scale='huge' is not allowed; allowed values: 'smoke', 'cpu', 'paper'" in str(err.value)
    assert err.value.exec_count <= 3  # parameters, injected parameters, check
