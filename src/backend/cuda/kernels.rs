//! The CUDA kernel families of `kernels/`, embedded at build time, and their compilation by
//! NVRTC (loaded dynamically, like the driver: nothing is needed to build).

use std::ffi::CString;

use cudarc::nvrtc::{result, sys};

include!(concat!(env!("OUT_DIR"), "/cuda_kernels.rs"));

/// Whether the NVRTC library can be loaded (cudarc panics on first use otherwise).
pub fn nvrtc_available() -> bool {
    // SAFETY: only probes whether the library can be loaded.
    unsafe { sys::is_culib_present() }
}

/// NVRTC's version, e.g. (13, 0).
pub fn nvrtc_version() -> Result<(i32, i32), String> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: both pointers are valid for writes.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| e.to_string())?;
    Ok((major, minor))
}

/// Compiles one family to a cubin for `arch` (e.g. "sm_90"). Producing a cubin runs ptxas, so
/// register and shared-memory limits are checked, not only the syntax. Returns the cubin size,
/// or NVRTC's log naming the family.
pub fn compile_cubin(family: &str, source: &str, arch: &str) -> Result<usize, String> {
    let fail = |what: String| format!("{family}.cu for {arch}: {what}");
    let src = CString::new(source).map_err(|e| fail(e.to_string()))?;
    let name = CString::new(format!("{family}.cu")).expect("family names have no NUL");
    let prog = result::create_program(&src, Some(&name)).map_err(|e| fail(e.to_string()))?;
    let options = [
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "-default-device".to_string(),
    ];
    // SAFETY: `prog` was created above and is destroyed once, below; `src` and `name` outlive it.
    let outcome = unsafe {
        match result::compile_program(prog, &options) {
            Ok(()) => {
                let mut size = 0usize;
                sys::nvrtcGetCUBINSize(prog, &mut size)
                    .result()
                    .map(|()| size)
                    .map_err(|e| e.to_string())
            }
            Err(e) => {
                let log = result::get_program_log(prog).map(|chars| {
                    let bytes: Vec<u8> = chars
                        .iter()
                        .map(|&c| c as u8)
                        .take_while(|&b| b != 0)
                        .collect();
                    String::from_utf8_lossy(&bytes).into_owned()
                });
                Err(format!("{e}\n{}", log.unwrap_or_default()))
            }
        }
    };
    // SAFETY: created above and not destroyed before.
    let _ = unsafe { result::destroy_program(prog) };
    outcome.map_err(fail)
}
