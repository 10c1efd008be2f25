"""``covidct batch``: discovery, the local pool and a real Dask LocalCluster on small phantoms.

Covers a corrupt study (contained, in failures.csv, exit code 1), a hanging study stopped by the timeout (local
pool: worker killed and replaced; Dask: cancelled in its task), and --resume (complete sets skipped, an
incomplete one redone). Classical method, no classifier, no PDF: the batch machinery is what is tested.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from batch_helpers import REFERENCE
from dicom_factory import write_series
from required import require_module, skip_or_fail

from CovidCTLib.batch.cohort import covid_category, distributions, histogram
from CovidCTLib.batch.discovery import Discovery, discover, read_manifest
from CovidCTLib.batch.jobs import FAILED, TIMEOUT, AnalysisOptions, Study
from CovidCTLib.batch.runner import BatchConfig, run_batch
from CovidCTLib.batch.study import output_set_complete
from CovidCTLib.cli import build_parser, main
from CovidCTLib.errors import InputError
from CovidCTLib.io.writers import write_image
from CovidCTLib.outputs.output_set import MARKER
from CovidCTLib.phantom import make_phantom
from CovidCTLib.version import DISCLAIMER

FAST = ["--method", "classical", "--no-classify", "--no-report"]
OPTIONS = AnalysisOptions(method="classical", classify=False, reports=False, threads=1)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two NIfTI phantoms (one in a subfolder), one DICOM phantom series and one corrupt NIfTI file."""
    root = tmp_path_factory.mktemp("cohort")
    for seed, name in ((0, "alpha.nii.gz"), (1, "sub/beta.nii.gz")):
        phantom = make_phantom(shape=(48, 96, 96), seed=seed)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        write_image(phantom.ct.image, root / name, overwrite=True)
    phantom = make_phantom(shape=(48, 96, 96), seed=2)
    write_series(root / "patient3" / "ct", phantom.ct.array.astype(np.int16), spacing=(1.5, 1.5, 2.5), shuffle=False)
    (root / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip" * 20)
    return root


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------------------------- discovery
def test_discovery_one_job_per_volume_and_dicom_study(tmp_path: Path) -> None:
    hu = np.full((12, 32, 40), -800, dtype=np.int16)
    study = "1.2.826.0.1.3680043.8.498.1"
    write_series(tmp_path / "p1" / "thin", hu, study_uid=study, series_number=2)
    write_series(tmp_path / "p1" / "thick", hu[:10], study_uid=study, series_number=3)
    write_series(tmp_path / "p2" / "scout", hu, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    write_series(tmp_path / "p3", hu, modality="MR")
    write_image(make_phantom(shape=(16, 64, 64)).ct.image, tmp_path / "vol.nii.gz", overwrite=True)
    (tmp_path / "out").mkdir()
    write_image(make_phantom(shape=(16, 64, 64)).ct.image, tmp_path / "out" / "lungs.nii.gz", overwrite=True)
    found = discover([tmp_path], exclude=[tmp_path / "out"])
    by_id = {s.id: s for s in found.studies}
    assert sorted(by_id) == ["p1_thin", "vol"]  # OUTDIR inside the input is not searched
    assert len(by_id["p1_thin"].files) == 12  # the series with the most images, as analyze chooses
    assert any("fewer images" in note for note in by_id["p1_thin"].notes)
    problems = {p[0]: p[2] for p in found.problems}
    assert "scout/localizer" in problems["p2_scout"] and "no CT series" in problems["p3"]


def test_manifest(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("id,path\nA 1,scans/a.nii.gz\nb,/abs/b.nrrd\n", encoding="utf-8")
    found = read_manifest(tmp_path / "m.csv")
    assert [(s.id, s.path) for s in found.studies] == [("A_1", str(tmp_path / "scans/a.nii.gz")), ("b", "/abs/b.nrrd")]
    (tmp_path / "bad.csv").write_text("name,file\nx,y\n", encoding="utf-8")
    with pytest.raises(InputError, match="id,path"):
        read_manifest(tmp_path / "bad.csv")


def test_batch_accepts_every_analyze_option() -> None:
    sub = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001 - compare the two parsers
    analyze = {s for a in sub["analyze"]._actions for s in a.option_strings}  # noqa: SLF001
    batch = {s for a in sub["batch"]._actions for s in a.option_strings}  # noqa: SLF001
    assert analyze <= batch


def test_cohort_statistics_helpers() -> None:
    assert histogram([0, 4.9, 5, 100], [0, 5, 100])["counts"] == [2, 2]
    rows = [
        {"infection.percent_of_lungs": "10", "severity_score.total": "7", "covid_probability": "0.8"},
        {"infection.percent_of_lungs": "30", "severity_score.total": "12", "covid_probability": ""},
    ]
    dist = distributions(rows)
    assert dist["burden_percent_of_lungs"]["median"] == 20.0
    assert dist["severity_score_total"]["counts"] == {"7": 1, "12": 1}
    assert dist["covid_category"]["counts"][covid_category(0.8)] == 1
    assert dist["covid_category"]["counts"][covid_category(None)] == 1


# ----------------------------------------------------------------------------------------------- local pool
def test_local_pool_failure_contained_then_resume(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(["batch", str(cohort), "-o", str(out), "--workers", "2", *FAST])
    assert code == 1  # one study failed
    failures = _csv(out / "failures.csv")
    assert [f["id"] for f in failures] == ["broken"] and "corrupt" in failures[0]["message"]
    rows = {r["id"]: r for r in _csv(out / "cohort.csv")}
    assert sorted(rows) == ["alpha", "beta", "patient3_ct"]
    for study_id, row in rows.items():  # cohort.csv rows are the studies' own report.csv rows
        own = _csv(out / study_id / "report.csv")[0]
        assert {k: v for k, v in row.items() if k != "id"} == own
        assert output_set_complete(out / study_id)
    assert (out / "patient3_ct" / "segmentation.dcm").is_file()  # DICOM study: the chosen series' files
    summary = json.loads((out / "cohort.json").read_text())
    assert summary["counts"] == {
        "studies": 4,
        "succeeded": 3,
        "analysed": 3,
        "skipped_complete": 0,
        "failed": 1,
        "timed_out": 0,
    }
    assert summary["distributions"]["burden_percent_of_lungs"]["n"] == 3
    assert summary["runner"]["kind"] == "local" and summary["runner"]["workers"] == 2
    html = (out / "cohort.html").read_text()
    assert DISCLAIMER in html and "<svg" in html and "patient3_ct" in html and "<script" not in html

    # without --resume / --overwrite existing outputs are refused before anything runs
    assert main(["batch", str(cohort), "-o", str(out), *FAST]) == 2
    capsys.readouterr()

    # an interrupted study: marker missing -> redone; the complete ones are skipped untouched
    (out / "beta" / MARKER).unlink()
    alpha_mtime = (out / "alpha" / "lungs.nii.gz").stat().st_mtime_ns
    shutil.rmtree(cohort / "patient3")  # gone from the inputs: no longer a study
    try:
        code = main(["batch", str(cohort), "-o", str(out), "--resume", "--workers", "1", "--json-progress", *FAST])
    finally:
        write_series(
            cohort / "patient3" / "ct",
            make_phantom(shape=(48, 96, 96), seed=2).ct.array.astype(np.int16),
            spacing=(1.5, 1.5, 2.5),
            shuffle=False,
        )
    assert code == 1
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    studies = {e["id"]: e["status"] for e in events if e["event"] == "study"}  # one line per study
    assert studies == {"alpha": "skipped", "beta": "ok", "broken": "failed"}
    assert events[-1]["event"] == "done" and events[-1]["all_succeeded"] is False
    summary = json.loads((out / "cohort.json").read_text())
    assert summary["counts"]["skipped_complete"] == 1 and summary["counts"]["analysed"] == 1
    assert (out / "alpha" / "lungs.nii.gz").stat().st_mtime_ns == alpha_mtime
    assert output_set_complete(out / "beta")


def test_local_pool_timeout_and_crash_replace_the_worker(cohort: Path, tmp_path: Path) -> None:
    studies = [
        Study("hang-1", "/nowhere/hang.nii.gz"),
        Study("crash-1", "/nowhere/crash.nii.gz"),
        Study("broken", str(cohort / "broken.nii.gz")),
    ]
    found = Discovery(studies=studies)
    config = BatchConfig(tmp_path, OPTIONS, workers=1, timeout=3.0, function_ref=REFERENCE)
    result = run_batch(found, config)
    status = {o.id: o for o in result.outcomes}
    assert status["hang-1"].status == TIMEOUT and "timed out" in status["hang-1"].message
    assert status["crash-1"].status == FAILED and "worker process died" in status["crash-1"].message
    assert status["broken"].status == FAILED and "corrupt" in status["broken"].message  # the pool went on
    assert result.runner["workers_replaced"] == 2 and not result.all_succeeded
    assert [f["id"] for f in _csv(tmp_path / "failures.csv")] == ["hang-1", "crash-1", "broken"]


# ----------------------------------------------------------------------------------------------- Dask
def test_dask_local_cluster(cohort: Path, tmp_path: Path) -> None:
    distributed = require_module("distributed")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        out = tmp_path / "dask"
        code = main(
            [
                "batch",
                str(cohort / "sub"),
                str(cohort / "broken.nii.gz"),
                "-o",
                str(out),
                "--scheduler",
                cluster.scheduler_address,
                "--threads",
                "2",
                *FAST,
            ]
        )
        assert code == 1
        assert [r["id"] for r in _csv(out / "cohort.csv")] == ["beta"]
        assert [f["id"] for f in _csv(out / "failures.csv")] == ["broken"]
        summary = json.loads((out / "cohort.json").read_text())
        assert summary["runner"]["kind"] == "dask" and summary["runner"]["workers"] == 1
        assert (
            main(
                [
                    "batch",
                    str(cohort / "sub"),
                    "-o",
                    str(out),
                    "--resume",
                    "--scheduler",
                    cluster.scheduler_address,
                    *FAST,
                ]
            )
            == 0
        )
        assert json.loads((out / "cohort.json").read_text())["counts"]["skipped_complete"] == 1

        found = Discovery(studies=[Study("hang-2", "/nowhere/x.nii.gz")])
        config = BatchConfig(
            tmp_path / "t", OPTIONS, scheduler=cluster.scheduler_address, timeout=3.0, function_ref=REFERENCE
        )
        result = run_batch(found, config)
        assert [(o.id, o.status) for o in result.outcomes] == [("hang-2", TIMEOUT)]


# ----------------------------------------------------------------------------------------------- models once
@pytest.mark.slow
def test_models_loaded_once_per_worker_process(cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Warm-up loads every model once; a study after it reuses the process caches (no second load)."""
    from CovidCTLib.batch import warmup
    from CovidCTLib.batch.study import execute, run_study
    from CovidCTLib.pipeline import classifier_available, segmentation_models_available

    if not (segmentation_models_available() and classifier_available()):
        skip_or_fail("the shipped models are not installed")
    from CovidCTLib.models.runtime import classifier_inference, inference, registry

    loads: list[str] = []
    real_load = registry.load_model

    def counting_load(name: str, *args: object, **kwargs: object) -> object:
        loads.append(name)
        return real_load(name, *args, **kwargs)

    monkeypatch.setattr(registry, "load_model", counting_load)
    monkeypatch.setattr(inference, "_CACHE", {})
    monkeypatch.setattr(classifier_inference, "_CACHE", {})
    monkeypatch.setattr(warmup, "_PREPARED", set())
    options = AnalysisOptions(method="model", device="cpu", classify=True, reports=False, threads=2)
    assert warmup.prepare_worker(options) == "model"
    after_warmup = sorted(loads)
    outcome = execute(run_study, Study("beta", str(cohort / "sub" / "beta.nii.gz")), options, str(tmp_path), False)
    assert outcome.status == "ok", outcome.message
    assert sorted(loads) == after_warmup and len(after_warmup) == len(set(after_warmup)) == 3
    report = json.loads((tmp_path / "beta" / "report.json").read_text())
    assert report["method"] == "model" and report["covid_probability"] is not None


def test_study_files_missing_on_the_worker(tmp_path: Path) -> None:
    from CovidCTLib.batch.study import execute, run_study

    study = Study("gone", str(tmp_path / "series"), files=(str(tmp_path / "series" / "slice0001.dcm"),))
    outcome = execute(run_study, study, OPTIONS, str(tmp_path / "out"), False)
    assert outcome.status == FAILED and "not visible" in outcome.message
    assert not (tmp_path / "out" / "gone").exists()
