//! Every CUDA kernel family compiles with NVRTC to a cubin for sm_80 and sm_90 (the project's
//! GPU machines are sm_90; sm_80 keeps A100s in reach), so a syntax error, a missing symbol or a
//! register / shared-memory overrun fails CI on a machine without a GPU. Running them needs a GPU.
//!
//! NVRTC comes from the pip package nvidia-cuda-nvrtc (tools/test.sh installs the 13.0 release and
//! puts it on LD_LIBRARY_PATH, and sets MSCOPE_REQUIRE_NVRTC=1 so its absence fails instead of
//! being reported as skipped).

mod common;

use common::{current_test, report_skip};
use mscope::backend::cuda::nvrtc::{compile_cubin, nvrtc_available, nvrtc_version, KERNEL_SOURCES};

#[test]
fn every_kernel_family_compiles_for_sm80_and_sm90() {
    if !nvrtc_available() {
        assert!(
            std::env::var_os("MSCOPE_REQUIRE_NVRTC").is_none(),
            "MSCOPE_REQUIRE_NVRTC is set but NVRTC cannot be loaded"
        );
        report_skip(
            &current_test(),
            "cuda",
            "NVRTC not found (run through tools/test.sh)",
        );
        return;
    }
    eprintln!("NVRTC {:?}", nvrtc_version().unwrap());
    assert!(!KERNEL_SOURCES.is_empty(), "no kernel family embedded");
    let failures: Vec<String> = KERNEL_SOURCES
        .iter()
        .flat_map(|&(family, source)| {
            ["sm_80", "sm_90"].map(|arch| compile_cubin(family, source, arch))
        })
        .filter_map(Result::err)
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_broken_kernel_is_reported_with_its_log() {
    if !nvrtc_available() {
        report_skip(&current_test(), "cuda", "NVRTC not found");
        return;
    }
    let err = compile_cubin(
        "broken",
        "extern \"C\" __global__ void k() { undefined_symbol(); }",
        "sm_90",
    )
    .unwrap_err();
    assert!(
        err.contains("broken.cu") && err.contains("undefined_symbol"),
        "{err}"
    );
}
