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


def token(user: str, device: str = "py") -> str:
    env = dict(os.environ, IMSG_JWT_SECRET=SECRET)
    result = subprocess.run(
        [gateway_binary(), "token", "--user", user, "--device", device],
        env=env, check=True, capture_output=True, text=True,
    )
    return result.stdout.strip()
