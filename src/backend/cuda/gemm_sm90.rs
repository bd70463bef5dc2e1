//! The Hopper GEMM (kernels/gemm_sm90.cu, variant 10, sm_90 only): `linear` on `wgmma` with TMA
//! loads. The host converts the f32 activations to bf16 into a buffer of this call (gemm.cu's
//! `to_bf16_v1`; f32 weights go through their cached bf16 copy, bf16 weights are read as
//! uploaded), describes both operands to TMA with a tensor map each (`cuTensorMapEncodeTiled`,
//! 128 × 64 boxes, 128-byte swizzle, zero fill past the edges) and launches one 384-thread block
//! per 128 × 128 output tile with the pipeline's shared memory.

use cudarc::driver::sys::{
    cuTensorMapEncodeTiled, CUfunction_attribute, CUtensorMap, CUtensorMapDataType,
    CUtensorMapFloatOOBfill, CUtensorMapInterleave, CUtensorMapL2promotion, CUtensorMapSwizzle,
};
use cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};

use super::device::{device_error, tile_grid};
use super::gemm::{bf16_copy, bf16_weights, push_epilogue_args};
use super::memory::CudaData;
use super::CudaBackend;
use crate::backend::{Activation, Tensor};
use crate::error::Result;
use crate::tensor::DType;

/// The kernel's block tile (`W90_BM`, `W90_BN`) and TMA box rows.
const TILE: usize = 128;
/// The K depth of one pipeline stage, the TMA box's inner extent (`W90_BK`).
const SLICE: u32 = 64;
/// `W90_THREADS`: a producer and two consumer warpgroups.
const THREADS: u32 = 384;
/// `W90_STAGES`: pipeline depth.
const STAGES: u32 = 4;
/// `W90_SHARED_BYTES`: the stages' two 128 × 64 bf16 tiles each, plus 1024 bytes of alignment.
const SHARED_BYTES: u32 = STAGES * 2 * (TILE as u32) * SLICE * 2 + 1024;

/// Whether the kernel runs a product over `k` features with weights of `dtype`: TMA needs row
/// strides that are multiples of 16 bytes (k % 8 == 0, k > 0), and the kernel reads bf16 (f32
/// weights through their bf16 copy). Otherwise the backend runs variant 4.
pub(super) fn runs(k: usize, dtype: DType) -> bool {
    k > 0 && k.is_multiple_of(8) && matches!(dtype, DType::F32 | DType::BF16)
}

/// A tensor map as a kernel parameter (`TensorMap` in gemm_sm90.cu: 128 opaque bytes).
#[repr(transparent)]
struct TensorMap(CUtensorMap);

// SAFETY: plain bytes, passed by value as the kernel's `__grid_constant__ TensorMap`.
unsafe impl DeviceRepr for TensorMap {}

/// The TMA description of a row-major bf16 matrix `[rows, k]` at `address`, read in boxes of
/// 128 rows × 64 columns with the 128-byte swizzle the kernel's wgmma descriptors expect.
fn tensor_map(address: u64, rows: usize, k: usize) -> Result<TensorMap> {
    let mut map = CUtensorMap { opaque: [0; 16] };
    let dims = [k as u64, rows as u64];
    let row_stride = [(k * 2) as u64];
    let boxes = [SLICE, TILE as u32];
    let element_strides = [1u32, 1];
    // SAFETY: every pointer is valid for the rank (2) the call names; the driver only writes `map`.
    unsafe {
        cuTensorMapEncodeTiled(
            &mut map,
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            2,
            address as *mut std::ffi::c_void,
            dims.as_ptr(),
            row_stride.as_ptr(),
            boxes.as_ptr(),
            element_strides.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    }
    .result()
    .map_err(|e| {
        device_error(format!(
            "TMA tensor map of a [{rows}, {k}] bf16 matrix: {e}"
        ))
    })?;
    Ok(TensorMap(map))
}

/// `out = act(x·wᵀ + bias) + residual` for `x: [n, k]`, `w: [m, k]`, where [`runs`] holds.
#[allow(clippy::too_many_arguments)]
pub(super) fn linear(
    be: &CudaBackend,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
    residual: Option<&Tensor>,
    out: &mut Tensor,
    (n, k, m): (usize, usize, usize),
) -> Result<()> {
    if n == 0 || m == 0 {
        return Ok(());
    }
    let stream = be.stream();
    let weights: &CudaSlice<u16> = match &be.storage(w)?.data {
        CudaData::Half(_, bits) => bits,
        CudaData::F32(_) => bf16_weights(be, w)?,
    };
    let activations = bf16_copy(be, be.slice(x)?, n * k)?;
    let (x_address, _x_guard) = activations.device_ptr(stream);
    let (w_address, _w_guard) = weights.device_ptr(stream);
    let (x_map, w_map) = (tensor_map(x_address, n, k)?, tensor_map(w_address, m, k)?);

    let kernel = "gemm_v10_wgmma_bf16";
    let f = be.function("gemm_sm90", kernel)?;
    // cudarc binds the context for launches, not for attributes.
    stream.context().bind_to_thread().map_err(device_error)?;
    f.set_attribute(
        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        SHARED_BYTES as i32,
    )
    .map_err(|e| {
        device_error(format!(
            "{kernel}: {SHARED_BYTES} bytes of shared memory: {e}"
        ))
    })?;
    // The sizes fit in i32: `gemm::linear` checked them before choosing this kernel.
    let dims_act = [n as i32, m as i32, k as i32, act.code() as i32];
    let mut args = stream.launch_builder(&f);
    args.arg(&x_map).arg(&w_map);
    push_epilogue_args(be, &mut args, bias, residual, out, &dims_act)?;
    let cfg = LaunchConfig {
        grid_dim: tile_grid(n, m, TILE, "linear")?,
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: SHARED_BYTES,
    };
    // The bf16 activations are freed in stream order after the kernel (cudarc's async free).
    be.launch(kernel, &mut args, cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The launch constants above are the kernel's `#define`s.
    #[test]
    fn launch_constants_match_the_kernel() {
        let source = include_str!("../../../kernels/gemm_sm90.cu");
        let define = |name: &str| -> u32 {
            source
                .lines()
                .find_map(|line| {
                    let rest = line.strip_prefix("#define ")?.strip_prefix(name)?;
                    rest.strip_prefix(' ')?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
                .unwrap_or_else(|| panic!("#define {name} <number> in gemm_sm90.cu"))
        };
        assert_eq!(define("W90_BM") as usize, TILE);
        assert_eq!(define("W90_BN") as usize, TILE);
        assert_eq!(define("W90_BK"), SLICE);
        assert_eq!(define("W90_THREADS"), THREADS);
        assert_eq!(define("W90_STAGES"), STAGES);
    }
}
