//! Label algebra over an embeddings file, as the seeds' tables slice their sources: keep a subset
//! of the labels (`--only a,b,c`), merge labels into classes (`--group NAME=a,b`, repeatable:
//! "(LSUN, DDPM) vs (SDXL, Open-Dalle)"), or both — `--only` first, by the file's own names.
//!
//! Rows whose label is not kept are dropped (unlabelled rows too, once `--only` is given); the
//! classes come out in the order their first member appears among the file's labels, a group
//! taking the place of its first member.

use std::str::FromStr;

use crate::error::{Error, Result};
use crate::io::embeddings::EmbeddingsFile;

/// `NAME=a,b,…`: labels `a`, `b`, … become one class called `NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelGroup {
    pub name: String,
    pub members: Vec<String>,
}

impl FromStr for LabelGroup {
    type Err = String;

    fn from_str(arg: &str) -> std::result::Result<Self, String> {
        let (name, members) = arg
            .split_once('=')
            .ok_or_else(|| format!("`{arg}`: expected NAME=LABEL,LABEL,…"))?;
        let members: Vec<String> = members
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(String::from)
            .collect();
        if name.trim().is_empty() {
            return Err(format!("`{arg}`: the group needs a name before `=`"));
        }
        if members.len() < 2 {
            return Err(format!(
                "`{arg}`: a group merges two or more labels (to keep one label use --only)"
            ));
        }
        Ok(LabelGroup {
            name: name.trim().into(),
            members,
        })
    }
}

/// Which labels an analysis sees.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelection {
    /// Labels to keep (empty: all).
    pub only: Vec<String>,
    pub groups: Vec<LabelGroup>,
}

impl LabelSelection {
    pub fn is_identity(&self) -> bool {
        self.only.is_empty() && self.groups.is_empty()
    }

    /// The rows and classes `file` keeps under the selection, and the indices of the kept rows
    /// in the file (to select their texts too). Unknown labels, a label in two groups or in a
    /// group but left out by `--only`, and a group named like a label outside it are errors.
    pub fn apply(&self, file: EmbeddingsFile) -> Result<(EmbeddingsFile, Vec<usize>)> {
        if self.is_identity() {
            let kept = (0..file.rows()).collect();
            return Ok((file, kept));
        }
        let names = &file.label_names;
        let index_of = |label: &str, flag: &str| {
            names.iter().position(|n| n == label).ok_or_else(|| {
                Error::input(format!(
                    "{flag}: no label {label:?} in the embeddings (labels: {})",
                    names.join(", ")
                ))
            })
        };
        // The class each of the file's labels becomes (None: dropped), by name.
        let mut class: Vec<Option<String>> = if self.only.is_empty() {
            names.iter().cloned().map(Some).collect()
        } else {
            let mut kept = vec![None; names.len()];
            for label in &self.only {
                kept[index_of(label, "--only")?] = Some(label.clone());
            }
            kept
        };
        let mut grouped = vec![false; names.len()];
        for group in &self.groups {
            for member in &group.members {
                let i = index_of(member, "--group")?;
                if grouped[i] {
                    return Err(Error::input(format!(
                        "--group: label {member:?} is in two groups"
                    )));
                }
                if class[i].is_none() {
                    return Err(Error::input(format!(
                        "--group {}: label {member:?} is left out by --only",
                        group.name
                    )));
                }
                grouped[i] = true;
                class[i] = Some(group.name.clone());
            }
        }
        for group in &self.groups {
            let clash =
                (0..names.len()).find(|&i| !grouped[i] && class[i].as_deref() == Some(&group.name));
            if let Some(i) = clash {
                return Err(Error::input(format!(
                    "--group {}: the name is also a label outside the group ({:?}); pick another",
                    group.name, names[i]
                )));
            }
        }
        let mut classes: Vec<String> = Vec::new();
        let code: Vec<Option<i64>> = class
            .iter()
            .map(|c| {
                c.as_ref().map(|name| {
                    let at = classes.iter().position(|k| k == name).unwrap_or_else(|| {
                        classes.push(name.clone());
                        classes.len() - 1
                    });
                    at as i64
                })
            })
            .collect();
        let kept: Vec<usize> = (0..file.rows())
            .filter(|&r| {
                let keep_unlabelled = self.only.is_empty();
                match usize::try_from(file.labels[r]) {
                    Ok(l) => code[l].is_some(),
                    Err(_) => keep_unlabelled,
                }
            })
            .collect();
        let dim = file.dim;
        let embeddings = kept
            .iter()
            .flat_map(|&r| file.embeddings[r * dim..(r + 1) * dim].iter().copied())
            .collect();
        let labels = kept
            .iter()
            .map(|&r| usize::try_from(file.labels[r]).map_or(-1, |l| code[l].expect("kept")))
            .collect();
        let selected = EmbeddingsFile {
            embeddings,
            labels,
            label_names: classes,
            ..file
        };
        Ok((selected, kept))
    }
}
