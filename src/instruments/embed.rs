//! The embedding microscope's first stage: texts → sentence embeddings, as sentence-transformers
//! computes them, on any backend.
//!
//! A model with its own embedding head (CLIP) embeds texts through it, L2-normalised unless
//! asked otherwise; images go through [`ImageEmbedder`].
//!
//! Texts are tokenised once, sorted by token count (longest first, so a batch that does not fit
//! fails early) and cut into batches of similar length; each batch runs packed, so no work is
//! spent on padding. Rows come back in input order.
//!
//! Where the backend bounds the buffer one activation may take (wgpu's storage-binding limit,
//! [`Backend::max_activation_bytes`]), text batches are cut by tokens and image batches by
//! images so that the model's widest activation fits it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use crate::backend::{Backend, Pooling, SeqLayout};
use crate::error::{Error, Result};
use crate::models::decoder_gguf;
use crate::models::image::decode_image;
use crate::models::sentence::SentenceConfig;
use crate::models::tokenize::{TextTokenizer, TokenizedText};
use crate::models::{self, Encoder, ImageTower, TokenBatch};
use crate::phases;
use crate::weights::WeightsDtype;

/// Choices that override what the model directory says.
#[derive(Clone, Debug, Default)]
pub struct EncoderOptions {
    pub max_length: Option<usize>,
    pub pooling: Option<Pooling>,
    pub normalize: Option<bool>,
    /// Prepended to every text (e5's "query: ", "passage: ").
    pub prefix: String,
    /// Element type of the encoder's GEMM weights and embedding tables on the device.
    pub weights_dtype: WeightsDtype,
}

/// A model directory's (or GGUF file's) encoder with sentence-transformers' tokenisation, pooling and
/// normalisation around it.
pub struct SentenceEncoder {
    name: String,
    tokenizer: TextTokenizer,
    model: Box<dyn Encoder>,
    backend: Arc<dyn Backend>,
    pooling: Pooling,
    normalize: bool,
    max_length: usize,
    prefix: String,
}

/// Embeddings of a corpus, row-major `[rows, dim]` in input order.
pub struct Embedded {
    pub embeddings: Vec<f32>,
    pub dim: usize,
    pub tokens: usize,
}

impl SentenceEncoder {
    /// Loads a model directory, or a single `.gguf` file (which has no sentence-transformers
    /// settings: the model's default pooling, no normalisation, its whole context).
    pub fn load(dir: &Path, backend: Arc<dyn Backend>, options: &EncoderOptions) -> Result<Self> {
        // A GGUF file is opened (and its metadata parsed) once, for the model and the tokenizer.
        let gguf = decoder_gguf::is_gguf(dir)
            .then(|| decoder_gguf::open(dir))
            .transpose()?;
        if gguf.is_none() && !dir.is_dir() {
            return Err(Error::input(format!(
                "{}: model directory not found",
                dir.display()
            )));
        }
        // The tokenizer (`tokenizer.json`, or a GGUF file's metadata), parsed on a second thread
        // while the weights load; its errors are reported where loading it used to fail, after
        // the model's.
        let (model, parsed) = std::thread::scope(|scope| {
            let parsed = scope.spawn(|| match &gguf {
                Some(file) => TextTokenizer::parse_gguf(file),
                None => TextTokenizer::parse(dir),
            });
            let model: Result<Box<dyn Encoder>> = match &gguf {
                Some(file) => decoder_gguf::from_file(file, backend.clone(), options.weights_dtype)
                    .map(|m| Box::new(m) as Box<dyn Encoder>),
                None => models::load(dir, backend.clone(), options.weights_dtype),
            };
            let parsed = parsed
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (model, parsed)
        });
        let model = model?;
        let sentence = match &gguf {
            Some(_) => SentenceConfig {
                max_seq_length: None,
                pooling: model.default_pooling(),
                normalize: false,
            },
            None => SentenceConfig::read(dir, model.default_pooling())?,
        };
        phases::mark("load weights and tokenizer.json");
        let capacity = model.max_tokens();
        let max_length = options
            .max_length
            .or(sentence.max_seq_length)
            .or_else(|| parsed.as_ref().ok().and_then(|p| p.stored_max_length()))
            .unwrap_or(capacity);
        if let (Some(own), Some(asked)) = (model.own_pooling(), options.pooling) {
            return Err(Error::input(format!(
                "{}: the model pools texts itself ({own}); --pooling {} does not apply",
                dir.display(),
                asked.name()
            )));
        }
        // CLIP-style embeddings are compared by cosine: normalised unless asked otherwise.
        let normalize = options
            .normalize
            .unwrap_or(sentence.normalize || model.own_pooling().is_some());
        if max_length > capacity || max_length < 1 {
            return Err(Error::input(format!(
                "max length {max_length} is outside 1..={capacity}, the positions {} can encode",
                dir.display()
            )));
        }
        let tokenizer = parsed?.truncated(max_length)?;
        phases::mark("tokenizer");
        Ok(SentenceEncoder {
            name: model_name(dir),
            tokenizer,
            model,
            backend,
            pooling: options.pooling.unwrap_or(sentence.pooling),
            normalize,
            max_length,
            prefix: options.prefix.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }
    /// What the embeddings file records as the pooling: the model's own ([`Encoder::own_pooling`])
    /// or the mode.
    pub fn pooling_name(&self) -> &str {
        self.model
            .own_pooling()
            .unwrap_or_else(|| self.pooling.name())
    }
    pub fn normalize(&self) -> bool {
        self.normalize
    }
    pub fn max_length(&self) -> usize {
        self.max_length
    }
    pub fn dim(&self) -> usize {
        self.model.embedding_dim()
    }

    pub fn tokenize(&self, texts: &[String]) -> Result<Vec<TokenizedText>> {
        let prefixed: Vec<String>;
        let inputs: Vec<&str> = if self.prefix.is_empty() {
            texts.iter().map(String::as_str).collect()
        } else {
            prefixed = texts
                .iter()
                .map(|t| format!("{}{t}", self.prefix))
                .collect();
            prefixed.iter().map(String::as_str).collect()
        };
        self.tokenizer.encode(&inputs)
    }

    /// Embeds `texts`, `batch_size` texts per forward pass; `progress(rows, tokens)` is called
    /// after each batch with the counts just finished.
    pub fn embed(
        &self,
        texts: &[String],
        batch_size: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Embedded> {
        let plan = self.plan(texts, batch_size)?;
        phases::mark("tokenise");
        let dim = self.dim();
        let mut embeddings = vec![0.0f32; texts.len() * dim];
        let mut tokens = 0;
        for b in 0..plan.batches() {
            let pooled = self.embed_batch(&plan, b)?;
            let rows = plan.batch(b);
            for (row, &i) in pooled.chunks_exact(dim).zip(rows) {
                embeddings[i * dim..(i + 1) * dim].copy_from_slice(row);
            }
            tokens += plan.batch_tokens(b);
            progress(rows.len(), plan.batch_tokens(b));
        }
        phases::mark("forward passes");
        Ok(Embedded {
            embeddings,
            dim,
            tokens,
        })
    }

    /// Tokenises `texts` and cuts them into the batches [`Self::embed`] runs: the one schedule
    /// every process derives from the same texts, so a shard that runs some of its batches
    /// computes each exactly as one process does (a row's bits depend on its batch's shapes).
    ///
    /// A batch is `batch_size` texts, or fewer where the backend bounds the buffer an activation
    /// may take ([`Backend::max_activation_bytes`], wgpu's storage-binding limit): the texts are
    /// then cut where the next one would take the model's widest activation past it. A text
    /// too long to fit alone is an error that says which `--max-length` fits.
    pub fn plan(&self, texts: &[String], batch_size: usize) -> Result<EmbedPlan> {
        if batch_size == 0 {
            return Err(Error::input("batch size must be at least 1"));
        }
        let tokenized = self.tokenize(texts)?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(tokenized[i].ids.len()));
        let token_cap = self.tokens_per_buffer();
        let mut starts = Vec::new();
        let (mut rows, mut tokens) = (0, 0);
        for (at, &i) in order.iter().enumerate() {
            let len = tokenized[i].ids.len();
            if let Some((cap, bytes)) = token_cap.filter(|&(cap, _)| len > cap) {
                return Err(Error::input(format!(
                    "input text {i} (0-based) has {len} tokens, but {} on {} fits at most {cap} tokens in one \
                     batch ({} values of f32 per token in its widest activation, buffers of at \
                     most {bytes} bytes): embed with --max-length {cap} or less",
                    self.name,
                    self.backend.name(),
                    self.model.widest_activation()
                )));
            }
            let fits = token_cap.is_none_or(|(cap, _)| tokens + len <= cap);
            if at == 0 || rows == batch_size || !fits {
                starts.push(at);
                (rows, tokens) = (0, 0);
            }
            rows += 1;
            tokens += len;
        }
        Ok(EmbedPlan {
            tokenized,
            order,
            starts,
        })
    }

    /// The most tokens one batch may have on this backend, with the buffer limit behind it;
    /// `None` where the backend has none.
    fn tokens_per_buffer(&self) -> Option<(usize, u64)> {
        let bytes = self.backend.max_activation_bytes()?;
        let token_bytes = 4 * self.model.widest_activation() as u64;
        Some(((bytes / token_bytes) as usize, bytes))
    }

    /// The embeddings of batch `b` of `plan`, `[plan.batch(b).len(), dim]` in the batch's row
    /// order.
    pub fn embed_batch(&self, plan: &EmbedPlan, b: usize) -> Result<Vec<f32>> {
        let chunk = plan.batch(b);
        let tokenized = &plan.tokenized;
        let batch = TokenBatch {
            ids: chunk
                .iter()
                .flat_map(|&i| tokenized[i].ids.iter().copied())
                .collect(),
            type_ids: chunk
                .iter()
                .flat_map(|&i| tokenized[i].type_ids.iter().copied())
                .collect(),
            layout: SeqLayout::from_lengths(chunk.iter().map(|&i| tokenized[i].ids.len())),
        };
        let mut pooled = match self.model.own_pooling() {
            Some(_) => self.model.embed_text(&batch)?,
            None => {
                let hidden = self.model.forward(&batch)?;
                let mut pooled = self.backend.zeros(&[chunk.len(), self.dim()])?;
                self.backend
                    .pool(&hidden, &batch.layout, self.pooling, &mut pooled)?;
                pooled
            }
        };
        if self.normalize {
            self.backend.l2_normalize(&mut pooled)?;
        }
        self.backend.download(&pooled)
    }
}

/// Tokenised texts in batches: longest first, `batch_size` per batch unless the backend's
/// buffer limit cuts one shorter ([`SentenceEncoder::plan`]).
pub struct EmbedPlan {
    tokenized: Vec<TokenizedText>,
    /// Row indices, longest text first.
    order: Vec<usize>,
    /// Where each batch starts in `order`.
    starts: Vec<usize>,
}

impl EmbedPlan {
    pub fn batches(&self) -> usize {
        self.starts.len()
    }

    /// The positions of batch `b` in the longest-first order (they name it in a shard's
    /// manifest and checkpoint).
    pub fn positions(&self, b: usize) -> std::ops::Range<usize> {
        let end = self.starts.get(b + 1).copied().unwrap_or(self.order.len());
        self.starts[b]..end
    }

    /// The input rows of batch `b`.
    pub fn batch(&self, b: usize) -> &[usize] {
        &self.order[self.positions(b)]
    }

    /// Tokens of batch `b`: its cost.
    pub fn batch_tokens(&self, b: usize) -> usize {
        self.batch(b)
            .iter()
            .map(|&i| self.tokenized[i].ids.len())
            .sum()
    }
}

/// The name embeddings files record for a model path: its last component.
fn model_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// A model's image tower with decoding and preprocessing around it: image files → embeddings,
/// L2-normalised unless asked otherwise.
pub struct ImageEmbedder {
    name: String,
    model: Box<dyn Encoder>,
    backend: Arc<dyn Backend>,
    normalize: bool,
}

/// Image embeddings, row-major `[rows, dim]` in input order.
pub struct EmbeddedImages {
    pub embeddings: Vec<f32>,
    pub dim: usize,
    /// With bad images skipped: each skipped image's index among the inputs and why (the
    /// message names the file), in input order; its row is left out of `embeddings`.
    pub skipped: Vec<(usize, String)>,
}

/// One batch decoded and preprocessed: the pixel tensors of the images that could be read, and
/// the others' indices within the batch with their errors.
struct Prepared {
    pixels: Vec<f32>,
    images: usize,
    failed: Vec<(usize, Error)>,
}

impl ImageEmbedder {
    /// Loads a model directory whose model has an image tower (CLIP).
    pub fn load(dir: &Path, backend: Arc<dyn Backend>, options: &EncoderOptions) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::input(format!(
                "{}: model directory not found",
                dir.display()
            )));
        }
        let model = models::load(dir, backend.clone(), options.weights_dtype)?;
        if model.image_tower().is_none() {
            return Err(Error::input(format!(
                "{}: a {} model has no image tower (image inputs need a CLIP model)",
                dir.display(),
                model.model_type()
            )));
        }
        Ok(ImageEmbedder {
            name: model_name(dir),
            model,
            backend,
            normalize: options.normalize.unwrap_or(true),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn normalize(&self) -> bool {
        self.normalize
    }

    fn tower(&self) -> &dyn ImageTower {
        self.model.image_tower().expect("checked at load")
    }

    pub fn dim(&self) -> usize {
        self.tower().embedding_dim()
    }

    /// The most images one batch may hold on this backend: as many as keep the tower's widest
    /// activation within [`Backend::max_activation_bytes`] (wgpu's storage-binding limit), or
    /// any number where the backend has no limit. An image too large for the limit alone is an
    /// error.
    pub fn images_per_buffer(&self) -> Result<usize> {
        let Some(bytes) = self.backend.max_activation_bytes() else {
            return Ok(usize::MAX);
        };
        let values = self.tower().widest_activation_per_image();
        let images = bytes / (4 * values as u64).max(1);
        if images == 0 {
            return Err(Error::input(format!(
                "{} on {} cannot embed one image: its widest activation takes {values} f32 values \
                 ({} bytes), but buffers hold at most {bytes} bytes",
                self.name,
                self.backend.name(),
                4 * values
            )));
        }
        Ok(usize::try_from(images).unwrap_or(usize::MAX))
    }

    /// Pixel tensors of `paths`, decoded and preprocessed in parallel, end to end. An image
    /// that cannot be read fails the batch (the first in order), or with `skip_bad` is set aside
    /// in [`Prepared::failed`].
    fn prepare(&self, paths: &[PathBuf], skip_bad: bool) -> Result<Prepared> {
        let preprocess = self.tower().preprocess();
        let images: Vec<Result<Vec<f32>>> = paths
            .par_iter()
            .map(|path| {
                let image = decode_image(path)?;
                preprocess
                    .pixels_of(&image)
                    .map_err(|e| Error::input(format!("{}: {e}", path.display())))
            })
            .collect();
        let mut prepared = Prepared {
            pixels: Vec::new(),
            images: 0,
            failed: Vec::new(),
        };
        for (i, image) in images.into_iter().enumerate() {
            match image {
                Ok(pixels) => {
                    prepared.pixels.extend(pixels);
                    prepared.images += 1;
                }
                Err(e) if skip_bad => prepared.failed.push((i, e)),
                Err(e) => return Err(e),
            }
        }
        Ok(prepared)
    }

    /// Embeds the images at `paths`, `batch_size` per forward pass — or fewer where the backend
    /// bounds the buffer an activation may take ([`Self::images_per_buffer`]); the next batch is
    /// decoded while the current one runs. `progress(rows)` is called after each batch. An image
    /// that cannot be decoded or preprocessed is an error naming it, or with `skip_bad` is left
    /// out and listed in [`EmbeddedImages::skipped`].
    pub fn embed(
        &self,
        paths: &[PathBuf],
        batch_size: usize,
        skip_bad: bool,
        progress: &mut dyn FnMut(usize),
    ) -> Result<EmbeddedImages> {
        if batch_size == 0 {
            return Err(Error::input("batch size must be at least 1"));
        }
        let batch_size = batch_size.min(self.images_per_buffer()?);
        let dim = self.dim();
        let mut embeddings = Vec::with_capacity(paths.len() * dim);
        let mut skipped = Vec::new();
        let batches: Vec<&[PathBuf]> = paths.chunks(batch_size).collect();
        let prepare = |b: &&[PathBuf]| self.prepare(b, skip_bad);
        let mut next = batches.first().map(prepare).transpose()?;
        for (i, batch) in batches.iter().enumerate() {
            let current = next.take().expect("prepared before its turn");
            let (embedded, prepared) = rayon::join(
                || -> Result<Vec<f32>> {
                    // A batch whose every image was skipped has nothing to run.
                    if current.images == 0 {
                        return Ok(Vec::new());
                    }
                    let mut out = self.tower().embed_pixels(&current.pixels, current.images)?;
                    if self.normalize {
                        self.backend.l2_normalize(&mut out)?;
                    }
                    self.backend.download(&out)
                },
                || batches.get(i + 1).map(prepare).transpose(),
            );
            embeddings.extend(embedded?);
            let first = i * batch_size;
            skipped.extend(
                current
                    .failed
                    .into_iter()
                    .map(|(j, e)| (first + j, e.to_string())),
            );
            next = prepared?;
            progress(batch.len());
        }
        Ok(EmbeddedImages {
            embeddings,
            dim,
            skipped,
        })
    }
}
