"""Runs schemathesis against one kvmesh node's OpenAPI document.

Usage: schemathesis_run.py PORT CA_FILE TOKEN REPORT_DIR [st run options...]

The nodes' certificates name `kvmesh-node`, not an address; this resolves
that name to 127.0.0.1 inside the process (as curl's --resolve does) so
that TLS is verified against the cluster CA as any client would.
"""

import socket
import sys

PORT, CA, TOKEN, REPORTS = sys.argv[1:5]
EXTRA = sys.argv[5:]

_resolve = socket.getaddrinfo


def getaddrinfo(host, *args, **kwargs):
    if host == "kvmesh-node":
        host = "127.0.0.1"
    return _resolve(host, *args, **kwargs)


socket.getaddrinfo = getaddrinfo

from schemathesis.cli import schemathesis  # noqa: E402  (after the patch)

sys.exit(
    schemathesis.main(
        [
            "run",
            f"https://kvmesh-node:{PORT}/api/v1/openapi.json",
            "--tls-verify",
            CA,
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--report",
            "junit",
            "--report-dir",
            REPORTS,
            "--no-color",
            *EXTRA,
        ],
        standalone_mode=False,
    )
    or 0
)
