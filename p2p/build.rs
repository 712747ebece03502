//! Generates the scheduler's gRPC code. protoc comes from `protoc-bin-vendored`, so building needs
//! only cargo (DESIGN.md "Builds need only cargo").

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // A task's sources are kept in the store's records too.
    config.type_attribute(
        "shoal.scheduler.v1.Source",
        "#[derive(serde::Serialize, serde::Deserialize)]",
    );
    tonic_prost_build::configure().compile_with_config(
        config,
        &["proto/shoal/scheduler/v1/scheduler.proto"],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
