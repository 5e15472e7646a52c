//! Link settings for the crate's binaries and tests (feature `torch`):
//!
//! - an rpath to libtorch's folder, which torch-sys links against but does not record, so
//!   that the binaries start without `LD_LIBRARY_PATH`;
//! - with feature `cuda`, `libtorch.so` kept in the binaries even though they use none of
//!   its symbols directly: it is what loads `libtorch_cuda.so`, and the linker's default
//!   `--as-needed` drops it, after which libtorch reports no GPU. Symbols of the CUDA
//!   libraries that libtorch_cuda needs may be missing at link time (a CPU build machine
//!   without them); the dynamic loader resolves them where the binary runs.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg-bins=-Wl,--no-as-needed,-ltorch,--as-needed,--allow-shlib-undefined");
    }
}
