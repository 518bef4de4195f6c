"""Generates the imsg.v1 protobuf and gRPC modules from the repository's
proto/ directory while the package is built, with grpcio-tools.

Generation runs when this file is loaded: PEP 517 installs the build
requirements (grpcio-tools) before any build hook, and setuptools checks
that `imsg.v1` exists before `build_py` would run."""

import pathlib

from setuptools import setup

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
# The public API only: the internal broker API is not the SDK's business.
PROTOS = ["imsg/v1/messaging.proto"]


def generate(out_dir: pathlib.Path) -> None:
    from grpc_tools import protoc  # a build requirement
    import grpc_tools

    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    (out_dir / "imsg" / "v1").mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTOS,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("generating imsg.v1 from proto/ failed")
    (out_dir / "imsg" / "v1" / "__init__.py").touch()


# Into the source tree, so regular and editable installs both see it.
generate(HERE)
setup()
