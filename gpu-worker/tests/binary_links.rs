//! What the `troupe-gpu-worker` binary links, read from its ELF dynamic section: libtorch's
//! CPU library and c10 found through an rpath (torch-sys adds none; `build.rs` does), and
//! `libtorch.so`, which pulls in `libtorch_cuda.so`, only with the `cuda` feature (the
//! linker's `--as-needed` drops it otherwise, and libtorch then sees no GPU).
#![cfg(all(feature = "torch", target_os = "linux"))]

use std::process::Command;

struct Dynamic {
    needed: Vec<String>,
    runpath: Vec<String>,
}

fn dynamic_section() -> Dynamic {
    let binary = env!("CARGO_BIN_EXE_troupe-gpu-worker");
    let output = Command::new("readelf")
        .args(["--dynamic", "--wide", binary])
        .output()
        .expect("readelf (binutils) is installed");
    assert!(output.status.success(), "readelf -d {binary} failed");
    let text = String::from_utf8_lossy(&output.stdout);
    // Lines look like ` 0x... (NEEDED)  Shared library: [libc10.so]` and
    // ` 0x... (RUNPATH) Library runpath: [/a:/b]`.
    let bracketed = |tag: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains(tag))
            .filter_map(|l| Some(l[l.find('[')? + 1..l.rfind(']')?].to_owned()))
            .collect()
    };
    Dynamic {
        needed: bracketed("(NEEDED)"),
        runpath: bracketed("(RUNPATH)")
            .into_iter()
            .chain(bracketed("(RPATH)"))
            .flat_map(|p| p.split(':').map(str::to_owned).collect::<Vec<_>>())
            .collect(),
    }
}

#[test]
fn the_binary_links_libtorch_through_an_rpath_to_its_folder() {
    let dynamic = dynamic_section();
    for library in ["libtorch_cpu.so", "libc10.so"] {
        assert!(
            dynamic.needed.iter().any(|n| n == library),
            "{library} not among {:?}",
            dynamic.needed
        );
    }
    let found = dynamic
        .runpath
        .iter()
        .any(|dir| std::path::Path::new(dir).join("libtorch_cpu.so").is_file());
    assert!(
        found,
        "no rpath entry holds libtorch_cpu.so: {:?}",
        dynamic.runpath
    );
}

#[test]
fn libtorch_cuda_is_linked_exactly_when_the_cuda_feature_is_on() {
    let dynamic = dynamic_section();
    let has_torch = dynamic.needed.iter().any(|n| n == "libtorch.so");
    assert_eq!(
        has_torch,
        cfg!(feature = "cuda"),
        "libtorch.so (which brings libtorch_cuda.so) among {:?}",
        dynamic.needed
    );
}
