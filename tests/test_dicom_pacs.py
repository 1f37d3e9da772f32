"""Against a real Orthanc: a generated MR series stored in Orthanc is sent by Orthanc (C-STORE) to
``midiffusion dicom-listen``, translated by ``midiffusion serve`` (embedded worker, tiny model),
and the derived series comes back by C-STORE into the same study; and a series sent by STOW-RS
to the gateway comes back to Orthanc by the worker's STOW-RS push. Each time the derived series
is read back from Orthanc's REST API and checked slice by slice."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from dicom_support import PATIENT_ID, PATIENT_NAME, check_derived, make_series, oblique
from orthanc_support import Orthanc, free_port
from test_service_support import API_KEY, AUTH, REPO, stop_process, wait_for, wait_until_ready

pytestmark = pytest.mark.slow
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSTIC USE"


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIDIFF_")}
    env.update(values, PYTHONPATH=str(REPO))
    return env


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "midiffusion.cli", *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        stop_process(proc)


@contextlib.contextmanager
def _gateway(tmp: Path, model_root: Path, **extra: str) -> Iterator[str]:
    port = free_port()
    env = _env(
        MIDIFF_STORAGE_DIR=str(tmp / "storage"),
        MIDIFF_MODEL_DIR=str(model_root),
        MIDIFF_API_KEYS=API_KEY,
        MIDIFF_DEVICE="cpu",
        MIDIFF_PUSH_BACKOFF_S="0.5",
        **extra,
    )
    log = tmp / "serve.log"
    with _process(["serve", "--port", str(port)], env, log) as proc:
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(proc, base, log, "midiffusion serve")
        yield base


def _derived_series(orthanc: Orthanc, study_uid: str, count: int) -> list[pydicom.Dataset]:
    """Wait for the derived series of ``study_uid`` to be whole in Orthanc; its instances."""

    def whole() -> list[str] | None:
        for series in orthanc.series_in_study(study_uid):
            description = series["MainDicomTags"].get("SeriesDescription", "")
            if NOT_FOR_DIAGNOSIS in description and len(series["Instances"]) == count:
                return series["Instances"]
        return None

    ids = wait_for(whole, timeout=240, interval=0.5, what="the derived series in Orthanc")
    tags = orthanc.tags(ids[0])  # what Orthanc itself indexed
    assert tags["ImageType"].startswith("DERIVED\\SECONDARY")
    assert tags["StudyInstanceUID"] == study_uid
    return [pydicom.dcmread(io.BytesIO(orthanc.instance_file(i))) for i in ids]


def _no_patient_data(*texts: str) -> None:
    for text in texts:
        for secret in (PATIENT_NAME, PATIENT_NAME.split("^")[0], PATIENT_ID):
            assert secret not in text


def test_orthanc_sends_a_series_to_the_listener_and_gets_the_derived_one_back(
    orthanc: Orthanc, tiny_model_store, tmp_path: Path
) -> None:
    series = make_series(slices=12, size=(128, 128), orientation=oblique(18), slice_spacing=3.0)
    listen_port = free_port()
    with _gateway(tmp_path, tiny_model_store.root) as gateway:
        env = _env(
            MIDIFF_GATEWAY_URL=gateway,
            MIDIFF_GATEWAY_API_KEY=API_KEY,
            MIDIFF_DICOM_HOST="127.0.0.1",
            MIDIFF_DICOM_PORT=str(listen_port),
            MIDIFF_DICOM_AE_TITLE="MIDIFF",
            MIDIFF_DICOM_ACCEPTED_AES=orthanc.aet,
            MIDIFF_DICOM_STABLE_SECONDS="1.5",
            MIDIFF_DICOM_PEERS=f"{orthanc.aet}=127.0.0.1:{orthanc.dicom_port}",
            MIDIFF_DICOM_PRESET="fast",
            MIDIFF_DICOM_STEPS="2",
            MIDIFF_DICOM_ANATOMY="head",
            MIDIFF_PUSH_BACKOFF_S="0.5",
        )
        log = tmp_path / "listen.log"
        with _process(["dicom-listen"], env, log):
            wait_for(lambda: "listening as MIDIFF" in log.read_text(), timeout=60, what="listener")
            ids = orthanc.store(series.instances)
            with orthanc.client() as c:
                modality = {"AET": "MIDIFF", "Host": "127.0.0.1", "Port": listen_port}
                c.put("/modalities/midiff", json=modality).raise_for_status()
                echo = c.post("/modalities/midiff/echo", json={})
                assert echo.status_code == 200, echo.text
                sent = c.post(
                    "/modalities/midiff/store", json={"Resources": ids, "Synchronous": True}
                )
                assert sent.status_code == 200, sent.text
            derived = _derived_series(orthanc, series.study_uid, 12)
            check_derived(series, derived, "tiny", 1)
            assert all("fast sampling preset" in d.DerivationDescription for d in derived)
            assert all("translated as a head" in d.DerivationDescription for d in derived)
            wait_for(lambda: "result sent" in log.read_text(), timeout=30, what="the send log")
        _no_patient_data(log.read_text(), (tmp_path / "serve.log").read_text())
        _no_patient_data(httpx.get(f"{gateway}/metrics").text)


def test_orthanc_stows_a_study_to_the_gateway_and_the_result_is_pushed_back_by_stow_rs(
    orthanc: Orthanc, tiny_model_store, tmp_path: Path
) -> None:
    series = make_series(slices=12, size=(128, 128), orientation=oblique(28), slice_spacing=4.0)
    stow_url = f"{orthanc.url}/dicom-web/studies"
    with _gateway(tmp_path, tiny_model_store.root, MIDIFF_PACS_STOW_URL=stow_url) as gateway:
        orthanc.store(series.instances)
        with orthanc.client() as c:
            (study,) = c.post(
                "/tools/lookup", content=series.study_uid
            ).json()  # Orthanc's id of the study
            # the README's DICOMweb server entry, with the gateway's API key as a header
            server = {"Url": f"{gateway}/dicomweb/", "HttpHeaders": {"X-API-Key": API_KEY}}
            c.put("/dicom-web/servers/midiff", json=server).raise_for_status()
            sent = c.post("/dicom-web/servers/midiff/stow", json={"Resources": [study["ID"]]})
            assert sent.status_code == 200, sent.text

        (job,) = httpx.get(f"{gateway}/jobs?study={series.study_uid}", headers=AUTH).json()["jobs"]
        derived = _derived_series(orthanc, series.study_uid, 12)
        check_derived(series, derived, "tiny", 1)

        def pushed() -> dict | None:
            record = httpx.get(f"{gateway}/jobs/{job['id']}", headers=AUTH).json()
            return record if record.get("push", {}).get("state") == "pushed" else None

        record = wait_for(pushed, timeout=60, what="the job's push state")
        assert record["push"]["attempts"] == 1 and record["push"]["last_error"] is None
        assert record["push"]["destination"] == f"STOW-RS {stow_url}"
        _no_patient_data((tmp_path / "serve.log").read_text())


def test_a_translate_job_is_pushed_to_orthanc_by_c_store(
    orthanc: Orthanc, tiny_model_store, tmp_path: Path
) -> None:
    series = make_series(slices=12, size=(128, 128), orientation=oblique(8), slice_spacing=2.5)
    dimse = {
        "MIDIFF_PACS_AE": orthanc.aet,
        "MIDIFF_PACS_HOST": "127.0.0.1",
        "MIDIFF_PACS_PORT": str(orthanc.dicom_port),
    }
    with _gateway(tmp_path, tiny_model_store.root, **dimse) as gateway:
        response = httpx.post(
            f"{gateway}/translate",
            files={"file": ("series.zip", series.zip_bytes())},
            data={"steps": "2"},
            headers=AUTH,
            timeout=60,
        )
        assert response.status_code == 202, response.text
        derived = _derived_series(orthanc, series.study_uid, 12)
        check_derived(series, derived, "tiny", 1)
        job = wait_for(
            lambda: (
                (j := httpx.get(f"{gateway}/jobs/{response.json()['id']}", headers=AUTH).json())
                .get("push", {})
                .get("state")
                == "pushed"
                and j
            ),
            timeout=60,
            what="the job's push state",
        )
        assert job["push"]["destination"] == f"C-STORE {orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
