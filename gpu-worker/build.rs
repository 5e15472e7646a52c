//! Gives the crate's binaries and tests an rpath to libtorch (feature `torch`): torch-sys
//! links libtorch but adds no rpath, so without this they only start with
//! `LD_LIBRARY_PATH` set.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
