//! `include/builddir.h` must describe this library exactly. This test
//! generates C (and C++) from the Rust declarations — struct sizes and
//! offsets, enum values, constants, and every exported function's type —
//! compiles it with the system compiler against the checked-in header, and
//! links and runs it against the built library. Any drift in either
//! direction fails: a changed Rust signature does not compile here, a
//! changed header does not compile there (struct fields are checked for
//! their exact C type, so signedness too), and a function or enumerator
//! present on one side only is reported by name. The functions the built
//! `libbuilddir.so` exports (`nm -D`) must be exactly those the header
//! declares, and the statuses come from the enum's own declaration (no
//! hand-kept list).

use std::collections::BTreeSet;
use std::ffi::{c_char, c_int};
use std::fmt::Write as _;
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

use builddir::*;

/// Each exported function: its Rust type (checked by the compiler here) and
/// its C type (checked by the C compiler against the header).
macro_rules! functions {
    ($( $name:ident ( $( $rt:ty => $ct:literal ),* ) -> $rr:ty => $cr:literal ; )*) => {
        #[allow(clippy::type_complexity)]
        fn rust_signatures_are_these() {
            $( let _: unsafe extern "C" fn($($rt),*) -> $rr = $name; )*
        }
        const FUNCTIONS: &[(&str, &str, &[&str])] = &[ $( (stringify!($name), $cr, &[$($ct),*]) ),* ];
    };
}

functions! {
    builddir_version() -> *const c_char => "const char *";
    // The C enum is taken as `int` on the Rust side: any value C passes
    // stays defined behaviour (same ABI).
    builddir_status_str(c_int => "builddir_status") -> *const c_char => "const char *";
    builddir_connect(
        *const c_char => "const char *",
        *mut *mut builddir_conn => "builddir_conn **",
        *mut c_char => "char *",
        usize => "size_t"
    ) -> builddir_status => "builddir_status";
    builddir_allocate(
        *mut builddir_conn => "builddir_conn *",
        *const c_char => "const char *",
        *const builddir_owner => "const builddir_owner *",
        *const builddir_limits => "const builddir_limits *",
        *mut builddir_lease => "builddir_lease *",
        *mut c_char => "char *",
        usize => "size_t"
    ) -> builddir_status => "builddir_status";
    builddir_keep(
        *mut builddir_conn => "builddir_conn *",
        *mut builddir_lease => "builddir_lease *",
        *mut builddir_outcome => "builddir_outcome *",
        *mut c_char => "char *",
        usize => "size_t"
    ) -> builddir_status => "builddir_status";
    builddir_keep_for(
        *mut builddir_conn => "builddir_conn *",
        *mut builddir_lease => "builddir_lease *",
        *const builddir_owner => "const builddir_owner *",
        *mut builddir_outcome => "builddir_outcome *",
        *mut c_char => "char *",
        usize => "size_t"
    ) -> builddir_status => "builddir_status";
    builddir_release(
        *mut builddir_conn => "builddir_conn *",
        *mut builddir_lease => "builddir_lease *",
        *mut builddir_outcome => "builddir_outcome *",
        *mut c_char => "char *",
        usize => "size_t"
    ) -> builddir_status => "builddir_status";
    builddir_close(*mut builddir_conn => "builddir_conn *") -> () => "void";
    builddir_set_timeout(
        *mut builddir_conn => "builddir_conn *",
        u32 => "uint32_t",
        *mut c_char => "char *",
        usize => "size_t"
    ) -> builddir_status => "builddir_status";
    builddir_reconnect(
        *mut builddir_conn => "builddir_conn *",
        *mut u32 => "uint32_t *",
        *mut c_char => "char *",
        usize => "size_t"
    ) -> builddir_status => "builddir_status";
}

fn header() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("include/builddir.h")
}

/// The C source that must compile against the header.
fn checks() -> String {
    let mut c = String::from(
        "#include \"builddir.h\"\n#include <stddef.h>\n#include <string.h>\n#include <stdio.h>\n\
         #ifdef __cplusplus\n#include <type_traits>\n#define SA static_assert\n\
         #define IS_TYPE(e, T) (std::is_same<std::remove_cv<std::remove_reference<decltype(e)>::type>::type, T>::value)\n\
         #else\n#define SA _Static_assert\n#define IS_TYPE(e, T) _Generic((e), T: 1, default: 0)\n#endif\n",
    );
    let mut sa = |cond: String| writeln!(c, "SA({cond}, \"{}\");", cond.replace('"', "'")).unwrap();
    macro_rules! layout {
        ($ty:ident { $($field:ident),* }) => {
            sa(format!("sizeof({}) == {}", stringify!($ty), size_of::<$ty>()));
            $( sa(format!("offsetof({}, {}) == {}", stringify!($ty), stringify!($field), offset_of!($ty, $field))); )*
            $( sa(format!("sizeof((({}*)0)->{}) == {}", stringify!($ty), stringify!($field), {
                let v: $ty = unsafe_zeroed();
                size_of_val(&v.$field)
            })); )*
            // The exact C type (signedness included) of each field, or of
            // an array's elements.
            $( sa({
                let v: $ty = unsafe_zeroed();
                let (ctype, index) = c_type_of(&v.$field);
                format!("IS_TYPE((({}*)0)->{}{index}, {ctype})", stringify!($ty), stringify!($field))
            }); )*
        };
    }
    layout!(builddir_owner { uid, gid });
    layout!(builddir_limits { bytes, inodes });
    layout!(builddir_lease {
        dir_fd,
        uid,
        gid,
        id,
        path
    });
    layout!(builddir_outcome {
        kept_path,
        limit_reached
    });
    sa(format!(
        "sizeof(builddir_status) == {}",
        size_of::<builddir_status>()
    ));
    for &s in builddir_status::ALL {
        sa(format!("{} == {}", s.c_name(), s as c_int));
    }
    sa(format!("BUILDDIR_ID_MAX == {BUILDDIR_ID_MAX}"));
    sa(format!("BUILDDIR_PATH_MAX == {BUILDDIR_PATH_MAX}"));
    for (name, ret, args) in FUNCTIONS {
        let args = if args.is_empty() {
            "void".to_owned()
        } else {
            args.join(", ")
        };
        writeln!(c, "static {ret} (*const check_{name})({args}) = {name};").unwrap();
    }
    // At run time: the constants C sees are the library's, and every
    // function links.
    writeln!(c, "int main(void) {{").unwrap();
    writeln!(
        c,
        "  if (strcmp(BUILDDIR_DEFAULT_SOCKET, \"{BUILDDIR_DEFAULT_SOCKET}\") != 0) {{ puts(\"BUILDDIR_DEFAULT_SOCKET differs\"); return 1; }}"
    )
    .unwrap();
    for (name, _, _) in FUNCTIONS {
        writeln!(c, "  (void)check_{name};").unwrap();
    }
    for &s in builddir_status::ALL {
        let want = s.name_nul().trim_end_matches('\0');
        writeln!(
            c,
            "  if (strcmp(builddir_status_str({}), \"{want}\") != 0) {{ puts(\"status_str({}) differs\"); return 1; }}",
            s.c_name(),
            s.c_name()
        )
        .unwrap();
    }
    writeln!(
        c,
        "  printf(\"%s\\n\", builddir_version());\n  return 0;\n}}"
    )
    .unwrap();
    c
}

/// The C type a field of Rust type `T` must have in the header, and the
/// index expression that reaches a scalar (`"[0]"` for arrays).
fn c_type_of<T: CType>(_: &T) -> (&'static str, &'static str) {
    (T::C_TYPE, T::INDEX)
}

trait CType {
    const C_TYPE: &'static str;
    const INDEX: &'static str = "";
}
impl CType for u32 {
    const C_TYPE: &'static str = "uint32_t";
}
impl CType for u64 {
    const C_TYPE: &'static str = "uint64_t";
}
// `c_int`, which is `i32` on every target Rust and this library support.
impl CType for i32 {
    const C_TYPE: &'static str = "int";
}
impl<const N: usize> CType for [c_char; N] {
    const C_TYPE: &'static str = "char";
    const INDEX: &'static str = "[0]";
}

/// A zeroed value of a plain-old-data C struct, only to measure a field.
fn unsafe_zeroed<T: Zeroable>() -> T {
    T::zeroed()
}

trait Zeroable {
    fn zeroed() -> Self;
}
impl Zeroable for builddir_owner {
    fn zeroed() -> Self {
        builddir_owner { uid: 0, gid: 0 }
    }
}
impl Zeroable for builddir_limits {
    fn zeroed() -> Self {
        builddir_limits {
            bytes: 0,
            inodes: 0,
        }
    }
}
impl Zeroable for builddir_lease {
    fn zeroed() -> Self {
        builddir_lease {
            dir_fd: 0,
            uid: 0,
            gid: 0,
            id: [0; BUILDDIR_ID_MAX],
            path: [0; BUILDDIR_PATH_MAX],
        }
    }
}
impl Zeroable for builddir_outcome {
    fn zeroed() -> Self {
        builddir_outcome {
            kept_path: [0; BUILDDIR_PATH_MAX],
            limit_reached: 0,
        }
    }
}

/// Where cargo put libbuilddir.so for this test run (target/<profile>/deps).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap().to_owned();
    assert!(
        deps.join("libbuilddir.so").exists(),
        "libbuilddir.so not found in {}; build the crate first",
        deps.display()
    );
    deps
}

fn compile_and_run(compiler: &str, lang: &str) {
    let dir = std::env::temp_dir().join(format!("builddir-header-{}-{lang}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("check.c");
    std::fs::write(&src, checks()).unwrap();
    let exe = dir.join("check");
    // The library's soname is libbuilddir.so.0, as an install names it.
    let lib = dir.join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    for name in ["libbuilddir.so", "libbuilddir.so.0"] {
        let _ = std::fs::remove_file(lib.join(name));
        std::os::unix::fs::symlink(lib_dir().join("libbuilddir.so"), lib.join(name)).unwrap();
    }
    let include = header().parent().unwrap().to_owned();
    let out = Command::new(compiler)
        .args(["-x", lang])
        .arg(if lang == "c" {
            "-std=c11"
        } else {
            "-std=c++11"
        })
        .args(["-Wall", "-Wextra", "-Werror", "-pedantic"])
        .arg("-I")
        .arg(&include)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lbuilddir")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {compiler}: {e}; install a C compiler (gcc)"));
    assert!(
        out.status.success(),
        "{compiler} ({lang}) rejects include/builddir.h against the library's declarations:\n{}\n--- generated source ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        checks()
    );
    let run = Command::new(&exe).output().unwrap();
    assert!(
        run.status.success(),
        "{lang} check failed at run time ({}): {} {}",
        run.status,
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        env!("CARGO_PKG_VERSION")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn header_matches_the_library_in_c() {
    rust_signatures_are_these();
    compile_and_run("cc", "c");
}

#[test]
fn header_matches_the_library_in_cxx() {
    compile_and_run("c++", "c++");
}

/// The functions `builddir.h` declares (outside comments).
fn declared_functions(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("/*") && !l.trim_start().starts_with('*'))
        .flat_map(|l| {
            l.match_indices("builddir_")
                .filter_map(|(i, _)| {
                    let rest = &l[i..];
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    rest[name.len()..].starts_with('(').then_some(name)
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_built_library_exports_exactly_the_functions_the_header_declares() {
    let so = lib_dir().join("libbuilddir.so");
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&so)
        .output()
        .unwrap_or_else(|e| panic!("cannot run nm: {e}; install binutils"));
    assert!(
        out.status.success(),
        "nm -D {}: {}",
        so.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let exported: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|name| name.starts_with("builddir_"))
        .map(str::to_owned)
        .collect();
    let declared = declared_functions(&std::fs::read_to_string(header()).unwrap());
    assert_eq!(
        exported,
        declared,
        "builddir_* symbols exported by {} (nm -D) vs functions declared in builddir.h",
        so.display()
    );
}

#[test]
fn header_declares_exactly_the_library_functions_and_statuses() {
    let text = std::fs::read_to_string(header()).unwrap();
    let declared = declared_functions(&text);
    let exported: BTreeSet<String> = FUNCTIONS.iter().map(|(n, _, _)| n.to_string()).collect();
    assert_eq!(declared, exported, "functions in builddir.h vs the library");
    let enumerators: BTreeSet<String> = text
        .lines()
        .filter_map(|l| {
            let t = l.trim_start();
            t.starts_with("BUILDDIR_")
                .then(|| t.split(|c: char| c.is_whitespace() || c == '=').next())
                .flatten()
                .map(str::to_owned)
        })
        .collect();
    let statuses: BTreeSet<String> = builddir_status::ALL
        .iter()
        .map(|s| s.c_name().to_owned())
        .collect();
    assert_eq!(
        enumerators, statuses,
        "builddir_status in builddir.h vs the library"
    );
}
