//! Validates every `shaders/*.wgsl` with naga, so a shader error fails the build with its file
//! and line instead of surfacing at run time on some user's GPU; embeds every `kernels/*.cu`
//! family (with its `#include "*.cuh"` lines spliced in) for NVRTC to compile at run time.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[path = "src/backend/wgpu/shader_builds.rs"]
mod shader_builds;

fn main() {
    println!("cargo::rerun-if-changed=shaders");
    println!("cargo::rerun-if-changed=kernels");
    println!("cargo::rerun-if-changed=src/backend/wgpu/shader_builds.rs");
    let failures: Vec<String> = files_with_extension("shaders", "wgsl")
        .iter()
        .filter_map(|p| validate(p).err())
        .collect();
    if !failures.is_empty() {
        panic!("invalid WGSL:\n{}", failures.join("\n"));
    }
    embed_cuda_kernels();
}

fn files_with_extension(dir: &str, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}/: {e}"))
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

/// Validates the shader and, where it has them, its f16-weight and subgroup builds (and the f16
/// build of the subgroup build). A `<family>_subgroup.wgsl` fragment is validated inside its
/// family's subgroup build only.
fn validate(path: &Path) -> Result<(), String> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if stem.ends_with("_subgroup") {
        return Ok(());
    }
    let source = read(path)?;
    let name = path.display().to_string();
    validate_source(&source, &name)?;
    if let Some(f16) = shader_builds::f16_build(&source) {
        validate_source(&f16, &format!("{name} (f16 build)"))?;
    }
    let fragment_path = path.with_file_name(format!("{stem}_subgroup.wgsl"));
    if fragment_path.exists() {
        let fragment = read(&fragment_path)?;
        let build = shader_builds::subgroup_build(&source, &fragment).ok_or_else(|| {
            format!(
                "{name}: {} exists but the shader has no subgroup build markers",
                fragment_path.display()
            )
        })?;
        validate_source(&build, &format!("{name} (subgroup build)"))?;
        if let Some(f16) = shader_builds::f16_build(&build) {
            validate_source(&f16, &format!("{name} (f16 subgroup build)"))?;
        }
    }
    Ok(())
}

fn validate_source(source: &str, name: &str) -> Result<(), String> {
    let module = naga::front::wgsl::parse_str(source)
        .map_err(|e| e.emit_to_string_with_path(source, name))?;
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .map_err(|e| e.emit_to_string_with_path(source, name))?;
    Ok(())
}

/// Replaces `#include "x.cuh"` with the header's text (once per header), so NVRTC needs no
/// include path and the binary carries self-contained sources.
fn splice_headers(path: &Path) -> String {
    let source =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = String::new();
    for line in source.lines() {
        let header = line
            .trim()
            .strip_prefix("#include \"")
            .and_then(|rest| rest.strip_suffix(".cuh\""));
        match header {
            Some(name) => {
                let header_path = path.with_file_name(format!("{name}.cuh"));
                let text = std::fs::read_to_string(&header_path).unwrap_or_else(|e| {
                    panic!("{}: {}: {e}", path.display(), header_path.display())
                });
                out.push_str(&text.replace("#pragma once", ""));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn embed_cuda_kernels() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut table = String::from(
        "/// Every kernel family of kernels/: (family, self-contained CUDA source).\n",
    );
    table.push_str("pub const KERNEL_SOURCES: &[(&str, &str)] = &[\n");
    for path in files_with_extension("kernels", "cu") {
        let family = path
            .file_stem()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        let spliced = out_dir.join(format!("{family}.cu"));
        std::fs::write(&spliced, splice_headers(&path)).expect("OUT_DIR is writable");
        writeln!(
            table,
            "    ({family:?}, include_str!({:?})),",
            spliced.display().to_string()
        )
        .unwrap();
    }
    table.push_str("];\n");
    std::fs::write(out_dir.join("cuda_kernels.rs"), table).expect("OUT_DIR is writable");
}
