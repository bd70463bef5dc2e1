//! The WGSL entry points the backend dispatches, their explicit bind-group layouts, and their
//! uniform parameter blocks (each mirrors the `Params` struct of its shader, padded to 16 bytes).
//!
//! Every kernel binds its `Params` uniform at binding 0 and its storage buffers from binding 1 on,
//! in the order [`Kernel::storage`] lists (so entry points sharing a file share one `Params`). Layouts are explicit because with `layout: None` wgpu drops
//! bindings a shader does not statically use, and bind groups would then stop matching.

use std::borrow::Cow;
use std::sync::OnceLock;

use bytemuck::{Pod, Zeroable};

use super::shader_builds::{f16_build, with_reduction};

/// How a kernel uses one storage binding.
#[derive(Clone, Copy)]
pub(super) enum Access {
    Read,
    ReadWrite,
}

use Access::{Read, ReadWrite};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kernel {
    Gather,
    Pool,
    LayerNorm,
    L2Normalize,
    /// GEMM variant 2 (tiled): workgroup-shared tiles (GPUs).
    LinearTiled,
    /// GEMM variant 3 (direct): no shared tiles or barriers (software adapters).
    LinearDirect,
    Attention,
    /// NTK contraction variant 2 (tiled): workgroup-shared tiles (GPUs).
    ContractTiled,
    /// NTK contraction variant 3 (direct): no shared tiles or barriers (software adapters).
    ContractDirect,
    JlProject,
    GroupSums,
    ScatterTiled,
    /// Trim stage 1: bitonic stages within a workgroup tile.
    BitonicLocal,
    /// Trim stage 2: one bitonic stage with a long stride, in storage.
    BitonicGlobal,
    /// Trim stage 3: merged ECDF counts by binary search.
    EcdfCounts,
    /// GEMM variant 5 (tiled-f16): variant 2 on f16 weights (gemm.wgsl's f16 build).
    LinearTiledF16,
    /// GEMM variant 6 (direct-f16): variant 3 on f16 weights.
    LinearDirectF16,
    /// Gather from an f16 table (gather.wgsl's f16 build).
    GatherF16,
    RmsNorm,
    Rope,
    /// The norm family with subgroup reductions (norm.wgsl's subgroup build), where the device
    /// has them.
    LayerNormSubgroup,
    L2NormalizeSubgroup,
    RmsNormSubgroup,
}

impl Kernel {
    pub(super) const COUNT: usize = 23;

    fn index(self) -> usize {
        self as usize
    }

    /// The f16-weight GEMM with the same structure as `self` (GEMM variant 2 or 3).
    pub(super) fn with_f16_weights(self) -> Kernel {
        match self {
            Kernel::LinearDirect => Kernel::LinearDirectF16,
            _ => Kernel::LinearTiledF16,
        }
    }

    fn source(self) -> Cow<'static, str> {
        const GEMM: &str = include_str!("../../../shaders/gemm.wgsl");
        const GATHER: &str = include_str!("../../../shaders/gather.wgsl");
        const NORM: &str = include_str!("../../../shaders/norm.wgsl");
        let f16_build = |source| {
            Cow::Owned(f16_build(source).expect("the shader aliases its weight element type"))
        };
        Cow::Borrowed(match self {
            Kernel::Gather => GATHER,
            Kernel::GatherF16 => return f16_build(GATHER),
            Kernel::Pool => include_str!("../../../shaders/pool.wgsl"),
            Kernel::LayerNorm | Kernel::L2Normalize | Kernel::RmsNorm => NORM,
            Kernel::LinearTiled | Kernel::LinearDirect => GEMM,
            Kernel::LinearTiledF16 | Kernel::LinearDirectF16 => return f16_build(GEMM),
            Kernel::Attention => include_str!("../../../shaders/attention.wgsl"),
            Kernel::ContractTiled | Kernel::ContractDirect | Kernel::JlProject => {
                include_str!("../../../shaders/ntk.wgsl")
            }
            Kernel::GroupSums | Kernel::ScatterTiled => include_str!("../../../shaders/stats.wgsl"),
            Kernel::BitonicLocal | Kernel::BitonicGlobal | Kernel::EcdfCounts => {
                include_str!("../../../shaders/trim.wgsl")
            }
            Kernel::Rope => include_str!("../../../shaders/rope.wgsl"),
            Kernel::LayerNormSubgroup | Kernel::L2NormalizeSubgroup | Kernel::RmsNormSubgroup => {
                return Cow::Owned(
                    with_reduction(NORM, include_str!("../../../shaders/norm_subgroup.wgsl"))
                        .expect("norm.wgsl marks its reduction"),
                );
            }
        })
    }

    fn entry_point(self) -> &'static str {
        match self {
            Kernel::Gather | Kernel::GatherF16 => "gather_rows",
            Kernel::Pool => "pool",
            Kernel::LayerNorm | Kernel::LayerNormSubgroup => "layer_norm",
            Kernel::L2Normalize | Kernel::L2NormalizeSubgroup => "l2_normalize",
            Kernel::LinearTiled | Kernel::LinearTiledF16 => "linear_tiled",
            Kernel::LinearDirect | Kernel::LinearDirectF16 => "linear_direct",
            Kernel::Attention => "attention_online",
            Kernel::ContractTiled => "contract_tiled",
            Kernel::ContractDirect => "contract_direct",
            Kernel::JlProject => "jl_project",
            Kernel::GroupSums => "group_sums",
            Kernel::ScatterTiled => "scatter_tiled",
            Kernel::BitonicLocal => "bitonic_local",
            Kernel::BitonicGlobal => "bitonic_global",
            Kernel::EcdfCounts => "ecdf_counts",
            Kernel::RmsNorm | Kernel::RmsNormSubgroup => "rms_norm",
            Kernel::Rope => "rope",
        }
    }

    /// Storage bindings from binding 1 on; binding 0 is the `Params` uniform.
    pub(super) fn storage(self) -> &'static [Access] {
        match self {
            // table part, ids, out
            Kernel::Gather | Kernel::GatherF16 => &[Read, Read, ReadWrite],
            // hidden, sequence starts, out
            Kernel::Pool => &[Read, Read, ReadWrite],
            // x, gamma, beta
            Kernel::LayerNorm => &[ReadWrite, Read, Read],
            // x
            Kernel::L2Normalize => &[ReadWrite],
            // x, w, bias, residual, out
            Kernel::LinearTiled
            | Kernel::LinearDirect
            | Kernel::LinearTiledF16
            | Kernel::LinearDirectF16 => &[Read, Read, Read, Read, ReadWrite],
            // qkv, sequence starts, out
            Kernel::Attention => &[Read, Read, ReadWrite],
            // D_r, D_c, A_r, A_c, out
            Kernel::ContractTiled | Kernel::ContractDirect => &[Read, Read, Read, Read, ReadWrite],
            // x, out
            Kernel::JlProject => &[Read, ReadWrite],
            // x, rows, items, means, partial
            Kernel::GroupSums | Kernel::ScatterTiled => &[Read, Read, Read, Read, ReadWrite],
            // keys
            Kernel::BitonicLocal | Kernel::BitonicGlobal => &[ReadWrite],
            // sorted rows, sorted reference, counts
            Kernel::EcdfCounts => &[Read, Read, ReadWrite],
            Kernel::LayerNormSubgroup => Kernel::LayerNorm.storage(),
            Kernel::L2NormalizeSubgroup => Kernel::L2Normalize.storage(),
            // x, gamma
            Kernel::RmsNorm | Kernel::RmsNormSubgroup => &[ReadWrite, Read],
            // qkv, positions, (cos, sin) table
            Kernel::Rope => &[ReadWrite, Read, Read],
        }
    }

    /// The subgroup twin of a norm-family kernel; other kernels have none and map to themselves.
    pub(super) fn with_subgroups(self) -> Kernel {
        match self {
            Kernel::LayerNorm => Kernel::LayerNormSubgroup,
            Kernel::L2Normalize => Kernel::L2NormalizeSubgroup,
            Kernel::RmsNorm => Kernel::RmsNormSubgroup,
            other => other,
        }
    }
}

/// A compiled entry point with the layout its bind groups are made against.
pub(super) struct Pipeline {
    pub(super) layout: wgpu::BindGroupLayout,
    pub(super) pipeline: wgpu::ComputePipeline,
}

/// Pipelines built on first use and kept for the device's lifetime.
pub(super) struct PipelineCache {
    slots: [OnceLock<Pipeline>; Kernel::COUNT],
}

impl PipelineCache {
    pub(super) fn new() -> Self {
        PipelineCache {
            slots: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    pub(super) fn get(&self, device: &wgpu::Device, kernel: Kernel) -> &Pipeline {
        self.slots[kernel.index()].get_or_init(|| build(device, kernel))
    }
}

fn build(device: &wgpu::Device, kernel: Kernel) -> Pipeline {
    let storage = kernel.storage();
    let buffer_entry = |binding: usize, ty| wgpu::BindGroupLayoutEntry {
        binding: binding as u32,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    };
    let entries: Vec<_> = std::iter::once(buffer_entry(0, wgpu::BufferBindingType::Uniform))
        .chain(storage.iter().enumerate().map(|(i, access)| {
            let read_only = matches!(access, Read);
            buffer_entry(i + 1, wgpu::BufferBindingType::Storage { read_only })
        }))
        .collect();
    let label = Some(kernel.entry_point());
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label,
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label,
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label,
        source: wgpu::ShaderSource::Wgsl(kernel.source()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label,
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(kernel.entry_point()),
        compilation_options: Default::default(),
        cache: None,
    });
    Pipeline { layout, pipeline }
}

/// gather.wgsl `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct GatherParams {
    pub rows: u32,
    pub width: u32,
    pub first_row: u32,
    pub part_rows: u32,
    pub accumulate: u32,
    pub _pad: [u32; 3],
}

/// pool.wgsl `Params`; `mode` is one of the shader's `MODE_*` constants.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct PoolParams {
    pub sequences: u32,
    pub width: u32,
    pub mode: u32,
    pub _pad: u32,
}

/// norm.wgsl `Params` (every entry point; `eps` is unused by
/// `l2_normalize`).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct NormParams {
    pub rows: u32,
    pub width: u32,
    pub eps: f32,
    pub _pad: u32,
}

/// gemm.wgsl `Params`; `activation` is one of the shader's `ACT_*` constants.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct LinearParams {
    pub n: u32,
    pub k: u32,
    pub m: u32,
    pub has_bias: u32,
    pub has_residual: u32,
    pub activation: u32,
    pub _pad: [u32; 2],
}

/// attention.wgsl `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct AttentionParams {
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub causal: u32,
    pub has_window: u32,
    pub window: u32,
    pub scale: f32,
    pub _pad: u32,
}

/// ntk.wgsl `ContractParams`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct ContractParams {
    pub rows: u32,
    pub cols: u32,
    pub p: u32,
    pub q: u32,
    pub dr_row: u32,
    pub dc_row: u32,
    pub ar_row: u32,
    pub ac_row: u32,
    pub out_row: u32,
    pub out_col: u32,
    pub out_stride: u32,
    pub has_acts: u32,
    pub offset: f32,
    pub _pad: [u32; 3],
}

/// ntk.wgsl `JlParams`; u64s as (low, high) word pairs.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct JlParams {
    pub rows: u32,
    pub d: u32,
    pub k: u32,
    pub x_row: u32,
    pub out_row: u32,
    pub accumulate: u32,
    pub gaussian: u32,
    pub sqrt_k: f32,
    pub seed: [u32; 2],
    pub column_offset: [u32; 2],
}

/// stats.wgsl `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct StatsParams {
    pub d: u32,
    pub items: u32,
    pub tiles: u32,
    pub _pad: u32,
}

/// trim.wgsl `Params`.
#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
pub(super) struct TrimParams {
    pub rows: u32,
    pub width: u32,
    pub block: u32,
    pub stride: u32,
    pub reference_len: u32,
    pub _pad: [u32; 3],
}

/// rope.wgsl `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct RopeParams {
    pub tokens: u32,
    pub width: u32,
    pub rotated_heads: u32,
    pub half: u32,
}
