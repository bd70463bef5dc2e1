//! RoPE on wgpu (shaders/rope.wgsl): the host sends each token's position and the f64-built
//! (cos, sin) table of [`RopeSpec::table`]; the shader turns the query and key pairs in place.

use super::kernels::{Kernel, RopeParams};
use super::{to_u32, WgpuBackend, ELEMENT_WORKGROUP};
use crate::backend::{shapes, Backend, RopeSpec, SeqLayout, Tensor};
use crate::error::Result;

impl WgpuBackend {
    pub(super) fn rotate(
        &self,
        qkv: &mut Tensor,
        layout: &SeqLayout,
        spec: &RopeSpec,
    ) -> Result<()> {
        let (tokens, width) = shapes::rope(qkv, layout, spec)?;
        let max_len = layout.max_len();
        if tokens == 0 {
            return Ok(());
        }
        let half = spec.head_dim / 2;
        let rotated_heads = spec.heads + spec.kv_heads;
        let pairs = to_u32(tokens * rotated_heads * half, "rope pairs")?;
        let params = RopeParams {
            tokens: to_u32(tokens, "rope tokens")?,
            width: to_u32(width, "rope width")?,
            rotated_heads: to_u32(rotated_heads, "rope heads")?,
            half: to_u32(half, "rope head_dim")?,
        };
        let positions: Vec<u32> = layout.positions().map(|p| p as u32).collect();
        let positions = self.upload_u32("positions", &positions);
        let table = self.upload(&[max_len, spec.head_dim], &spec.table(max_len))?;
        let buffers = [
            self.buffer(qkv, "rope qkv")?,
            &positions,
            self.buffer(&table, "rope table")?,
        ];
        let groups = self.grid((pairs as usize).div_ceil(ELEMENT_WORKGROUP))?;
        self.dispatch(Kernel::Rope, &params, &buffers, groups);
        Ok(())
    }
}
