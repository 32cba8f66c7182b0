//! Generates the Rust code of `proto/finestra/v1/*.proto` with a vendored `protoc`, so a fresh
//! machine needs no system package.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "errors.proto",
        "events.proto",
        "window.proto",
        "ingest.proto",
        "accounts.proto",
        "billing.proto",
        "dispatch.proto",
        "contacts.proto",
        "campaigns.proto",
    ]
    .map(|f| proto_root.join("finestra/v1").join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // A build script is single-threaded, so setting the variable is sound here.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("PROTOC", &protoc);
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("finestra_descriptor.bin"))
        .compile_protos(&files, &[proto_root])?;
    Ok(())
}
