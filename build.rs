//! Link-time set-up for libtorch from the PyPI wheel.
//!
//! * rpath to torch's `lib/`, so the binary starts without `LD_LIBRARY_PATH`: first where
//!   `make install` puts libtorch beside an installed binary (`PREFIX/lib/moslora/torch/lib`,
//!   which does not exist beside `target/release/`), then the wheel's own folder, so a binary
//!   run from the build uses the wheel and an installed one its own copy;
//! * `libtorch_cuda` linked with `--no-as-needed`: nothing references its symbols directly
//!   (kernels register themselves at load time), so the linker would otherwise drop it and
//!   CUDA would never be available.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib/moslora/torch/lib:{lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
