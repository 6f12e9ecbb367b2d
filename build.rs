//! Compiles the producer's own API in `proto/` with a vendored `protoc`, so a fresh machine needs
//! only the Rust toolchain. Dapr's protos are not compiled here: the `dapr` crate ships them.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { env::set_var("PROTOC", protoc) };

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("producer_descriptor.bin"))
        .compile_protos(&["proto/producer/v1/producer.proto"], &["proto"])?;
    Ok(())
}
