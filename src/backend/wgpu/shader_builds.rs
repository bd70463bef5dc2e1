//! Second builds of a WGSL shader from the same source, so both run the same kernel code and only
//! the build needing an optional feature asks for it. build.rs validates every build from this
//! file.
//!
//! - f16 weights: a shader that can read its weights in half precision names their element type
//!   through one alias line, [`F32_WEIGHTS`]; its f16 build switches the alias and enables the
//!   `f16` extension.
//! - subgroups: a shader's subgroup build puts `<family>_subgroup.wgsl` between its
//!   [`SUBGROUP_BEGIN`] and [`SUBGROUP_END`] lines. norm.wgsl's region holds its shared-memory
//!   `workgroup_sum`, which norm_subgroup.wgsl's reduction replaces; gemm.wgsl's is empty, and
//!   gemm_subgroup.wgsl adds a GEMM kernel there (its f16 build is the f16 build of that).

/// The alias line of a shader's f32 build.
pub const F32_WEIGHTS: &str = "alias Weight = f32;";

/// `source` with f16 weights, or `None` when it has no [`F32_WEIGHTS`] line. The directive goes
/// in front of the first line (the shader's header comment), so line numbers stay those of the
/// file.
pub fn f16_build(source: &str) -> Option<String> {
    source.contains(F32_WEIGHTS).then(|| {
        format!(
            "enable f16; {}",
            source.replacen(F32_WEIGHTS, "alias Weight = f16;", 1)
        )
    })
}

/// The first and last lines of a shader's subgroup region.
pub const SUBGROUP_BEGIN: &str = "// subgroup build begin";
pub const SUBGROUP_END: &str = "// subgroup build end";

/// `source` with its subgroup region replaced by `fragment`, or `None` when it has no region.
pub fn subgroup_build(source: &str, fragment: &str) -> Option<String> {
    let begin = source.find(SUBGROUP_BEGIN)?;
    let end = begin + source[begin..].find(SUBGROUP_END)? + SUBGROUP_END.len();
    Some(format!("{}{fragment}{}", &source[..begin], &source[end..]))
}
