//! Every WGSL entry point the backend dispatches ([`Kernel`]): its source, entry point and explicit
//! bind-group layout, each an exhaustive `match`, and the cache of their compiled pipelines. The
//! family files choose which kernel an op runs and own the `Params` block it reads.
//!
//! Every kernel binds its `Params` uniform at binding 0 and its storage buffers from binding 1 on,
//! in the order [`Kernel::storage`] lists (so entry points sharing a file share one `Params`).
//! Layouts are explicit because with `layout: None` wgpu drops bindings a shader does not
//! statically use, and bind groups would then stop matching.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;

use super::shader_builds::{f16_build, subgroup_build};

/// How a kernel uses one storage binding.
#[derive(Clone, Copy)]
pub(super) enum Access {
    Read,
    ReadWrite,
}

use Access::{Read, ReadWrite};

/// One entry point of one build of a shader, grouped by the family file that dispatches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Kernel {
    /// GEMM variant 2 (tiled): workgroup-shared tiles (GPUs).
    LinearTiled,
    /// GEMM variant 3 (direct): no shared tiles or barriers (software adapters).
    LinearDirect,
    /// GEMM variant 5 (tiled-f16): variant 2 on f16 weights (gemm.wgsl's f16 build).
    LinearTiledF16,
    /// GEMM variant 6 (direct-f16): variant 3 on f16 weights.
    LinearDirectF16,
    /// GEMM variant 12 (subgroup): rows shared by a workgroup, x broadcast across each subgroup
    /// (gemm.wgsl's subgroup build; software adapters with subgroups).
    LinearSubgroup,
    /// GEMM variant 13 (subgroup-f16): variant 12 on f16 weights (the f16 subgroup build).
    LinearSubgroupF16,
    /// `act(gate) ⊙ up` (gemm.wgsl, f32 build).
    GatedActivation,
    /// `dy ⊙ act'(pre)` (gemm.wgsl, f32 build; the backward family).
    ActivationBackward,
    LayerNorm,
    L2Normalize,
    RmsNorm,
    /// The norm family with subgroup reductions (norm.wgsl's subgroup build), where the device
    /// has them.
    LayerNormSubgroup,
    L2NormalizeSubgroup,
    RmsNormSubgroup,
    Rope,
    Attention,
    Gather,
    /// Gather from an f16 table (gather.wgsl's f16 build).
    GatherF16,
    Pool,
    /// NTK contraction variant 2 (tiled): workgroup-shared tiles (GPUs).
    ContractTiled,
    /// NTK contraction variant 3 (direct): no shared tiles or barriers (software adapters).
    ContractDirect,
    /// The token-level sequence form's per-pair sums of a contracted chunk.
    SeqSegmentSum,
    /// The materialised sequence form's per-sample layer gradients.
    SampleGradients,
    JlProject,
    GroupSums,
    ScatterTiled,
    /// The backward family (backward.wgsl).
    LayerNormBackward,
    AttentionBackwardStats,
    AttentionBackward,
    ScatterRows,
    SequenceSums,
    /// Trim stage 1: bitonic stages within a workgroup tile.
    BitonicLocal,
    /// Trim stage 2: one bitonic stage with a long stride, in storage.
    BitonicGlobal,
    /// Trim stage 3: merged ECDF counts by binary search.
    EcdfCounts,
}

impl Kernel {
    fn source(self) -> Cow<'static, str> {
        const GEMM: &str = include_str!("../../../shaders/gemm.wgsl");
        const GATHER: &str = include_str!("../../../shaders/gather.wgsl");
        const NORM: &str = include_str!("../../../shaders/norm.wgsl");
        let f16_build = |source: &str| {
            Cow::Owned(f16_build(source).expect("the shader aliases its weight element type"))
        };
        let gemm_subgroup = || {
            subgroup_build(GEMM, include_str!("../../../shaders/gemm_subgroup.wgsl"))
                .expect("gemm.wgsl marks its subgroup region")
        };
        Cow::Borrowed(match self {
            Kernel::LinearTiled
            | Kernel::LinearDirect
            | Kernel::GatedActivation
            | Kernel::ActivationBackward => GEMM,
            Kernel::LinearTiledF16 | Kernel::LinearDirectF16 => return f16_build(GEMM),
            Kernel::LinearSubgroup => return Cow::Owned(gemm_subgroup()),
            Kernel::LinearSubgroupF16 => return f16_build(&gemm_subgroup()),
            Kernel::LayerNorm | Kernel::L2Normalize | Kernel::RmsNorm => NORM,
            Kernel::LayerNormSubgroup | Kernel::L2NormalizeSubgroup | Kernel::RmsNormSubgroup => {
                return Cow::Owned(
                    subgroup_build(NORM, include_str!("../../../shaders/norm_subgroup.wgsl"))
                        .expect("norm.wgsl marks its subgroup region"),
                );
            }
            Kernel::Rope => include_str!("../../../shaders/rope.wgsl"),
            Kernel::Attention => include_str!("../../../shaders/attention.wgsl"),
            Kernel::Gather => GATHER,
            Kernel::GatherF16 => return f16_build(GATHER),
            Kernel::Pool => include_str!("../../../shaders/pool.wgsl"),
            Kernel::ContractTiled
            | Kernel::ContractDirect
            | Kernel::SeqSegmentSum
            | Kernel::SampleGradients
            | Kernel::JlProject => include_str!("../../../shaders/ntk.wgsl"),
            Kernel::GroupSums | Kernel::ScatterTiled => include_str!("../../../shaders/stats.wgsl"),
            Kernel::LayerNormBackward
            | Kernel::AttentionBackwardStats
            | Kernel::AttentionBackward
            | Kernel::ScatterRows
            | Kernel::SequenceSums => include_str!("../../../shaders/backward.wgsl"),
            Kernel::BitonicLocal | Kernel::BitonicGlobal | Kernel::EcdfCounts => {
                include_str!("../../../shaders/trim.wgsl")
            }
        })
    }

    fn entry_point(self) -> &'static str {
        match self {
            Kernel::LinearTiled | Kernel::LinearTiledF16 => "linear_tiled",
            Kernel::LinearDirect | Kernel::LinearDirectF16 => "linear_direct",
            Kernel::LinearSubgroup | Kernel::LinearSubgroupF16 => "linear_subgroup",
            Kernel::GatedActivation => "gated_activation",
            Kernel::ActivationBackward => "activation_backward",
            Kernel::LayerNormBackward => "layer_norm_backward",
            Kernel::AttentionBackwardStats => "attention_backward_stats",
            Kernel::AttentionBackward => "attention_backward",
            Kernel::ScatterRows => "scatter_rows",
            Kernel::SequenceSums => "sequence_sums",
            Kernel::LayerNorm | Kernel::LayerNormSubgroup => "layer_norm",
            Kernel::L2Normalize | Kernel::L2NormalizeSubgroup => "l2_normalize",
            Kernel::RmsNorm | Kernel::RmsNormSubgroup => "rms_norm",
            Kernel::Rope => "rope",
            Kernel::Attention => "attention_online",
            Kernel::Gather | Kernel::GatherF16 => "gather_rows",
            Kernel::Pool => "pool",
            Kernel::ContractTiled => "contract_tiled",
            Kernel::ContractDirect => "contract_direct",
            Kernel::SeqSegmentSum => "seq_segment_sum",
            Kernel::SampleGradients => "sample_gradients",
            Kernel::JlProject => "jl_project",
            Kernel::GroupSums => "group_sums",
            Kernel::ScatterTiled => "scatter_tiled",
            Kernel::BitonicLocal => "bitonic_local",
            Kernel::BitonicGlobal => "bitonic_global",
            Kernel::EcdfCounts => "ecdf_counts",
        }
    }

    /// Storage bindings from binding 1 on; binding 0 is the `Params` uniform.
    pub(super) fn storage(self) -> &'static [Access] {
        match self {
            // x, w, bias, residual, out
            Kernel::LinearTiled
            | Kernel::LinearDirect
            | Kernel::LinearTiledF16
            | Kernel::LinearDirectF16
            | Kernel::LinearSubgroup
            | Kernel::LinearSubgroupF16
            | Kernel::GatedActivation
            | Kernel::ActivationBackward => &[Read, Read, Read, Read, ReadWrite],
            // pre, gamma, dy, dx, normed
            Kernel::LayerNormBackward => &[Read, Read, Read, ReadWrite, ReadWrite],
            // qkv, sequence starts, d_out, row statistics, d_qkv
            Kernel::AttentionBackwardStats | Kernel::AttentionBackward => {
                &[Read, Read, Read, ReadWrite, ReadWrite]
            }
            // delta, row starts, tokens sorted by id, table
            Kernel::ScatterRows => &[Read, Read, Read, ReadWrite],
            // values, weights, sequence starts, out
            Kernel::SequenceSums => &[Read, Read, Read, ReadWrite],
            // x, gamma, beta
            Kernel::LayerNorm | Kernel::LayerNormSubgroup => &[ReadWrite, Read, Read],
            // x
            Kernel::L2Normalize | Kernel::L2NormalizeSubgroup => &[ReadWrite],
            // out, gamma, x
            Kernel::RmsNorm | Kernel::RmsNormSubgroup => &[ReadWrite, Read, Read],
            // qkv, positions, (cos, sin) table
            Kernel::Rope => &[ReadWrite, Read, Read],
            // qkv, sequence starts, out
            Kernel::Attention => &[Read, Read, ReadWrite],
            // table part, ids, out
            Kernel::Gather | Kernel::GatherF16 => &[Read, Read, ReadWrite],
            // hidden, sequence starts, out
            Kernel::Pool => &[Read, Read, ReadWrite],
            // D_r, D_c, A_r, A_c, out
            Kernel::ContractTiled | Kernel::ContractDirect => &[Read, Read, Read, Read, ReadWrite],
            // Gram tile, row starts, column starts, row ids, column ids, out
            Kernel::SeqSegmentSum => &[ReadWrite, Read, Read, Read, Read, ReadWrite],
            // δ, activations, sequence starts, out
            Kernel::SampleGradients => &[Read, Read, Read, ReadWrite],
            // x, out
            Kernel::JlProject => &[Read, ReadWrite],
            // x, rows, items, means, partial
            Kernel::GroupSums | Kernel::ScatterTiled => &[Read, Read, Read, Read, ReadWrite],
            // keys
            Kernel::BitonicLocal | Kernel::BitonicGlobal => &[ReadWrite],
            // sorted rows, sorted reference, counts
            Kernel::EcdfCounts => &[Read, Read, ReadWrite],
        }
    }
}

/// A compiled entry point with the layout its bind groups are made against (both are shared
/// handles, cheap to clone).
#[derive(Clone)]
pub(super) struct Pipeline {
    pub(super) layout: wgpu::BindGroupLayout,
    pub(super) pipeline: wgpu::ComputePipeline,
}

/// Pipelines built on first use and kept for the device's lifetime, keyed by kernel so adding a
/// [`Kernel`] needs nothing here.
#[derive(Default)]
pub(super) struct PipelineCache {
    built: Mutex<HashMap<Kernel, Pipeline>>,
}

impl PipelineCache {
    pub(super) fn get(&self, device: &wgpu::Device, kernel: Kernel) -> Pipeline {
        // A panic while building leaves no entry behind, so the map stays usable.
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        built
            .entry(kernel)
            .or_insert_with(|| build(device, kernel))
            .clone()
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
