fn main() -> std::process::ExitCode {
    mscope::phases::mark("start");
    #[cfg(target_os = "linux")]
    give_mesa_a_runtime_dir();
    let status = mscope::cli::main();
    mscope::phases::mark("end of main");
    status
}

/// Mesa's Vulkan drivers print "error: XDG_RUNTIME_DIR is invalid or not set" for every wgpu
/// instance when the variable is unset (servers, containers, CI), although compute needs no
/// display. A private directory for this process keeps such lines out of mscope's output.
#[cfg(target_os = "linux")]
fn give_mesa_a_runtime_dir() {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return;
    }
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("mscope-runtime-{uid}"));
    let usable = std::fs::DirBuilder::new().mode(0o700).create(&dir).is_ok()
        || std::fs::metadata(&dir).is_ok_and(|m| m.is_dir() && m.uid() == uid);
    if usable {
        // Single-threaded here: nothing else reads the environment yet.
        std::env::set_var("XDG_RUNTIME_DIR", dir);
    }
}
