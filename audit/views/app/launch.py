"""Start the Streamlit app (``keras-audit app``) on one run, two runs to compare, or none.

The app's entry is ``main.py`` beside this file; it is started as its own
``python -m streamlit run`` process so Streamlit's server, not the CLI, owns the
event loop, and this function only forwards signals and returns its exit code.

Example:
    >>> launch([Path("audit_out")], port=8502)      # doctest: +SKIP
"""

from __future__ import annotations

import ipaddress
import signal
import subprocess
import sys
from pathlib import Path

from audit.errors import AuditError


def app_entry() -> Path:
    """The app's entry script, inside the installed package."""
    return Path(__file__).resolve().parent / "main.py"


def exposure_warning(host: str) -> str | None:
    """The one-line warning for binding ``host``, or None when only this machine can connect.

    The app has no login, so anything past loopback (0.0.0.0, a LAN address, a host name other
    than localhost, whose address we do not resolve here) shows every audited image to whoever
    reaches the port.
    """
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return None
    try:
        if ipaddress.ip_address(name).is_loopback:
            return None
    except ValueError:
        pass
    return (f"warning: serving the app on {host!r}, beyond this machine, with no login: anyone who can "
            "reach this port can browse the audited images and results (use --host 127.0.0.1 to keep it local)")


def command(stores: list[Path], host: str = "127.0.0.1", port: int = 8501) -> list[str]:
    """The ``python -m streamlit run`` command line :func:`launch` runs."""
    if len(stores) > 2:
        raise AuditError(f"give at most two runs (one to browse, two to compare); received {len(stores)}")
    if not 0 < int(port) < 65536:
        raise AuditError(f"--port must be between 1 and 65535; received: {port}")
    entry = app_entry()
    if not entry.is_file():
        raise AuditError(
            f"the app is not installed with this keras-audit (no {entry}); reinstall from a source checkout"
        )
    return [
        sys.executable, "-m", "streamlit", "run", str(entry),
        "--server.address", host,
        "--server.port", str(int(port)),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--",
        # Absolute, so the app finds the runs whatever directory Streamlit settles in.
        *[str(Path(s).expanduser().resolve()) for s in stores],
    ]


def launch(stores: list[Path], host: str = "127.0.0.1", port: int = 8501) -> int:
    """Serve the app on ``host:port`` until it is stopped; returns Streamlit's exit code.

    Stores are not checked here: the app says what is wrong with a store in the
    page. SIGTERM and SIGINT are passed on to the server, so stopping this
    process by its id stops the server too.
    """
    try:
        import streamlit  # noqa: F401
    except ImportError:
        raise AuditError('the app needs Streamlit: pip install "keras-audit[app]"') from None
    cmd = command(list(stores), host, port)
    warning = exposure_warning(host)
    if warning:
        print(warning, file=sys.stderr)
    proc = subprocess.Popen(cmd)

    def forward(signum, _frame):
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
