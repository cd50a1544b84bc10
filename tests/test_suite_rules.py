"""Rules of the suite itself, checked by running pytest on a small suite in a temporary directory."""

import pathlib
import shutil
import subprocess
import sys


def test_a_skipped_known_answer_test_fails_the_run(tmp_path):
    """The suite's own conftest turns a skip of a ``vectors`` test into a failure, so a lost
    vector file can never pass as a skip."""
    shutil.copy(pathlib.Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    vectors: known-answer tests\n")
    (tmp_path / "test_lost.py").write_text(
        "import pytest\n\n@pytest.mark.vectors\ndef test_lost():\n    pytest.skip('vector file not found')\n\n"
        "def test_unmarked():\n    pytest.skip('not a known-answer test')\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 1, run.stdout
    assert "known-answer test skipped" in run.stdout and "1 failed, 1 skipped" in run.stdout


def test_every_module_marked_native_exists():
    """A renamed or moved module would silently drop out of the second backend's run."""
    import importlib.util

    here = pathlib.Path(__file__).parent
    spec = importlib.util.spec_from_file_location("suite_conftest", here / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    NATIVE_MODULES = conftest.NATIVE_MODULES  # noqa: N806 (the name the conftest gives it)
    assert {m for m in NATIVE_MODULES if not (here / f"{m}.py").is_file()} == set()
