//! The f16-weight build of a WGSL shader. A shader that can read its weights in half precision
//! names their element type through one alias line, [`F32_WEIGHTS`]; its f16 build switches the
//! alias and enables the `f16` extension, so both builds run the same code. The f32 build needs
//! no extension and so runs on every adapter. build.rs validates both builds from this file.

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
