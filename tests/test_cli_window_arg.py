"""``--window -160,240`` (a value starting with '-') is accepted as the issue's commands write it."""

from __future__ import annotations

from napari_sam.cli import main


def test_negative_window_value_is_a_value_not_an_option(tmp_path, capsys):
    missing = tmp_path / "nothing-here"
    code = main(["embed", str(missing), "--window", "-160,240", "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2
    assert "no such file" in err and "expected one argument" not in err
