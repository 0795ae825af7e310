//! Links the binaries and test executables against libtorch so they run as built.
//!
//! torch-sys finds libtorch (here: PyPI's torch, `LIBTORCH_USE_PYTORCH=1`) and exports its lib
//! folder as `DEP_TCH_LIBTORCH_LIB`. Two things it leaves to us:
//! - an rpath, so nothing needs LD_LIBRARY_PATH at run time;
//! - libtorch_cuda: nothing in our code calls into it directly, so the linker's default
//!   `--as-needed` drops it and `tch::Cuda::is_available()` is then false even on a GPU machine.
//!   Linking it with `--no-as-needed` keeps it in DT_NEEDED.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let Ok(lib) = env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
