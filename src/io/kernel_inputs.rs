//! The inputs of the kernel instruments, read and checked against each other: for a kernel GLM
//! (`mscope kglm`) a square train-by-train kernel, a test-by-train kernel of the same kind, a
//! class label per row of each, and optionally the network's logits on the test points (an MLP
//! on a dataset, or a transformer sequence classifier on labelled texts); for a comparison (`mscope ntk-compare`) two square kernels over the same points.

use std::path::Path;
use std::sync::Arc;

use crate::backend::cpu::CpuBackend;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::io::kernel_file::KernelFile;
use crate::io::samples::read_labels;
use crate::io::tensor_file::TensorFile;
use crate::io::texts::{read_rows, text_label_indices, FieldNames, InputSpec};
use crate::models::classifier::SequenceClassifier;
use crate::models::mlp::Mlp;
use crate::models::tokenize::TextTokenizer;
use crate::weights::WeightsDtype;

/// Where the inputs are.
#[derive(Clone, Copy, Debug)]
pub struct KglmPaths<'a> {
    pub train_kernel: &'a Path,
    pub train_labels: &'a Path,
    pub test_kernel: &'a Path,
    pub test_labels: &'a Path,
    /// The network and its test data come together.
    pub network: Option<NetworkPaths<'a>>,
}

/// The network the kernels describe and the test points it is evaluated on.
#[derive(Clone, Copy, Debug)]
pub struct NetworkPaths<'a> {
    /// An MLP (safetensors file) or a transformer sequence classifier (a directory).
    pub model: &'a Path,
    /// For an MLP a dataset; for a classifier labelled texts (.jsonl, .csv, .tsv), whose labels
    /// (and the label files', when they are such texts) are names of the model's `id2label` or
    /// class indices.
    pub test_data: &'a Path,
    /// The text and label fields of a classifier's texts.
    pub fields: &'a FieldNames,
}

/// The network's logits on the test points, rows in the test kernel's order.
pub struct NetworkLogits {
    /// Row-major `[N_test, outputs]`.
    pub values: Vec<f32>,
    /// One for a binary MLP (its logit is class 1's log-odds), else the classes.
    pub outputs: usize,
}

/// The forward pass a classifier's test texts go through, this many at a time.
const CLASSIFIER_BATCH: usize = 32;

/// The inputs, consistent with each other.
pub struct KglmInputs {
    /// `[N_train, N_train]`.
    pub train_kernel: KernelFile,
    /// `[N_test, N_train]`, the same kind of kernel.
    pub test_kernel: KernelFile,
    /// Class indices below `classes`.
    pub train_y: Vec<usize>,
    pub test_y: Vec<usize>,
    /// The network's classes (two for a one-output network), or else those the training labels
    /// name.
    pub classes: usize,
    /// The network's logits on the test points.
    pub network: Option<NetworkLogits>,
}

/// The model named by `--model`, before it has seen the test points.
enum Network {
    Mlp(Mlp),
    Classifier(Box<SequenceClassifier>),
}

impl Network {
    /// A directory is a transformer classifier (run on the CPU in f32, as `ntk` runs it), a
    /// file an MLP.
    fn load(model: &Path) -> Result<Self> {
        if model.is_dir() {
            let cpu = Arc::new(CpuBackend::new());
            let classifier = SequenceClassifier::load(model, cpu, WeightsDtype::F32)?;
            Ok(Network::Classifier(Box::new(classifier)))
        } else {
            Ok(Network::Mlp(Mlp::read(model)?))
        }
    }

    /// Classes of the surrogate: two for a one-output (binary) MLP.
    fn classes(&self) -> usize {
        match self {
            Network::Mlp(mlp) => mlp.num_classes().max(2),
            Network::Classifier(classifier) => classifier.num_labels(),
        }
    }
}

impl KglmInputs {
    pub fn read(paths: &KglmPaths) -> Result<Self> {
        let train_kernel = KernelFile::read(paths.train_kernel)?;
        let test_kernel = KernelFile::read(paths.test_kernel)?;
        check_kernels(paths, &train_kernel, &test_kernel)?;
        let network = paths
            .network
            .map(|n| Network::load(n.model).map(|model| (n, model)))
            .transpose()?;
        // A classifier's label names map label files that are texts to class indices.
        let label_names = match &network {
            Some((n, Network::Classifier(classifier))) => Some((classifier.labels(), n.fields)),
            _ => None,
        };
        let train_labels = read_class_labels(paths.train_labels, label_names)?;
        let test_labels = read_class_labels(paths.test_labels, label_names)?;
        check_count(
            paths.train_labels,
            train_labels.len(),
            train_kernel.rows,
            paths.train_kernel,
        )?;
        check_count(
            paths.test_labels,
            test_labels.len(),
            test_kernel.rows,
            paths.test_kernel,
        )?;

        let classes = match &network {
            Some((_, model)) => model.classes(),
            None => train_labels
                .iter()
                .max()
                .map_or(0, |&m| usize::try_from(m + 1).unwrap_or(0)),
        };
        let source = |path: &Path| match &network {
            Some(_) => format!("{} (the model has {classes} classes)", path.display()),
            None => format!(
                "{} (the training labels name {classes} classes)",
                path.display()
            ),
        };
        let train_y = class_indices(&train_labels, classes, &source(paths.train_labels))?;
        let mut distinct = train_y.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let present = distinct.len();
        if present < 2 {
            return Err(Error::input(format!(
                "{}: the training labels hold {present} distinct class(es); a classifier needs 2",
                paths.train_labels.display()
            )));
        }
        // Without a network the labels alone define the classes: a gap (labels {0, 5}) would
        // fit classes that have no row, so the labels must be 0..K−1, all of them used.
        if network.is_none() && present < classes {
            let missing: Vec<String> = (0..classes)
                .filter(|c| distinct.binary_search(c).is_err())
                .take(5)
                .map(|c| c.to_string())
                .collect();
            return Err(Error::input(format!(
                "{}: the labels run up to {} but {} of the classes 0..{classes} have no row \
                 (first: {}); labels must be class indices 0..K−1, each with training rows",
                paths.train_labels.display(),
                classes - 1,
                classes - present,
                missing.join(", ")
            )));
        }
        let test_y = class_indices(&test_labels, classes, &source(paths.test_labels))?;
        let network = match network {
            Some((paths, Network::Mlp(mlp))) => {
                let test = Dataset::read(paths.test_data)?;
                check_network(paths.model, &mlp, paths.test_data, &test, &test_labels)?;
                Some(NetworkLogits {
                    values: mlp.logits(&test.x)?,
                    outputs: mlp.num_classes(),
                })
            }
            Some((paths, Network::Classifier(classifier))) => {
                Some(classifier_logits(&paths, &classifier, &test_labels)?)
            }
            None => None,
        };
        Ok(KglmInputs {
            train_kernel,
            test_kernel,
            train_y,
            test_y,
            classes,
            network,
        })
    }
}

/// The classifier's logits on `--test-data`'s texts, whose labels must be the test labels (the
/// rows in the test kernel's order).
fn classifier_logits(
    paths: &NetworkPaths,
    classifier: &SequenceClassifier,
    test_labels: &[i64],
) -> Result<NetworkLogits> {
    let data = paths.test_data;
    let rows = read_rows(
        &InputSpec {
            path: data.to_path_buf(),
            label: None,
        },
        paths.fields,
    )?;
    if rows.len() != test_labels.len() {
        return Err(Error::input(format!(
            "{} has {} texts but there are {} test labels",
            data.display(),
            rows.len(),
            test_labels.len()
        )));
    }
    let classes = text_label_indices(data, &rows, classifier.labels())?;
    for (row, (class, &label)) in classes.iter().zip(test_labels).enumerate() {
        if class.is_some_and(|c| c as i64 != label) {
            return Err(Error::input(format!(
                "{}: row {}: label {:?} differs from the test labels' class {label} (are the \
                 rows in the test kernel's order?)",
                data.display(),
                row + 1,
                rows[row].label.as_deref().unwrap_or_default()
            )));
        }
    }
    let max_tokens = classifier.encoder().config().max_tokens();
    let tokenizer = TextTokenizer::load(paths.model, max_tokens)?;
    let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
    let tokenized = tokenizer.encode(&texts)?;
    Ok(NetworkLogits {
        values: classifier.logits_of(&tokenized, CLASSIFIER_BATCH)?,
        outputs: classifier.num_labels(),
    })
}

/// K_TT must be square, K_ST must have one column per training point, and both must be the
/// same kind of kernel.
fn check_kernels(paths: &KglmPaths, train: &KernelFile, test: &KernelFile) -> Result<()> {
    if train.rows != train.cols {
        return Err(Error::input(format!(
            "{}: the training kernel is [{}, {}]; expected a square [N_train, N_train]",
            paths.train_kernel.display(),
            train.rows,
            train.cols
        )));
    }
    if test.cols != train.rows {
        return Err(Error::input(format!(
            "{}: the test kernel has {} columns but {} has {} training points (one column each)",
            paths.test_kernel.display(),
            test.cols,
            paths.train_kernel.display(),
            train.rows
        )));
    }
    let describe = |k: &KernelFile| (k.kind.clone(), k.normalized, k.projection_dim);
    if describe(train) != describe(test) {
        return Err(Error::input(format!(
            "{} is a {:?} kernel (kind, normalized, projection_dim) but {} a {:?} one",
            paths.train_kernel.display(),
            describe(train),
            paths.test_kernel.display(),
            describe(test)
        )));
    }
    Ok(())
}

fn check_count(labels: &Path, count: usize, rows: usize, kernel: &Path) -> Result<()> {
    if count == rows {
        return Ok(());
    }
    Err(Error::input(format!(
        "{} has {count} labels but {} has {rows} rows",
        labels.display(),
        kernel.display()
    )))
}

/// Class labels of a dataset (its `y`) or of any file [`read_labels`] takes; with a transformer
/// classifier's label names and fields, of labelled texts (.jsonl, .csv, .tsv) too, each label a
/// name of the model's or a class index.
fn read_class_labels(path: &Path, names: Option<(&[String], &FieldNames)>) -> Result<Vec<i64>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if let (Some((names, fields)), "jsonl" | "csv" | "tsv") = (names, ext) {
        let spec = InputSpec {
            path: path.to_path_buf(),
            label: None,
        };
        let rows = read_rows(&spec, fields)?;
        return text_label_indices(path, &rows, names)?
            .into_iter()
            .enumerate()
            .map(|(row, class)| {
                class.map(|c| c as i64).ok_or_else(|| {
                    Error::input(format!(
                        "{}: row {} has no `{}` field (every point needs a label)",
                        path.display(),
                        row + 1,
                        fields.label
                    ))
                })
            })
            .collect();
    }
    if ext == "safetensors" && TensorFile::read(path)?.contains("x") {
        return Ok(Dataset::read(path)?.y);
    }
    read_labels(path)
}

/// Labels as class indices, each checked to be in `0..classes`.
fn class_indices(labels: &[i64], classes: usize, source: &str) -> Result<Vec<usize>> {
    labels
        .iter()
        .enumerate()
        .map(|(row, &label)| match usize::try_from(label) {
            Ok(c) if c < classes => Ok(c),
            _ => Err(Error::input(format!(
                "{source}: label {label} of row {row} is outside 0..{classes}"
            ))),
        })
        .collect()
}

/// The network must take the test data's rows, and the test data must hold the test points in
/// kernel order, so its labels must be the test labels.
fn check_network(
    model: &Path,
    mlp: &Mlp,
    data: &Path,
    test: &Dataset,
    test_labels: &[i64],
) -> Result<()> {
    if test.dim != mlp.input_dim() {
        return Err(Error::input(format!(
            "{}: rows have {} features but {} takes {}",
            data.display(),
            test.dim,
            model.display(),
            mlp.input_dim()
        )));
    }
    if test.len() != test_labels.len() {
        return Err(Error::input(format!(
            "{} has {} rows but there are {} test labels",
            data.display(),
            test.len(),
            test_labels.len()
        )));
    }
    if let Some(row) = (0..test.len()).find(|&i| test.y[i] != test_labels[i]) {
        return Err(Error::input(format!(
            "{}: label {} of row {row} differs from the test labels' {} (are the rows in the \
             test kernel's order?)",
            data.display(),
            test.y[row],
            test_labels[row]
        )));
    }
    Ok(())
}

/// Two square kernels over the same points, to compare.
pub fn read_square_pair(first: &Path, second: &Path) -> Result<[KernelFile; 2]> {
    let (a, b) = (read_square(first)?, read_square(second)?);
    if a.rows != b.rows {
        return Err(Error::input(format!(
            "{} is over {} points but {} over {}: the kernels must cover the same points",
            first.display(),
            a.rows,
            second.display(),
            b.rows
        )));
    }
    Ok([a, b])
}

fn read_square(path: &Path) -> Result<KernelFile> {
    let k = KernelFile::read(path)?;
    if k.rows != k.cols {
        return Err(Error::input(format!(
            "{}: the kernel is [{}, {}]; comparing needs square kernels over the same points",
            path.display(),
            k.rows,
            k.cols
        )));
    }
    Ok(k)
}
