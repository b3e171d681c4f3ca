//! Gives the shared library a versioned soname, so programs link against
//! `libbuilddir.so.0` and a future incompatible ABI can sit beside it.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libbuilddir.so.0");
}
