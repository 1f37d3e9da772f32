"""``midiffusion dicom-listen``: a C-STORE SCP that turns each series it receives into a job at
the gateway and sends the derived series on (``service.dicom_listener``).

Settings come from ``MIDIFF_*`` environment variables; the options override the main ones.
"""

from __future__ import annotations

import argparse
import logging

from model_store.card import INPUT_KINDS


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ae-title", help="our AE title (default: $MIDIFF_DICOM_AE_TITLE, MIDIFF)")
    parser.add_argument(
        "--host", help="address to listen on (default: $MIDIFF_DICOM_HOST, 0.0.0.0)"
    )
    parser.add_argument("--port", type=int, help="DICOM port (default: $MIDIFF_DICOM_PORT, 11112)")
    parser.add_argument(
        "--accept",
        help="comma-separated calling AE titles to accept (default: $MIDIFF_DICOM_ACCEPTED_AES; "
        "empty = any)",
    )
    parser.add_argument(
        "--gateway", help="gateway URL (default: $MIDIFF_GATEWAY_URL, http://127.0.0.1:8000)"
    )
    parser.add_argument(
        "--anatomy",
        choices=INPUT_KINDS,
        help="what the series show (default: $MIDIFF_DICOM_ANATOMY; unset: judged by their size; "
        "say head where single sections of whole heads arrive)",
    )
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from service.dicom_listener import Listener, ListenerSettings

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides = {
        "dicom_ae_title": args.ae_title,
        "dicom_host": args.host,
        "dicom_port": args.port,
        "dicom_accepted_aes": args.accept,
        "gateway_url": args.gateway,
        "dicom_anatomy": args.anatomy,
    }
    try:
        settings = ListenerSettings(**{k: v for k, v in overrides.items() if v is not None})
        listener = Listener(settings)
    except (ValidationError, ValueError) as exc:
        print(f"error: {exc}".replace("\n", " "), flush=True)
        return 1
    listener.serve_forever()
    return 0
