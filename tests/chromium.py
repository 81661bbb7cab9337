"""Debian's Chromium for the browser tests: where it is, and the flags it needs on this machine
(as root, with no screen, no GPU and a closed network: without the background-networking flags
Chromium keeps trying to reach Google's hosts)."""

import os

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
