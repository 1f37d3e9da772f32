"""Pushes retry a bounded number of times with a growing pause, and say why they failed; the
listener refuses calling AEs it was not told to accept and groups what it receives by series.
Real sockets throughout: a closed port, a real HTTP server answering 500, a real pynetdicom SCU."""

from __future__ import annotations

import io
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from dicom_support import PATIENT_NAME, make_series
from orthanc_support import free_port
from pydicom import dcmread

from jobs.pacs_push import StoreTarget, StowTarget, push_with_retry
from service.dicom_listener import Listener, ListenerSettings, parse_address, parse_peers


def test_a_push_to_a_closed_port_gives_up_after_its_attempts() -> None:
    pauses: list[float] = []
    seen: list[tuple[int, str | None]] = []
    error = push_with_retry(
        StowTarget(f"http://127.0.0.1:{free_port()}/dicom-web/studies"),
        [b"x"],
        attempts=3,
        backoff_s=0.01,
        on_attempt=lambda n, e: seen.append((n, e)),
        sleep=pauses.append,
    )
    assert error is not None and "could not be reached" in error
    assert [n for n, _ in seen] == [1, 2, 3] and all(e for _, e in seen)
    assert pauses == [0.01, 0.02]  # doubling, and no pause after the last attempt


def test_a_push_answered_with_an_error_reports_its_status() -> None:
    class Refuse(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(500)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        target = StowTarget(f"http://127.0.0.1:{server.server_port}/studies", auth="u:p")
        error = push_with_retry(target, [b"x"], attempts=2, backoff_s=0, sleep=lambda s: None)
    finally:
        server.shutdown()
    assert error == f"STOW-RS http://127.0.0.1:{server.server_port}/studies answered HTTP 500"


def test_a_c_store_to_nobody_fails_without_patient_data() -> None:
    blob = make_series(slices=1, size=(32, 32)).instances[0]
    target = StoreTarget("NOBODY", "127.0.0.1", free_port())
    error = push_with_retry(target, [blob], attempts=1, backoff_s=0)
    assert error is not None and "association" in error and PATIENT_NAME not in error


def test_addresses_and_peers_parse() -> None:
    assert parse_address("PACS@10.1.2.3:104") == ("PACS", "10.1.2.3", 104)
    assert parse_peers("A=h1:1, B=h2:2") == {"A": ("h1", 1), "B": ("h2", 2)}
    with pytest.raises(ValueError):
        parse_address("PACS:104")


def test_the_listener_takes_only_an_anatomy_the_model_knows(capsys) -> None:
    from midiffusion.cli.main import main

    assert ListenerSettings(dicom_anatomy="head").dicom_anatomy == "head"
    with pytest.raises(ValueError, match="accepted: brain, head"):
        ListenerSettings(dicom_anatomy="skull")
    with pytest.raises(SystemExit):
        main(["dicom-listen", "--anatomy", "skull"])
    assert "invalid choice: 'skull'" in capsys.readouterr().err


@pytest.fixture
def listener():
    settings = ListenerSettings(
        dicom_host="127.0.0.1",
        dicom_port=free_port(),
        dicom_accepted_aes="GOODAE",
        dicom_stable_seconds=3600,  # never quiet here: the test reads what is held
        gateway_url=f"http://127.0.0.1:{free_port()}",
    )
    listener = Listener(settings)
    listener.start()
    yield listener
    listener.stop()


def test_the_listener_accepts_only_its_callers_and_groups_by_series(listener: Listener) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage, Verification

    port = listener.settings.dicom_port
    stranger = AE(ae_title="BADAE")
    stranger.add_requested_context(Verification)
    assoc = stranger.associate("127.0.0.1", port, ae_title="MIDIFF")
    assert not assoc.is_established and assoc.is_rejected

    caller = AE(ae_title="GOODAE")
    caller.add_requested_context(MRImageStorage)
    a, b = make_series(slices=4, size=(32, 32), seed=1), make_series(slices=3, size=(32, 32))
    assoc = caller.associate("127.0.0.1", port, ae_title="MIDIFF")
    assert assoc.is_established
    try:
        for blob in [*a.instances[:2], *b.instances, *a.instances[2:]]:
            status = assoc.send_c_store(dcmread(io.BytesIO(blob)))
            assert status.Status == 0x0000
    finally:
        assoc.release()
    assert listener.pending_counts() == {a.series_uid: 4, b.series_uid: 3}


def test_a_quiet_series_is_submitted_and_retried_while_the_gateway_is_down(caplog) -> None:
    import logging

    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage
    from test_service_support import wait_for

    caplog.set_level(logging.INFO, logger="midiffusion.dicom_listener")
    settings = ListenerSettings(
        dicom_host="127.0.0.1",
        dicom_port=free_port(),
        dicom_stable_seconds=0.3,
        gateway_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        push_attempts=2,
        push_backoff_s=0.01,
    )
    listener = Listener(settings)
    listener.start()
    try:
        caller = AE(ae_title="ANYAE")
        caller.add_requested_context(MRImageStorage)
        assoc = caller.associate("127.0.0.1", settings.dicom_port, ae_title="MIDIFF")
        series = make_series(slices=3, size=(32, 32))
        for blob in series.instances:
            assert assoc.send_c_store(dcmread(io.BytesIO(blob))).Status == 0x0000
        assoc.release()
        wait_for(lambda: "was not submitted" in caplog.text, timeout=30, what="the give-up")
    finally:
        listener.stop()
    assert caplog.text.count("submitting a series, attempt") == 2
    assert listener.pending_counts() == {}
    assert PATIENT_NAME not in caplog.text and PATIENT_NAME.split("^")[0] not in caplog.text
