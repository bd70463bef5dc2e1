//! Second builds of a WGSL shader from the same source, so both run the same kernel code and only
//! the build needing an optional feature asks for it. build.rs validates every build from this
//! file.
//!
//! - f16 weights: a shader that can read its weights in half precision names their element type
//!   through one alias line, [`F32_WEIGHTS`]; its f16 build switches the alias and enables the
//!   `f16` extension.
//! - subgroup reductions: norm.wgsl's kernels sum through `workgroup_sum`, defined between its
//!   [`REDUCTION_BEGIN`] and [`REDUCTION_END`] lines; its subgroup build puts
//!   norm_subgroup.wgsl's reduction there.

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

/// The first and last lines of a shader's replaceable reduction.
pub const REDUCTION_BEGIN: &str = "// reduction begin";
pub const REDUCTION_END: &str = "// reduction end";

/// `source` with its reduction region replaced by `reduction`, or `None` when it has no region.
pub fn with_reduction(source: &str, reduction: &str) -> Option<String> {
    let begin = source.find(REDUCTION_BEGIN)?;
    let end = begin + source[begin..].find(REDUCTION_END)? + REDUCTION_END.len();
    Some(format!("{}{reduction}{}", &source[..begin], &source[end..]))
}
