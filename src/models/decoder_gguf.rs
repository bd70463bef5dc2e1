//! Decoders from a single GGUF file (llama.cpp's checkpoints): the [`DecoderConfig`] from the
//! file's metadata and the tensors under llama.cpp's names, dequantised on upload, so
//! [`DecoderModel`]'s forward runs them unchanged. In f32 each tensor (each fused Q/K/V or
//! gate/up stack) is dequantised once, in parallel, straight into the memory the CPU backend
//! then reads in place: SmolLM2-135M's 538 MB of f32 weights are written once, where they were
//! copied again to stack the parts and to upload them.
//!
//! Two things differ from a Hugging Face directory:
//! - Names: llama.cpp calls `layers.N.self_attn.q_proj.weight` `blk.N.attn_q.weight` and so on;
//!   [`GgufTensors`] maps transformers' names onto them.
//! - Q and K rows of llama models: llama.cpp's RoPE turns adjacent columns `(2i, 2i+1)` of a head
//!   while transformers' (and the rope op's) rotate-half turns `(i, i + d/2)`, so its converter
//!   reorders each head's rows of Q and K: transformers' row `h·d/2 + i` (half `h`, pair `i`) is
//!   stored as row `2i + h`. [`GgufTensors`] puts them back, K with the KV head count. Qwen2's
//!   converter leaves the rows alone.
//!
//! llama.cpp stores Llama 3.1's `llama3` RoPE scaling as a tensor, `rope_freqs.weight`, of
//! per-pair divisors of the frequencies. transformers' GGUF loader drops that tensor and runs the
//! model unscaled, so there is no reference to test against: a file that has it is refused.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use half::{bf16, f16};

use super::decoder::{DecoderConfig, DecoderModel, MAX_LAYERS};
use super::loader::TensorSource;
use crate::backend::{Backend, RopeFrequencies, RopeScaling};
use crate::error::{Error, Result};
use crate::tensor::{DType, HostData, HostTensor, SharedBytes};
use crate::weights::{Gguf, WeightsDtype};

/// The `general.architecture` values this file runs.
pub const ARCHITECTURES: [&str; 2] = ["llama", "qwen2"];

/// llama.cpp's tensor of per-pair RoPE frequency divisors (its form of llama3 scaling).
const ROPE_FREQS: &str = "rope_freqs.weight";
/// llama.cpp's token embedding table, `[vocab, hidden]`.
const TOKEN_EMBEDDINGS: &str = "token_embd.weight";

/// Whether `path` names a GGUF file (by its extension) rather than a model directory.
pub fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Opens `path` as a GGUF file, refusing anything that is not a file.
pub fn open(path: &Path) -> Result<Gguf> {
    if !path.is_file() {
        return Err(Error::input(format!(
            "{}: not a file (a GGUF model is a single .gguf file)",
            path.display()
        )));
    }
    Gguf::open(path)
}

/// Loads the decoder of a GGUF file onto `backend`: its tensors dequantised to f32, or to f16 /
/// bf16 when `weights_dtype` asks for it.
pub fn load(
    path: &Path,
    backend: Arc<dyn Backend>,
    weights_dtype: WeightsDtype,
) -> Result<DecoderModel> {
    from_file(&open(path)?, backend, weights_dtype)
}

/// [`load`] from a file already opened (whose metadata also gives the tokenizer).
pub fn from_file(
    gguf: &Gguf,
    backend: Arc<dyn Backend>,
    weights_dtype: WeightsDtype,
) -> Result<DecoderModel> {
    let config = config(gguf)?;
    let tensors = GgufTensors {
        gguf,
        permuted_qk: config.model_type == "llama",
        heads: config.heads,
        kv_heads: config.kv_heads,
    };
    DecoderModel::from_source(config, &tensors, backend, weights_dtype)
}

/// The decoder's config from `{arch}.*` metadata, with llama.cpp's defaults where a key is
/// optional to it (KV heads: the head count; RoPE base: 10 000; head width: embedding / heads).
pub fn config(gguf: &Gguf) -> Result<DecoderConfig> {
    let bad = |what: String| Error::input(format!("{}: {what}", gguf.path().display()));
    let arch = gguf.get_str("general.architecture")?.to_string();
    if !ARCHITECTURES.contains(&arch.as_str()) {
        return Err(bad(format!(
            "general.architecture {arch:?} is not supported (supported: {})",
            ARCHITECTURES.join(", ")
        )));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let count = |k: &str| gguf.get_u32(&key(k)).map(|v| v as usize);
    let optional = |k: &str| gguf.get(&key(k)).is_some();
    let hidden_size = count("embedding_length")?;
    let heads = count("attention.head_count")?;
    let kv_heads = if optional("attention.head_count_kv") {
        count("attention.head_count_kv")?
    } else {
        heads
    };
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(bad(format!(
            "{} {heads} is not a positive multiple of {} {kv_heads}",
            key("attention.head_count"),
            key("attention.head_count_kv")
        )));
    }
    let head_dim = if optional("attention.key_length") {
        count("attention.key_length")?
    } else {
        hidden_size / heads
    };
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(bad(format!(
            "head width {head_dim} must be even and positive (RoPE turns pairs of columns)"
        )));
    }
    if optional("rope.dimension_count") && count("rope.dimension_count")? != head_dim {
        return Err(bad(format!(
            "{} {} differs from the head width {head_dim}: partial RoPE is not supported",
            key("rope.dimension_count"),
            count("rope.dimension_count")?
        )));
    }
    if let Some(kind) = gguf.get(&key("rope.scaling.type")) {
        if kind.to_string().trim_matches('"') != "none" {
            return Err(bad(format!(
                "{} {kind} is not supported (supported: none)",
                key("rope.scaling.type")
            )));
        }
    }
    if gguf.tensor_info(ROPE_FREQS).is_ok() {
        return Err(bad(format!(
            "tensor `{ROPE_FREQS}` (llama.cpp's per-pair RoPE frequency factors, how it stores \
             llama3 scaling) is not supported: transformers' GGUF loader ignores it, so there is \
             no reference to match (supported: no frequency scaling; a Hugging Face directory \
             with rope_type \"llama3\" runs the scaled model)"
        )));
    }
    let theta = if optional("rope.freq_base") {
        f64::from(gguf.get_f32(&key("rope.freq_base"))?)
    } else {
        10_000.0
    };
    let layers = count("block_count")?;
    if layers > MAX_LAYERS {
        return Err(bad(format!(
            "{} {layers} is more than {MAX_LAYERS}: not a real model",
            key("block_count")
        )));
    }
    let eps_key = key("attention.layer_norm_rms_epsilon");
    let rms_norm_eps = f64::from(gguf.get_f32(&eps_key)?);
    super::check_norm_eps(&eps_key, rms_norm_eps).map_err(bad)?;
    // A 0-D token_embd.weight panicked here; found by fuzzing.
    let vocab_size = match gguf.tensor_info(TOKEN_EMBEDDINGS)?.shape() {
        &[rows, _] => rows,
        other => {
            return Err(bad(format!(
                "tensor `{TOKEN_EMBEDDINGS}` has shape {other:?}, expected [vocab, hidden]"
            )))
        }
    };
    Ok(DecoderConfig {
        vocab_size,
        hidden_size,
        intermediate_size: count("feed_forward_length")?,
        heads,
        kv_heads,
        head_dim,
        rms_norm_eps,
        rope: RopeFrequencies {
            theta,
            scaling: RopeScaling::None,
        },
        max_position_embeddings: count("context_length")?,
        windows: vec![None; layers],
        qkv_bias: arch == "qwen2",
        o_bias: false,
        mlp_bias: false,
        model_type: arch,
    })
}

/// A GGUF file's tensors under transformers' decoder names (without the `model.` prefix), Q and
/// K rows restored to transformers' order where the converter permuted them.
pub struct GgufTensors<'a> {
    gguf: &'a Gguf,
    permuted_qk: bool,
    heads: usize,
    kv_heads: usize,
}

impl GgufTensors<'_> {
    /// llama.cpp's name for transformers' `name`; `None` for a name it has no tensor for.
    fn gguf_name(name: &str) -> Option<String> {
        match name {
            "embed_tokens.weight" => return Some(TOKEN_EMBEDDINGS.into()),
            "norm.weight" => return Some("output_norm.weight".into()),
            _ => {}
        }
        let rest = name.strip_prefix("layers.")?;
        let (layer, part) = rest.split_once('.')?;
        let (module, suffix) = part.rsplit_once('.')?;
        let gguf = match module {
            "input_layernorm" => "attn_norm",
            "post_attention_layernorm" => "ffn_norm",
            "self_attn.q_proj" => "attn_q",
            "self_attn.k_proj" => "attn_k",
            "self_attn.v_proj" => "attn_v",
            "self_attn.o_proj" => "attn_output",
            "mlp.gate_proj" => "ffn_gate",
            "mlp.up_proj" => "ffn_up",
            "mlp.down_proj" => "ffn_down",
            _ => return None,
        };
        Some(format!("blk.{layer}.{gguf}.{suffix}"))
    }

    /// Tensor `name` of `shape` dequantised to `dtype`, Q/K rows in transformers' order.
    fn read(&self, name: &str, shape: &[usize], dtype: DType) -> Result<HostTensor> {
        // The shape is checked against the file before anything that size is allocated.
        let len = self
            .gguf
            .tensor_info(&self.checked_name(name, shape)?)?
            .len();
        let data = match dtype {
            DType::F32 => HostData::F32(self.read_into(name, shape, vec![0f32; len], |x| x)?),
            DType::F16 => {
                HostData::F16(self.read_into(name, shape, vec![f16::ZERO; len], f16::from_f32)?)
            }
            DType::BF16 => HostData::BF16(self.read_into(
                name,
                shape,
                vec![bf16::ZERO; len],
                bf16::from_f32,
            )?),
            other => {
                return Err(Error::weights(
                    self.gguf.path(),
                    format!(
                        "tensor `{name}` can be dequantised to F32, F16 or BF16, not {other:?}"
                    ),
                ))
            }
        };
        HostTensor::new(shape.to_vec(), data)
    }

    /// [`Self::read`] into `out` (the tensor's elements), each value converted with `convert`.
    fn read_into<T: Send>(
        &self,
        name: &str,
        shape: &[usize],
        mut out: Vec<T>,
        convert: impl Fn(f32) -> T + Sync,
    ) -> Result<Vec<T>> {
        self.fill(name, shape, &mut out, convert)?;
        Ok(out)
    }

    /// Dequantises tensor `name` of `shape` into `out`, Q/K rows in transformers' order: row
    /// `h·d/2 + i` of each block of `d` rows (a head) is read from stored row `2i + h`.
    fn fill<T: Send>(
        &self,
        name: &str,
        shape: &[usize],
        out: &mut [T],
        convert: impl Fn(f32) -> T + Sync,
    ) -> Result<()> {
        let gguf_name = self.checked_name(name, shape)?;
        let heads = match name.rsplit('.').nth(1) {
            Some("q_proj") if self.permuted_qk => self.heads,
            Some("k_proj") if self.permuted_qk => self.kv_heads,
            _ => return self.gguf.dequantize_with(&gguf_name, out, convert),
        };
        let d = shape[0] / heads;
        let stored_row = |row: usize| {
            let (head, within) = (row / d, row % d);
            let (half, pair) = (within / (d / 2), within % (d / 2));
            head * d + 2 * pair + half
        };
        self.gguf
            .dequantize_rows_into(&gguf_name, out, stored_row, convert)
    }

    /// llama.cpp's name for `name`, once its tensor is known to have `shape`.
    fn checked_name(&self, name: &str, shape: &[usize]) -> Result<String> {
        let gguf_name = Self::gguf_name(name).ok_or_else(|| {
            Error::weights(
                self.gguf.path(),
                format!("no GGUF tensor corresponds to `{name}`"),
            )
        })?;
        let info = self.gguf.tensor_info(&gguf_name)?;
        if info.shape() != shape {
            return Err(Error::weights(
                self.gguf.path(),
                format!(
                    "tensor `{gguf_name}` has shape {:?}, expected {shape:?}",
                    info.shape()
                ),
            ));
        }
        Ok(gguf_name)
    }

    /// Tensors `parts` (name and shape) dequantised one after the other into fresh memory the
    /// backend reads in place ([`SharedBytes::filled_f32`]).
    fn lent_f32(&self, parts: &[(&str, &[usize])]) -> Result<SharedBytes> {
        let mut len = 0;
        for &(name, shape) in parts {
            // The shapes are checked against the file before anything that size is allocated.
            len += self
                .gguf
                .tensor_info(&self.checked_name(name, shape)?)?
                .len();
        }
        SharedBytes::filled_f32(len, |mut out| {
            for &(name, shape) in parts {
                let (part, rest) = out.split_at_mut(shape.iter().product());
                self.fill(name, shape, part, |x| x)?;
                out = rest;
            }
            Ok(())
        })
    }
}

impl TensorSource for GgufTensors<'_> {
    fn contains(&self, name: &str) -> bool {
        Self::gguf_name(name).is_some_and(|n| self.gguf.tensor_info(&n).is_ok())
    }

    fn f32(&self, name: &str, shape: &[usize]) -> Result<Cow<'_, [f32]>> {
        Ok(Cow::Owned(self.read(name, shape, DType::F32)?.into_f32()))
    }

    /// Quantised blocks have no element type to keep: f16 or bf16 when asked for, else f32.
    fn stacked_dtype(&self, _names: &[String], dtype: WeightsDtype) -> Result<DType> {
        Ok(match dtype {
            WeightsDtype::F16 => DType::F16,
            WeightsDtype::Bf16 => DType::BF16,
            WeightsDtype::Auto | WeightsDtype::F32 => DType::F32,
        })
    }

    fn matrix(&self, name: &str, shape: &[usize], dtype: DType) -> Result<HostTensor> {
        self.read(name, shape, dtype)
    }

    /// Dequantised straight into the memory the backend reads: no copy on upload.
    fn mapped_f32(&self, name: &str, shape: &[usize]) -> Result<Option<SharedBytes>> {
        self.lent_f32(&[(name, shape)]).map(Some)
    }

    fn mapped_f32_stack(
        &self,
        parts: &[(String, usize)],
        cols: usize,
    ) -> Result<Option<SharedBytes>> {
        let shapes: Vec<[usize; 2]> = parts.iter().map(|&(_, rows)| [rows, cols]).collect();
        let parts: Vec<(&str, &[usize])> = parts
            .iter()
            .zip(&shapes)
            .map(|((name, _), shape)| (name.as_str(), shape.as_slice()))
            .collect();
        self.lent_f32(&parts).map(Some)
    }
}
