//! Compiles `proto/kvmesh.proto` with a vendored protoc, so no system protoc is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure().file_descriptor_set_path(out.join("kvmesh_descriptor.bin")).compile_with_config(
        config,
        &["proto/kvmesh.proto"],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto/kvmesh.proto");
    Ok(())
}
