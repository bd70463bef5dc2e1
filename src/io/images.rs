//! Image inputs of `mscope embed --images`: files, folders laid out as torchvision's
//! `ImageFolder` expects — every image under a folder, in sorted relative-path order, labelled by
//! the sub-folder directly under the folder it was found in (`DIR/cat/x.png` is a `cat`) — and
//! lists: a `.csv`/`.tsv` with an image column or a `.jsonl` with an image field, paths relative
//! to the list's folder, labelled by the label column as text inputs are (every row or none; read
//! by the text-input reader, so quoting and errors are the same).
//!
//! Files whose extension is not an image's are refused, naming the file, rather than skipped,
//! so a stray file never silently shifts what was embedded — unless the caller asks to skip bad
//! files (`--skip-bad`), when each is recorded in [`ImageCorpus::skipped`] for the caller to
//! list. Hidden entries (names starting with `.`, such as `.DS_Store`) are passed over.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::texts::{read_corpus, FieldNames, InputSpec};
use crate::error::{Error, Result};
use crate::models::image::IMAGE_EXTENSIONS;

/// Extensions of the image lists [`collect_images`] reads.
const LIST_EXTENSIONS: [&str; 3] = ["csv", "tsv", "jsonl"];

/// Images to embed, in row order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageCorpus {
    pub paths: Vec<PathBuf>,
    /// Index into `label_names`; -1 for an image given as a file or lying directly in a folder
    /// input.
    pub labels: Vec<i64>,
    /// Sub-folder names, sorted.
    pub label_names: Vec<String>,
    /// Why each file passed over when skipping bad files was asked for, in input order (each
    /// message names its file).
    pub skipped: Vec<String>,
}

impl ImageCorpus {
    /// The corpus without the rows at `rows` (sorted indices), label names left without rows
    /// dropped and the rest renumbered.
    pub fn without(self, rows: &[usize]) -> ImageCorpus {
        let kept: Vec<(PathBuf, i64)> = self
            .paths
            .into_iter()
            .zip(self.labels)
            .enumerate()
            .filter(|(i, _)| rows.binary_search(i).is_err())
            .map(|(_, row)| row)
            .collect();
        let used: BTreeSet<i64> = kept.iter().map(|&(_, l)| l).filter(|&l| l >= 0).collect();
        let label_names = used
            .iter()
            .map(|&l| self.label_names[l as usize].clone())
            .collect();
        let renumber = |l: i64| match used.iter().position(|&u| u == l) {
            Some(new) => new as i64,
            None => -1,
        };
        let (paths, labels) = kept.into_iter().map(|(p, l)| (p, renumber(l))).unzip();
        ImageCorpus {
            paths,
            labels,
            label_names,
            skipped: self.skipped,
        }
    }
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| extensions.contains(&e.to_ascii_lowercase().as_str()))
}

fn is_image(path: &Path) -> bool {
    has_extension(path, &IMAGE_EXTENSIONS)
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// A file in a folder input that is not an image (image lists are read only when named
/// directly, so a list in a folder is refused too).
fn not_an_image(path: &Path) -> Error {
    Error::input(format!(
        "{}: not an image file (supported extensions: {}); remove it or name the images \
         individually",
        path.display(),
        IMAGE_EXTENSIONS.join(", ")
    ))
}

/// The rows of an image list: each image's path (relative ones from the list's folder) and
/// label, checked to be an image file that exists; with `skipped`, a row that is not is
/// recorded there instead of failing the list.
fn list_rows(
    list: &Path,
    fields: &FieldNames,
    mut skipped: Option<&mut Vec<String>>,
) -> Result<Vec<(PathBuf, Option<String>)>> {
    let spec = InputSpec {
        path: list.to_path_buf(),
        label: None,
    };
    let corpus = read_corpus(&[spec], fields)?;
    let folder = list.parent().unwrap_or(Path::new(""));
    let mut rows = Vec::with_capacity(corpus.texts.len());
    for ((text, &label), source) in corpus.texts.iter().zip(&corpus.labels).zip(&corpus.sources) {
        let at = |what: &str| {
            Error::input(format!(
                "{}:{}: {}: {what}",
                list.display(),
                source.line,
                text
            ))
        };
        let path = folder.join(text);
        let problem = if !is_image(&path) {
            Some(at(&format!(
                "not an image file (supported extensions: {})",
                IMAGE_EXTENSIONS.join(", ")
            )))
        } else if !path.is_file() {
            Some(at(&format!("no such file ({})", path.display())))
        } else {
            None
        };
        if let Some(error) = problem {
            match skipped.as_deref_mut() {
                Some(skipped) => {
                    skipped.push(error.to_string());
                    continue;
                }
                None => return Err(error),
            }
        }
        let name = usize::try_from(label)
            .ok()
            .map(|l| corpus.label_names[l].clone());
        rows.push((path, name));
    }
    Ok(rows)
}

/// Every file under `dir` (hidden entries excepted), sorted by path relative to it.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|entry| entry.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect::<Result<Vec<_>>>()?;
    entries.sort();
    for path in entries {
        if is_hidden(&path) {
            continue;
        }
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// Collects the images of `inputs` (image files, folders, image lists) in order: each input's
/// images in turn. `fields.text` names the image column of lists, `fields.label` their labels.
/// A file that is not an image (by its extension; a list's row naming no file) is an error, or
/// with `skip_bad` recorded in [`ImageCorpus::skipped`] and left out.
pub fn collect_images(
    inputs: &[PathBuf],
    fields: &FieldNames,
    skip_bad: bool,
) -> Result<ImageCorpus> {
    // (path, label name) per row; names are numbered once every input is read.
    let mut rows: Vec<(PathBuf, Option<String>)> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    // A bad file: recorded when skipping, else the error.
    let refuse = |skipped: &mut Vec<String>, error: Error| {
        if skip_bad {
            skipped.push(error.to_string());
            Ok(())
        } else {
            Err(error)
        }
    };
    for input in inputs {
        if input.is_dir() {
            let mut files = Vec::new();
            walk(input, &mut files)?;
            if files.is_empty() {
                return Err(Error::input(format!(
                    "{}: the folder holds no images",
                    input.display()
                )));
            }
            for path in files {
                if !is_image(&path) {
                    refuse(&mut skipped, not_an_image(&path))?;
                    continue;
                }
                let relative = path.strip_prefix(input).expect("walked from the input");
                let mut parts = relative.components();
                let label = match (parts.next(), parts.next()) {
                    (Some(folder), Some(_)) => {
                        Some(folder.as_os_str().to_string_lossy().into_owned())
                    }
                    _ => None,
                };
                rows.push((path, label));
            }
        } else if input.is_file() && has_extension(input, &LIST_EXTENSIONS) {
            let skipped = if skip_bad { Some(&mut skipped) } else { None };
            rows.extend(list_rows(input, fields, skipped)?);
        } else if input.is_file() {
            if !is_image(input) {
                refuse(
                    &mut skipped,
                    Error::input(format!(
                        "{}: neither an image (extensions: {}) nor an image list ({})",
                        input.display(),
                        IMAGE_EXTENSIONS.join(", "),
                        LIST_EXTENSIONS.join(", ")
                    )),
                )?;
                continue;
            }
            rows.push((input.clone(), None));
        } else {
            return Err(Error::input(format!(
                "{}: no such file or folder",
                input.display()
            )));
        }
    }
    let label_names: Vec<String> = rows
        .iter()
        .filter_map(|(_, l)| l.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let labels = rows
        .iter()
        .map(|(_, l)| match l {
            Some(name) => label_names.binary_search(name).expect("collected") as i64,
            None => -1,
        })
        .collect();
    Ok(ImageCorpus {
        paths: rows.into_iter().map(|(p, _)| p).collect(),
        labels,
        label_names,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> FieldNames {
        FieldNames {
            text: "image".into(),
            label: "label".into(),
        }
    }

    #[test]
    fn folders_label_by_subfolder_and_refuse_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for path in [
            "b/2.png",
            "b/1.JPG",
            "a/deep/3.jpeg",
            "top.png",
            ".DS_Store",
        ] {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"").unwrap();
        }
        let corpus = collect_images(&[root.to_path_buf()], &fields(), false).unwrap();
        let relative: Vec<String> = corpus
            .paths
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect();
        assert_eq!(relative, ["a/deep/3.jpeg", "b/1.JPG", "b/2.png", "top.png"]);
        assert_eq!(corpus.label_names, ["a", "b"]);
        assert_eq!(corpus.labels, [0, 1, 1, -1]);

        std::fs::write(root.join("b/notes.txt"), b"").unwrap();
        let err = collect_images(&[root.to_path_buf()], &fields(), false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("notes.txt") && err.contains("not an image"),
            "{err}"
        );
        let err = collect_images(&[root.join("b/notes.txt")], &fields(), false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("notes.txt") && err.contains("neither an image"),
            "{err}"
        );

        let empty = root.join("empty");
        std::fs::create_dir(&empty).unwrap();
        let err = collect_images(&[empty], &fields(), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no images"), "{err}");
    }

    /// With `skip_bad`, every bad file — in a folder, a list's row, a named file — is recorded
    /// and left out; `without` then drops rows and the labels left without any.
    #[test]
    fn skipping_records_every_bad_file_and_renumbers_labels() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("photos");
        for path in ["a/1.png", "a/notes.txt", "b/2.png", "c/3.png", "readme.md"] {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"").unwrap();
        }
        // Beside the folder, not in it (a list in a folder is a bad file of the folder).
        let list = dir.path().join("list.csv");
        std::fs::write(&list, "image\nphotos/b/2.png\nmissing.png\n").unwrap();
        let inputs = [root.clone(), list, root.join("readme.md")];
        let err = collect_images(&inputs[2..], &fields(), false).unwrap_err();
        assert!(err.to_string().contains("readme.md"), "{err}");
        let corpus = collect_images(&inputs, &fields(), true).unwrap();
        // The folder's readme.md is a bad file of the folder, then the list's, then the input.
        assert_eq!(corpus.skipped.len(), 4, "{:?}", corpus.skipped);
        for (skipped, needle) in corpus.skipped.iter().zip([
            "a/notes.txt: not an image file",
            "readme.md: not an image file",
            "list.csv:3: missing.png: no such file",
            "readme.md: neither an image",
        ]) {
            assert!(skipped.contains(needle), "{skipped}");
        }
        assert_eq!(corpus.paths.len(), 4);
        assert_eq!(corpus.label_names, ["a", "b", "c"]);
        assert_eq!(corpus.labels, [0, 1, 2, -1]);
        let kept = corpus.without(&[0, 3]);
        assert_eq!(kept.paths, [root.join("b/2.png"), root.join("c/3.png")]);
        assert_eq!(kept.label_names, ["b", "c"]);
        assert_eq!(kept.labels, [0, 1]);
        assert_eq!(kept.skipped.len(), 4);
    }

    /// Lists name images relative to their own folder, in their own order, labelled by the label
    /// column; a missing file or a non-image names the list and line.
    #[test]
    fn csv_and_jsonl_lists_name_images_relative_to_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for path in ["pics/b.png", "pics/a.webp", "other.jpg"] {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"").unwrap();
        }
        let csv = root.join("pics/list.csv");
        std::fs::write(
            &csv,
            "image,label\nb.png,cat\na.webp,dog\n../other.jpg,cat\n",
        )
        .unwrap();
        let jsonl = root.join("list.jsonl");
        std::fs::write(&jsonl, "{\"image\": \"pics/a.webp\"}\n").unwrap();
        let corpus = collect_images(&[csv.clone(), jsonl.clone()], &fields(), false).unwrap();
        assert_eq!(
            corpus.paths,
            [
                root.join("pics/b.png"),
                root.join("pics/a.webp"),
                root.join("pics/../other.jpg"),
                root.join("pics/a.webp"),
            ]
        );
        assert_eq!(corpus.label_names, ["cat", "dog"]);
        assert_eq!(corpus.labels, [0, 1, 0, -1]);

        let cases = [
            (
                "image,label\nb.png,cat\nmissing.png,cat\n",
                "list.csv:3: missing.png: no such file",
            ),
            (
                "image\nb.png\nnotes.txt\n",
                "list.csv:3: notes.txt: not an image file",
            ),
            ("image,label\nb.png,cat\na.webp,\n", "list.csv:3: no label"),
            ("picture\nb.png\n", "no column \"image\""),
        ];
        for (content, needle) in cases {
            std::fs::write(&csv, content).unwrap();
            let err = collect_images(std::slice::from_ref(&csv), &fields(), false)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
