"""The package's shape: the CLI answers, and the science does not depend on the service."""

from __future__ import annotations

import subprocess
import sys

import redis

from midiffusion.cli import main as cli


def test_cli_lists_every_command(capsys):
    try:
        cli.main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_cli_rejects_unknown_command(capsys):
    try:
        cli.main(["no-such-command"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_science_package_never_imports_service_or_worker():
    # A fresh interpreter: import every science module (the command line, which may import
    # anything, aside) and check what came along.
    code = (
        "import importlib, pkgutil, sys, midiffusion\n"
        "for m in pkgutil.walk_packages(midiffusion.__path__, 'midiffusion.'):\n"
        "    if not m.name.startswith('midiffusion.cli'):\n"
        "        importlib.import_module(m.name)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('service', 'worker', 'jobs')]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_redis_fixture_gives_a_real_server(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.set("midiffusion:test", b"ok")
    assert client.get("midiffusion:test") == b"ok"
    assert client.info("server")["redis_version"]
