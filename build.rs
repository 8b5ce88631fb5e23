//! Link-time set-up for libtorch from the PyPI wheel.
//!
//! * rpath to torch's `lib/`, so the binary starts without `LD_LIBRARY_PATH`;
//! * `libtorch_cuda` linked with `--no-as-needed`: nothing references its symbols directly
//!   (kernels register themselves at load time), so the linker would otherwise drop it and
//!   CUDA would never be available.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
