"""mim_model.output_paths: a file where an output folder should go is refused at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from mim_model.errors import MiMError, OutputPathError
from mim_model.output_paths import check_output_file, make_output_dir


def test_make_output_dir_creates_nested_folders_and_accepts_an_existing_one(tmp_path: Path) -> None:
    made = make_output_dir(tmp_path / "a" / "b", "--out")
    assert made == tmp_path / "a" / "b" and made.is_dir()
    assert make_output_dir(made, "--out") == made


@pytest.mark.parametrize("below", [(), ("sub",), ("sub", "deeper")])
def test_make_output_dir_names_the_file_in_the_way(tmp_path: Path, below: tuple[str, ...]) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    target = blocker.joinpath(*below)
    with pytest.raises(OutputPathError, match=f"--out {target}: expected a folder .* got a file at {blocker}$"):
        make_output_dir(target, "--out")
    assert blocker.read_text() == "x"


def test_check_output_file_creates_its_folder_and_refuses_folders_and_files_in_the_way(tmp_path: Path) -> None:
    path = check_output_file(tmp_path / "new" / "w.safetensors", "out")
    assert path.parent.is_dir() and not path.exists()
    with pytest.raises(OutputPathError, match="expected a file path, got a folder"):
        check_output_file(tmp_path / "new", "out")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputPathError, match=f"got a file at {tmp_path / 'afile'}$"):
        check_output_file(tmp_path / "afile" / "w.safetensors", "out")


def test_the_error_type_is_the_callers(tmp_path: Path) -> None:
    class OwnError(ValueError):
        pass

    (tmp_path / "afile").write_text("x")
    with pytest.raises(OwnError):
        make_output_dir(tmp_path / "afile", "--out", OwnError)
    assert issubclass(OutputPathError, MiMError)
