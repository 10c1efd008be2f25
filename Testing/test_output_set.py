"""Output sets: OUTDIR holds the complete old set or the complete new set, problems are refused before the
analysis, OS errors become one line, and nothing the run did not check is replaced (issue 12 items 6-8, 13)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from CovidCTLib import cli
from CovidCTLib.errors import OutputExistsError
from CovidCTLib.io.writers import write_image
from CovidCTLib.outputs import registry
from CovidCTLib.outputs.output_set import MARKER, OutputError, check_output_dir, is_complete
from CovidCTLib.phantom import make_phantom
from CovidCTLib.pipeline import analyze


@pytest.fixture(scope="module")
def result():
    phantom = make_phantom(shape=(30, 64, 64), spacing=(4.0, 2.5, 2.5), seed=4)
    return analyze(phantom.ct, method="classical", device="cpu", classify=False)


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _failing_writer(name: str, error: BaseException):
    def run(result, folder, options):
        raise error

    return registry.FileWriter(name, ((name, f"{name}.bin"),), run)


def test_a_set_is_marked_complete_and_lists_its_files(tmp_path, result) -> None:
    out = tmp_path / "out"
    paths = registry.write_outputs(result, out)
    marker = json.loads((out / MARKER).read_text())
    assert set(marker["files"]) == {p.name for p in paths.values()}
    assert is_complete(out)
    assert not list(tmp_path.glob(".out.covidct-*"))


def test_a_failed_overwrite_leaves_the_complete_old_set(tmp_path, result, monkeypatch) -> None:
    out = tmp_path / "out"
    registry.write_outputs(result, out, options=registry.OutputOptions(reports=False))
    before = _contents(out)
    writers = (*registry.WRITERS[:3], _failing_writer("boom", RuntimeError("crash half-way")))
    monkeypatch.setattr(registry, "WRITERS", writers)
    with pytest.raises(RuntimeError, match="half-way"):
        registry.write_outputs(result, out, overwrite=True)
    assert _contents(out) == before and is_complete(out)
    assert not list(tmp_path.glob(".out.covidct-*"))


def test_disk_full_is_one_clear_error_and_nothing_partial(tmp_path, result, monkeypatch) -> None:
    out = tmp_path / "out"
    full = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(registry, "WRITERS", (*registry.WRITERS[:2], _failing_writer("big", full)))
    with pytest.raises(OutputError, match="No space left on device.*left as it was"):
        registry.write_outputs(result, out)
    assert not out.exists() and not list(tmp_path.glob(".out.covidct-*"))


def test_files_that_appear_during_writing_are_not_replaced(tmp_path, result, monkeypatch) -> None:
    out = tmp_path / "out"
    snapshot = check_output_dir(out, overwrite=False)

    def sneak(result, folder, options):
        out.mkdir(exist_ok=True)
        (out / "report.json").write_text("someone else's file")

    monkeypatch.setattr(registry, "WRITERS", (*registry.WRITERS[:1], registry.FileWriter("sneak", (), sneak)))
    with pytest.raises(OutputExistsError, match="changed while the analysis ran"):
        registry.write_outputs(result, out, snapshot=snapshot)
    assert (out / "report.json").read_text() == "someone else's file"
    assert not list(tmp_path.glob(".out.covidct-*"))


def test_foreign_files_are_never_replaced_even_with_overwrite(tmp_path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    with pytest.raises(OutputError, match="not part of a CovidCT output set"):
        check_output_dir(out, overwrite=True)


def test_kill_9_during_writing_leaves_the_old_set_and_the_next_run_cleans_up(tmp_path, result) -> None:
    out = tmp_path / "out"
    registry.write_outputs(result, out, options=registry.OutputOptions(reports=False))
    before = _contents(out)
    phantom_path = tmp_path / "ct.nii.gz"
    write_image(result.ct.image, phantom_path, overwrite=True)
    code = (
        "import os, signal, sys\n"
        "from CovidCTLib.outputs import registry\n"
        "from CovidCTLib.pipeline import analyze\n"
        "def die(result, folder, options):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "registry.WRITERS = (*registry.WRITERS[:3], registry.FileWriter('die', (), die))\n"
        f"r = analyze({str(phantom_path)!r}, method='classical', device='cpu', classify=False)\n"
        f"registry.write_outputs(r, {str(out)!r}, overwrite=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, timeout=300)
    assert done.returncode == -9
    assert _contents(out) == before
    assert list(tmp_path.glob(".out.covidct-new-*")), "the killed run's staging folder is left behind"
    check_output_dir(out, overwrite=True)  # the next run removes it
    assert not list(tmp_path.glob(".out.covidct-*"))


def _run_cli(argv: list[str], monkeypatch) -> int:
    calls = []
    monkeypatch.setattr("CovidCTLib.pipeline.analyze", lambda *a, **k: calls.append(a) or pytest.fail("analysed"))
    code = cli.main(argv)
    assert not calls
    return code


def test_existing_output_is_refused_before_any_analysis(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("{}")
    assert _run_cli(["analyze", "whatever.nii.gz", "-o", str(out)], monkeypatch) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_outdir_that_is_a_file_is_refused_before_any_analysis(tmp_path, monkeypatch, capsys) -> None:
    target = tmp_path / "a_file"
    target.write_text("x")
    assert _run_cli(["analyze", "whatever.nii.gz", "-o", str(target)], monkeypatch) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Traceback" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_outdir_is_refused_before_any_analysis(tmp_path, monkeypatch, capsys) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        assert _run_cli(["analyze", "whatever.nii.gz", "-o", str(parent / "out")], monkeypatch) == 2
    finally:
        parent.chmod(0o700)
    assert "cannot write" in capsys.readouterr().err


def test_a_failing_background_writer_fails_the_run_and_keeps_the_old_set(tmp_path, result, monkeypatch) -> None:
    """Issue 15: the image writers run in a second thread; their failure is the run's failure."""
    out = tmp_path / "out"
    registry.write_outputs(result, out, options=registry.OutputOptions(reports=False))
    before = _contents(out)
    assert "heatmap" in registry.BACKGROUND_WRITERS
    writers = (
        *registry.WRITERS[:2],
        _failing_writer("heatmap", RuntimeError("encoder crashed")),
        *registry.WRITERS[7:],
    )
    monkeypatch.setattr(registry, "WRITERS", writers)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        registry.write_outputs(result, out, overwrite=True)
    assert _contents(out) == before and is_complete(out)
    assert not list(tmp_path.glob(".out.covidct-*"))


def test_cancel_while_the_background_writers_run_leaves_the_old_set(tmp_path, result, monkeypatch) -> None:
    """A cancel in the report thread waits for the running image writer, skips the queued ones, and leaves
    the old set; both threads really wrote at the same time."""
    import threading

    from CovidCTLib.errors import CancelledError
    from CovidCTLib.progress import CancelToken, Reporter

    out = tmp_path / "out"
    registry.write_outputs(result, out, options=registry.OutputOptions(reports=False))
    before = _contents(out)
    started, ran = threading.Event(), []

    def slow_image(result, folder, options):
        started.set()
        ran.append("slow")
        (folder / "slow.bin").write_bytes(b"x")
        threading.Event().wait(0.3)

    def queued(result, folder, options):
        ran.append("queued")

    token = CancelToken()

    def report_then_cancel(result, folder, options):
        assert started.wait(5)  # the background writer is running while this one runs
        ran.append("report")
        token.cancel()

    writers = (
        registry.FileWriter("labelmaps", (("slow", "slow.bin"),), slow_image),
        registry.FileWriter("heatmap", (("queued", "queued.bin"),), queued),
        registry.FileWriter("report_json", (("report_json", "report.json"),), report_then_cancel),
        registry.FileWriter("report_csv", (("report_csv", "report.csv"),), report_then_cancel),
    )
    monkeypatch.setattr(registry, "WRITERS", writers)
    monkeypatch.setattr(registry, "BACKGROUND_THREADS", 1)  # so that the second image writer waits in the queue
    with pytest.raises(CancelledError):
        registry.write_outputs(result, out, overwrite=True, reporter=Reporter(cancel=token))
    assert ran == ["slow", "report"]  # the queued image writer never ran
    assert _contents(out) == before and is_complete(out)
    assert not list(tmp_path.glob(".out.covidct-*"))
