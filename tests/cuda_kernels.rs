//! Every CUDA kernel family compiles with NVRTC to a cubin for sm_80 and sm_90 (the project's
//! GPU machines are sm_90; sm_80 keeps A100s in reach), and each architecture-specific family
//! (the Hopper GEMM, wgmma and TMA) for its own target, sm_90a, so a syntax error, a missing
//! symbol or a register / shared-memory overrun fails CI on a machine without a GPU. Running
//! them needs a GPU.
//!
//! NVRTC comes from the pip package nvidia-cuda-nvrtc (tools/test.sh installs the 13.0 release and
//! puts it on LD_LIBRARY_PATH, and sets MSCOPE_REQUIRE_NVRTC=1 so its absence fails instead of
//! being reported as skipped).

mod common;

use common::{current_test, report_skip};
use mscope::backend::cuda::nvrtc::{
    compile_cubin, family_target, nvrtc_available, nvrtc_version, ARCH_SPECIFIC_FAMILIES,
    KERNEL_SOURCES,
};

/// The NVRTC targets CI compiles `family` for.
fn targets(family: &str) -> Vec<&'static str> {
    match ARCH_SPECIFIC_FAMILIES.iter().find(|(f, _)| *f == family) {
        Some(&(_, target)) => vec![target],
        None => vec!["sm_80", "sm_90"],
    }
}

#[test]
fn every_kernel_family_compiles_for_its_targets() {
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
            targets(family)
                .into_iter()
                .map(move |arch| compile_cubin(family, source, arch))
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

/// The Hopper GEMM is embedded, runs only on sm_90 devices as sm_90a, compiles there with its
/// entry point in the cubin, and refuses plain sm_90 with its own message.
#[test]
fn the_hopper_gemm_compiles_for_sm90a_only() {
    let source = KERNEL_SOURCES
        .iter()
        .find(|(family, _)| *family == "gemm_sm90")
        .map(|&(_, source)| source)
        .expect("kernels/gemm_sm90.cu is embedded");
    assert_eq!(family_target("gemm_sm90", "sm_90").as_deref(), Ok("sm_90a"));
    assert!(family_target("gemm_sm90", "sm_80").is_err());
    assert_eq!(family_target("gemm", "sm_80").as_deref(), Ok("sm_80"));
    if !nvrtc_available() {
        report_skip(&current_test(), "cuda", "NVRTC not found");
        return;
    }
    let cubin = compile_cubin("gemm_sm90", source, "sm_90a").unwrap();
    let entry = b"gemm_v10_wgmma_bf16";
    assert!(
        cubin.windows(entry.len()).any(|w| w == entry),
        "the cubin holds the kernel"
    );
    let err = compile_cubin("gemm_sm90", source, "sm_90").unwrap_err();
    assert!(err.contains("compile it for sm_90a"), "{err}");
}
