//! Compiles proto/conveyor/v1/*.proto with a vendored protoc, so no protoc install is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        // The worker RPC is named `Connect`, which would clash with the generated
        // `Client::connect(addr)`; clients are built from a `Channel` instead.
        .build_transport(false)
        // prost's codec with a small first send buffer per call (src/proto/codec.rs).
        .codec_path("crate::proto::Codec")
        .file_descriptor_set_path(out.join("conveyor_descriptor.bin"))
        .compile_with_config(
            config,
            &[
                "proto/conveyor/v1/jobs.proto",
                "proto/conveyor/v1/workers.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
