//! Compiles `proto/roost/cluster/v1/cluster.proto` into Rust with tonic/prost.
//!
//! The `.proto` files are parsed by `protox` (a pure-Rust protobuf compiler) into a
//! `FileDescriptorSet`, which `tonic-prost-build` turns into message types, clients and servers.
//! No `protoc` binary is needed on the build machine.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let cluster_proto = proto_root.join("roost/cluster/v1/cluster.proto");

    println!("cargo:rerun-if-changed={}", proto_root.display());
    println!("cargo:rerun-if-changed={}", cluster_proto.display());

    let fds = protox::compile([&cluster_proto], [&proto_root])?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        .compile_fds(fds)?;
    Ok(())
}
