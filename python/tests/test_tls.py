"""rediss:// with the TLS options of the Rust library, against a TLS redis-server
(certificates made by the test with openssl)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

import streambus
from streambus import Client, Consumer, Producer

from conftest import free_port, wait_until


@pytest.fixture(scope="module")
def tls_server():
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tempfile.mkdtemp(prefix="streambus-tls-")
    ca_key, ca, key, csr, cert = (os.path.join(d, n) for n in
                                  ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))
    ext = os.path.join(d, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
        "-days", "2", "-subj", "/CN=streambus test CA")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
        "-subj", "/CN=localhost")
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext)
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca,
         "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", d],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    try:
        wait_until(listening, what="the TLS redis-server")
        yield port, ca
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(d, ignore_errors=True)


def test_tls_with_ca_file(tls_server, prefix):
    port, ca = tls_server
    client = Client.open(f"rediss://localhost:{port}", ca_file=ca)
    Producer(client).publish(f"{prefix}:s", {"tls": True})
    (e,) = Consumer(client, f"{prefix}:s", "g", max_wait=0.2).next_batch()
    assert e.data == {"tls": True}
    # The same through the URL's query.
    Client.open(f"rediss://127.0.0.1:{port}/?ca={ca}").ping()


def test_tls_without_the_ca_is_refused(tls_server):
    port, _ = tls_server
    with pytest.raises(streambus.ConnectError):
        Client.open(f"rediss://localhost:{port}", connect_timeout=2.0)
    Client.open(f"rediss://localhost:{port}", insecure_skip_verify=True).ping()
