"""A real imsg server for the tests: the `imsg-gateway` binary with an
embedded broker on 127.0.0.1:0, and tokens minted by the same binary."""

import os
import pathlib
import subprocess
import tempfile

import pytest

SECRET = "python-test-secret-0123456789"
REPO = pathlib.Path(__file__).resolve().parents[3]


def gateway_binary() -> str:
    path = os.environ.get("IMSG_GATEWAY_BIN", str(REPO / "target" / "debug" / "imsg-gateway"))
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: build it first (cargo test --workspace or cargo build)")
    return path


@pytest.fixture
def server():
    """Yields the server's address; stops it afterwards."""
    yield from serve()


@pytest.fixture
def rate_limited_server():
    """A server allowing each user 5 calls a second (a burst of 10)."""
    yield from serve("--user-rps", "5")


@pytest.fixture
def tls_server():
    """A server on TLS with a certificate from a CA made for the test;
    yields (address, the CA certificate in PEM)."""
    with tempfile.TemporaryDirectory() as certs:
        ca_pem = make_certificates(pathlib.Path(certs))
        for address in serve("--tls-cert", f"{certs}/server.pem", "--tls-key", f"{certs}/server.key"):
            yield address, ca_pem


def make_certificates(directory: pathlib.Path) -> bytes:
    """A CA, and a certificate it issued for 127.0.0.1, made with openssl."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=imsg test CA")
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
    )
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    return (directory / "ca.pem").read_bytes()


def serve(*extra: str):
    with tempfile.TemporaryDirectory() as data:
        env = dict(os.environ, IMSG_JWT_SECRET=SECRET, RUST_LOG="warn")
        process = subprocess.Popen(
            [gateway_binary(), "--embedded-broker", "--data-dir", data, "--listen", "127.0.0.1:0", "--partitions", "8",
             *extra],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            address = None
            for line in process.stdout:
                if "listening on " in line:
                    address = line.split("listening on ")[1].strip()
                    break
            assert address, "the server exited before listening"
            yield address
        finally:
            process.terminate()
            process.wait(timeout=10)


def token(user: str, device: str = "py", ttl_secs: int = 86_400) -> str:
    env = dict(os.environ, IMSG_JWT_SECRET=SECRET)
    result = subprocess.run(
        [gateway_binary(), "token", "--user", user, "--device", device, "--ttl-secs", str(ttl_secs)],
        env=env, check=True, capture_output=True, text=True,
    )
    return result.stdout.strip()
