//! The datasets of a training run (`mscope train`), read and checked against each other: the
//! training rows with at least two classes, and optionally test rows of the same dimension
//! whose labels are among the training classes.

use std::path::Path;

use crate::data::Dataset;
use crate::error::{Error, Result};

/// The training rows and the test rows, if any.
pub fn read_train_test(data: &Path, test: Option<&Path>) -> Result<(Dataset, Option<Dataset>)> {
    let train = Dataset::read(data)?;
    if train.is_empty() {
        return Err(Error::input(format!("{}: no rows", data.display())));
    }
    let classes = train.num_classes();
    if classes < 2 {
        return Err(Error::input(format!(
            "{}: every label is {}; a classifier needs at least 2 classes",
            data.display(),
            train.y[0]
        )));
    }
    let test = match test {
        Some(path) => {
            let test = Dataset::read(path)?;
            if test.is_empty() {
                return Err(Error::input(format!("{}: no rows", path.display())));
            }
            if test.dim != train.dim {
                return Err(Error::input(format!(
                    "{}: rows of dimension {}, but the training data {} has {}",
                    path.display(),
                    test.dim,
                    data.display(),
                    train.dim
                )));
            }
            test.check_labels(classes, path)?;
            Some(test)
        }
        None => None,
    };
    Ok((train, test))
}
