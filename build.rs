//! Links the binaries and test executables against libtorch so they run as built.
//!
//! torch-sys finds libtorch (here: PyPI's torch, `LIBTORCH_USE_PYTORCH=1`) and exports its lib
//! folder as `DEP_TCH_LIBTORCH_LIB`. Two things it leaves to us:
//! - an rpath, so nothing needs LD_LIBRARY_PATH at run time;
//! - libtorch_cuda: nothing in our code calls into it directly, so the linker's default
//!   `--as-needed` drops it and `tch::Cuda::is_available()` is then false even on a GPU machine.
//!   Linking it with `--no-as-needed` keeps it in DT_NEEDED.
//!
//! It also records which libtorch that is (`SAESHARE_LIBTORCH_VERSION`, shown by `--version`):
//! a binary runs only on the libtorch release it was built for, and a machine's own PyTorch
//! (scripts/device-check.sh) is checked against it before anything runs.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let Ok(lib) = env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:rustc-env=SAESHARE_LIBTORCH_VERSION=unknown");
        return;
    };
    let version = libtorch_version(Path::new(&lib)).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SAESHARE_LIBTORCH_VERSION={version}");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}

/// The release of the libtorch in `lib`: PyTorch's `torch/version.py` (`__version__ = '2.13.0+cu130'`)
/// or a standalone libtorch's `build-version` file, both beside `lib`.
fn libtorch_version(lib: &Path) -> Option<String> {
    let root = lib.parent()?;
    if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
        println!(
            "cargo:rerun-if-changed={}",
            root.join("version.py").display()
        );
        let line = text.lines().find(|l| l.starts_with("__version__"))?;
        return Some(line.split(['\'', '"']).nth(1)?.to_string());
    }
    let text = std::fs::read_to_string(root.join("build-version")).ok()?;
    Some(text.trim().to_string())
}
