//! Generates containerd's Snapshots service (the server, and a client for tests and tools) from the project's own proto
//! files (`proto/`). protoc and its well-known types come from `protoc-bin-vendored`, so
//! building needs only cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let include = protoc_bin_vendored::include_path()?;
    let include = include
        .to_str()
        .ok_or("protoc's include path is not UTF-8")?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(
            config,
            &[
                "proto/containerd/services/snapshots/v1/snapshots.proto",
                "proto/containerd/services/content/v1/content.proto",
                "proto/containerd/services/images/v1/images.proto",
                "proto/containerd/services/leases/v1/leases.proto",
                "proto/cri/runtime/v1/api.proto",
            ],
            &["proto", include],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
