//! Generates the types and gRPC stubs of `imsg.v1` (the public API) and
//! `imsg.internal.v1` (the broker API) with protox (a pure-Rust protobuf
//! compiler), so building needs no `protoc`.
//! The encoded descriptor set is written to OUT_DIR for gRPC reflection.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["imsg/v1/messaging.proto", "imsg/internal/v1/broker.proto"];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("imsg_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure()
        .codec_path("crate::codec::CompactCodec")
        // A message sent on a device stream is boxed: every idle stream's
        // relay holds an `OpenStreamRequest` slot, which would otherwise be
        // as large as a whole `SendMessageRequest` (see `CompactCodec`).
        .boxed(".imsg.v1.OpenStreamRequest.frame.send_message")
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
