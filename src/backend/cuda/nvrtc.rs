//! The CUDA kernel families of `kernels/`, embedded at build time, their compilation by NVRTC
//! (loaded dynamically, like the driver: nothing is needed to build) and the module cache of an
//! opened device: each family is compiled at its first use for the device's own architecture,
//! kept loaded in memory, and kept as a cubin on disk keyed by (source hash, arch, NVRTC version),
//! so later runs skip NVRTC.

use std::collections::HashMap;
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{result, sys, Ptx};

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

/// NVRTC options of every compilation (the architecture comes first, added per call).
const OPTIONS: [&str; 2] = ["--std=c++17", "-default-device"];

/// Families of architecture-specific instructions and the one NVRTC target they compile for:
/// `gemm_sm90` (wgmma, TMA) exists only as `sm_90a`, which only sm_90 devices run. Every other
/// family compiles for the device's own architecture.
pub const ARCH_SPECIFIC_FAMILIES: [(&str, &str); 1] = [("gemm_sm90", "sm_90a")];

/// The NVRTC target of `family` on a device of architecture `device_arch` (e.g. "sm_90"), or
/// why the device cannot run it.
pub fn family_target(family: &str, device_arch: &str) -> Result<String, String> {
    match ARCH_SPECIFIC_FAMILIES.iter().find(|(f, _)| *f == family) {
        None => Ok(device_arch.to_string()),
        Some((_, target)) if target.strip_suffix('a') == Some(device_arch) => {
            Ok(target.to_string())
        }
        Some((_, target)) => Err(format!(
            "{family}.cu is compiled for {target} only; this device is {device_arch}"
        )),
    }
}

/// Compiles one family to a cubin for `arch` (e.g. "sm_90"). Producing a cubin runs ptxas, so
/// register and shared-memory limits are checked, not only the syntax. Returns the cubin, or
/// NVRTC's log naming the family.
pub fn compile_cubin(family: &str, source: &str, arch: &str) -> Result<Vec<u8>, String> {
    let fail = |what: String| format!("{family}.cu for {arch}: {what}");
    let src = CString::new(source).map_err(|e| fail(e.to_string()))?;
    let name = CString::new(format!("{family}.cu")).expect("family names have no NUL");
    let prog = result::create_program(&src, Some(&name)).map_err(|e| fail(e.to_string()))?;
    let options: Vec<String> = std::iter::once(format!("--gpu-architecture={arch}"))
        .chain(OPTIONS.iter().map(|o| o.to_string()))
        .collect();
    // SAFETY: `prog` was created above and is destroyed once, below; `src` and `name` outlive it.
    let outcome = unsafe {
        match result::compile_program(prog, &options) {
            Ok(()) => {
                let mut size = 0usize;
                sys::nvrtcGetCUBINSize(prog, &mut size)
                    .result()
                    .and_then(|()| {
                        let mut cubin = vec![0u8; size];
                        sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast())
                            .result()
                            .map(|()| cubin)
                    })
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

/// The embedded source of `family`.
fn source(family: &str) -> Option<&'static str> {
    KERNEL_SOURCES
        .iter()
        .find(|(f, _)| *f == family)
        .map(|&(_, s)| s)
}

/// FNV-1a, 64 bits: a hash that is the same in every build, for cache file names.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for &b in *part {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        h = (h ^ 0xff).wrapping_mul(0x0100_0000_01b3); // separates the parts
    }
    h
}

/// `$XDG_CACHE_HOME/mscope/cuda`, else `~/.cache/mscope/cuda`; `None` without either variable.
fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("mscope").join("cuda"))
}

/// The kernel modules of one device, compiled at first use.
pub(super) struct ModuleCache {
    ctx: Arc<CudaContext>,
    /// `sm_{major}{minor}` of the device.
    arch: String,
    nvrtc: (i32, i32),
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
}

impl ModuleCache {
    pub(super) fn new(ctx: Arc<CudaContext>, arch: String, nvrtc: (i32, i32)) -> Self {
        ModuleCache {
            ctx,
            arch,
            nvrtc,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        }
    }

    /// Entry point `name` of `family`, compiling and loading the family on first use.
    pub(super) fn function(
        &self,
        family: &'static str,
        name: &'static str,
    ) -> Result<CudaFunction, String> {
        let mut functions = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = functions.get(name) {
            return Ok(f.clone());
        }
        let module = self.module(family)?;
        let f = module
            .load_function(name)
            .map_err(|e| format!("{family}.cu: entry point {name}: {e}"))?;
        functions.insert(name, f.clone());
        Ok(f)
    }

    fn module(&self, family: &'static str) -> Result<Arc<CudaModule>, String> {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = modules.get(family) {
            return Ok(m.clone());
        }
        let source = source(family).ok_or_else(|| format!("no kernel family {family}"))?;
        let arch = family_target(family, &self.arch)?;
        let version = format!("{}.{}", self.nvrtc.0, self.nvrtc.1);
        let key = fnv1a(&[
            source.as_bytes(),
            arch.as_bytes(),
            version.as_bytes(),
            OPTIONS.join(" ").as_bytes(),
        ]);
        let path =
            cache_dir().map(|d| d.join(format!("{family}-{arch}-nvrtc{version}-{key:016x}.cubin")));
        // A cached cubin that the driver rejects (truncated, foreign) is compiled afresh.
        let cached = path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|cubin| self.ctx.load_module(Ptx::from_binary(cubin)).ok());
        let module = match cached {
            Some(m) => m,
            None => {
                let cubin = compile_cubin(family, source, &arch)?;
                if let Some(p) = &path {
                    store(p, &cubin);
                }
                self.ctx
                    .load_module(Ptx::from_binary(cubin))
                    .map_err(|e| format!("{family}.cu for {arch}: loading the cubin: {e}"))?
            }
        };
        modules.insert(family, module.clone());
        Ok(module)
    }
}

/// Writes a cubin to the disk cache through a temporary name, so a concurrent reader never sees
/// half a file. The cache is an optimisation: failures only cost a recompilation next time.
fn store(path: &std::path::Path, cubin: &[u8]) {
    let Some(dir) = path.parent() else { return };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&tmp, cubin))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}
