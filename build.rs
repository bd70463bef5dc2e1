//! Validates every `shaders/*.wgsl` with naga, so a shader error fails the build with its file
//! and line instead of surfacing at run time on some user's GPU.

use std::path::Path;

fn main() {
    println!("cargo::rerun-if-changed=shaders");
    let mut shaders: Vec<_> = std::fs::read_dir("shaders")
        .expect("shaders/ exists")
        .map(|entry| entry.expect("readable shaders/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .collect();
    shaders.sort();
    let failures: Vec<String> = shaders
        .iter()
        .filter_map(|path| validate(path).err())
        .collect();
    if !failures.is_empty() {
        panic!("invalid WGSL:\n{}", failures.join("\n"));
    }
}

fn validate(path: &Path) -> Result<(), String> {
    let source = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let name = path.display().to_string();
    let module = naga::front::wgsl::parse_str(&source)
        .map_err(|e| e.emit_to_string_with_path(&source, &name))?;
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .map_err(|e| e.emit_to_string_with_path(&source, &name))?;
    Ok(())
}
