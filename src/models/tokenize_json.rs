//! `tokenizer.json` read section by section: the same [`Tokenizer`] the tokenizers crate's own
//! parser builds, in a fraction of the time for a large vocabulary.
//!
//! The crate reads the `model` section as an untagged enum: the whole section is buffered as
//! generic values, copied into a JSON tree (a sorted map of the vocabulary) and only then
//! converted into the model, three copies of every vocabulary string. For all-MiniLM-L6-v2's 30 522
//! word pieces that is most of the start-up of `mscope embed` on a short corpus. Here each top-level
//! section is parsed from its own text with the type the crate reads it as, and a WordPiece or BPE
//! model straight into that type, which its `type` field names. Anything else (another model,
//! a duplicated key, an error of any kind) is left to the crate's parser, so errors are reported
//! exactly as it reports them.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use tokenizers::{
    AddedToken, DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper,
    PreTokenizerWrapper, Tokenizer, TokenizerBuilder,
};

/// The tokenizer `text` describes, or `None` where this reader does not apply or `text` is
/// malformed (the caller then parses it with the crate, which says what is wrong).
pub(super) fn parse(text: &str) -> Option<Tokenizer> {
    let mut builder = TokenizerBuilder::<
        ModelWrapper,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new();
    let mut added = Vec::new();
    // The keys the crate's parser reads, each as the type it reads it as; it ignores the others.
    for (key, raw) in members(text)? {
        match key {
            "version" if section::<String>(raw)? != "1.0" => return None,
            "truncation" => builder = builder.with_truncation(section(raw)?),
            "padding" => builder = builder.with_padding(section(raw)?),
            "added_tokens" => {
                added = section::<Vec<NumberedToken>>(raw)?
                    .into_iter()
                    .map(|t| t.token)
                    .collect();
            }
            "normalizer" => builder = builder.with_normalizer(section(raw)?),
            "pre_tokenizer" => builder = builder.with_pre_tokenizer(section(raw)?),
            "model" => builder = builder.with_model(model(raw)?),
            "decoder" => builder = builder.with_decoder(section(raw)?),
            "post_processor" => builder = builder.with_post_processor(section(raw)?),
            _ => {}
        }
    }
    let mut tokenizer = Tokenizer::from(builder.build().ok()?);
    // As the crate does after building: the added tokens take their ids from the model's
    // vocabulary where it has them.
    tokenizer.add_tokens(&added);
    Some(tokenizer)
}

/// An `added_tokens` entry: the token, and the id the crate requires but assigns itself.
#[derive(serde::Deserialize)]
struct NumberedToken {
    #[serde(rename = "id")]
    _id: u32,
    #[serde(flatten)]
    token: AddedToken,
}

/// `raw` as `T`, or `None` where it is not one.
fn section<'a, T: Deserialize<'a>>(raw: &'a RawValue) -> Option<T> {
    serde_json::from_str(raw.get()).ok()
}

/// The `model` section as the model its `type` names: WordPiece or BPE (whose parsers check
/// that field themselves); `None` for the others.
fn model(raw: &RawValue) -> Option<ModelWrapper> {
    let (_, kind) = members(raw.get())?
        .into_iter()
        .find(|&(k, _)| k == "type")?;
    match section::<&str>(kind)? {
        "WordPiece" => section(raw).map(ModelWrapper::WordPiece),
        "BPE" => section(raw).map(ModelWrapper::BPE),
        _ => None,
    }
}

/// The members of the JSON object `text`, in order, their values unparsed; `None` where `text`
/// is not an object, a key has escapes, or a key repeats (the crate takes the last of repeated
/// keys in some places and refuses them in others).
fn members(text: &str) -> Option<Vec<(&str, &RawValue)>> {
    let Members(members) = serde_json::from_str(text).ok()?;
    let mut keys: Vec<&str> = members.iter().map(|&(k, _)| k).collect();
    keys.sort_unstable();
    if keys.windows(2).any(|pair| pair[0] == pair[1]) {
        return None;
    }
    Some(members)
}

struct Members<'a>(Vec<(&'a str, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<&str, &RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Every tokenizer.json among the fixtures (and all-MiniLM-L6-v2's, where it was fetched),
    /// with whether this reader handles its model.
    fn fixtures() -> Vec<(std::path::PathBuf, bool)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut found = vec![];
        let mut dirs = vec![root.join("tests/fixtures")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.file_name().is_some_and(|n| n == "tokenizer.json") {
                    found.push(path);
                }
            }
        }
        let minilm = root.join(".cache/models/all-MiniLM-L6-v2/tokenizer.json");
        if minilm.is_file() {
            found.push(minilm);
        }
        found.sort();
        found
            .into_iter()
            .map(|path| {
                let text = std::fs::read_to_string(&path).unwrap();
                let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                let kind = value["model"]["type"].as_str().unwrap_or("").to_string();
                (path, matches!(kind.as_str(), "WordPiece" | "BPE"))
            })
            .collect()
    }

    #[test]
    fn builds_the_tokenizer_the_crate_builds() {
        let fixtures = fixtures();
        assert!(
            fixtures.iter().filter(|(_, handled)| *handled).count() >= 5,
            "too few WordPiece / BPE fixtures: {fixtures:?}"
        );
        let texts = [
            "Hello, world! Tokenisers split naïve café text into pieces.",
            "  spaces   and\ttabs, numbers 12345, emoji 🙂 and 日本語",
        ];
        for (path, handled) in fixtures {
            let text = std::fs::read_to_string(&path).unwrap();
            let ours = parse(&text);
            if !handled {
                assert!(
                    ours.is_none(),
                    "{}: not a WordPiece or BPE model",
                    path.display()
                );
                continue;
            }
            let ours = ours.unwrap_or_else(|| panic!("{}: not read", path.display()));
            let crate_own: Tokenizer = text.parse().unwrap();
            assert_eq!(
                serde_json::to_value(&ours).unwrap(),
                serde_json::to_value(&crate_own).unwrap(),
                "{}",
                path.display()
            );
            for text in texts {
                let ids = |t: &Tokenizer| t.encode(text, true).unwrap().get_ids().to_vec();
                assert_eq!(ids(&ours), ids(&crate_own), "{}: {text}", path.display());
            }
        }
    }

    #[test]
    fn leaves_malformed_and_duplicated_files_to_the_crate() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/classifiers/tiny-bert-cls/tokenizer.json"),
        )
        .unwrap();
        assert!(parse(&text).is_some());
        let cases = [
            text.replacen("\"version\": \"1.0\"", "\"version\": \"2.0\"", 1),
            text.replacen("\"model\"", "\"decoder\": null, \"model\"", 1),
            text.replacen("\"model\"", "\"model\": null, \"model\"", 1),
            text.replacen(
                "\"model\": {\"type\": \"WordPiece\"",
                "\"model\": {\"type\": \"Unigram\"",
                1,
            ),
            text[..text.len() / 2].to_string(),
        ];
        for (i, case) in cases.iter().enumerate() {
            assert_ne!(case, &text, "case {i} changed nothing");
            assert!(parse(case).is_none(), "case {i} was read");
        }
    }
}
