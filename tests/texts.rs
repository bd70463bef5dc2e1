//! Text input readers: every format's happy path, labels, and each error naming file and line.

use std::path::Path;

use mscope::io::texts::*;
use tempfile::TempDir;

fn write(dir: &TempDir, name: &str, content: impl AsRef<[u8]>) -> InputSpec {
    let path = dir.path().join(name);
    std::fs::write(&path, content).unwrap();
    InputSpec { path, label: None }
}

fn labelled(spec: InputSpec, label: &str) -> InputSpec {
    InputSpec {
        label: Some(label.into()),
        ..spec
    }
}

fn rows(spec: &InputSpec) -> Vec<(String, Option<String>)> {
    read_rows(spec, &FieldNames::default())
        .unwrap()
        .into_iter()
        .map(|row| (row.text, row.label))
        .collect()
}

fn row(text: &str, label: Option<&str>) -> (String, Option<String>) {
    (text.into(), label.map(Into::into))
}

/// The error message, checked to name `file` and, where given, `file:line`.
fn error(spec: &InputSpec, file: &str, line: Option<usize>) -> String {
    let message = read_rows(spec, &FieldNames::default())
        .unwrap_err()
        .to_string();
    assert!(message.contains(file), "{message:?} does not name {file}");
    if let Some(line) = line {
        let at = format!("{file}:{line}:");
        assert!(message.contains(&at), "{message:?} does not contain {at}");
    }
    message
}

#[test]
fn input_spec_parses_label_after_last_equals() {
    let spec: InputSpec = "a.txt=news".parse().unwrap();
    assert_eq!(spec.path, Path::new("a.txt"));
    assert_eq!(spec.label.as_deref(), Some("news"));
    let spec: InputSpec = "x=y.txt=sport".parse().unwrap();
    assert_eq!(spec.path, Path::new("x=y.txt"));
    assert_eq!(spec.label.as_deref(), Some("sport"));
    for plain in ["a.txt", "a.txt=", "=news", "dir=x/a.txt"] {
        let spec: InputSpec = plain.parse().unwrap();
        assert_eq!((spec.path.as_path(), spec.label), (Path::new(plain), None));
    }
    assert!("".parse::<InputSpec>().is_err());
}

#[test]
fn field_names_default() {
    let fields = FieldNames::default();
    assert_eq!(
        (fields.text.as_str(), fields.label.as_str()),
        ("text", "label")
    );
}

#[test]
fn txt_every_line_is_a_row_but_blank_ones_and_the_final_newline() {
    let dir = TempDir::new().unwrap();
    let spec = write(&dir, "a.txt", "one\r\n\n  \ntwo\n");
    let expected = [row("one", None), row("two", None)];
    assert_eq!(rows(&spec), expected);
    let blank = write(&dir, "blank.txt", "\n \t\n\n");
    assert!(
        read_corpus(&[blank], &FieldNames::default()).is_err(),
        "a file of blank lines has no texts"
    );
    let spec = write(&dir, "b.txt", "no newline at end");
    assert_eq!(rows(&spec), [row("no newline at end", None)]);
}

#[test]
fn txt_label_from_argument() {
    let dir = TempDir::new().unwrap();
    let spec = labelled(write(&dir, "a.txt", "x\ny\n"), "news");
    assert_eq!(
        rows(&spec),
        [row("x", Some("news")), row("y", Some("news"))]
    );
}

#[test]
fn jsonl_text_and_labels() {
    let dir = TempDir::new().unwrap();
    let content = concat!(
        r#"{"text": "a", "label": "pos", "id": 1}"#,
        "\n\n",
        r#"{"text": "b", "label": 7}"#,
        "\r\n",
        r#"{"label": -2, "text": ""}"#,
    );
    let spec = write(&dir, "a.jsonl", content);
    let expected = [
        row("a", Some("pos")),
        row("b", Some("7")),
        row("", Some("-2")),
    ];
    assert_eq!(rows(&spec), expected);
}

#[test]
fn jsonl_without_labels_and_custom_fields() {
    let dir = TempDir::new().unwrap();
    let spec = write(&dir, "a.jsonl", "{\"body\": \"a\", \"y\": \"k\"}\n");
    let fields = FieldNames {
        text: "body".into(),
        label: "y".into(),
    };
    let got = read_rows(&spec, &fields).unwrap();
    assert_eq!(
        (got[0].text.as_str(), got[0].label.as_deref()),
        ("a", Some("k"))
    );
    let spec = write(&dir, "b.jsonl", "{\"text\": \"a\"}\n{\"text\": \"b\"}\n");
    assert_eq!(rows(&spec), [row("a", None), row("b", None)]);
}

#[test]
fn argument_label_overrides_and_skips_the_file_label() {
    let dir = TempDir::new().unwrap();
    let content = "{\"text\": \"a\", \"label\": [1]}\n{\"text\": \"b\"}\n";
    let spec = labelled(write(&dir, "a.jsonl", content), "all");
    assert_eq!(rows(&spec), [row("a", Some("all")), row("b", Some("all"))]);
}

#[test]
fn csv_header_labels_and_quoting() {
    let dir = TempDir::new().unwrap();
    let content = "id,label,text\n1,pos,plain\n2,neg,\"a, b\"\n3,pos,\"two\nlines \"\"q\"\"\"\n";
    let spec = write(&dir, "a.csv", content);
    let expected = [
        row("plain", Some("pos")),
        row("a, b", Some("neg")),
        row("two\nlines \"q\"", Some("pos")),
    ];
    assert_eq!(rows(&spec), expected);
}

#[test]
fn csv_without_label_column_and_byte_order_mark() {
    let dir = TempDir::new().unwrap();
    let spec = write(&dir, "a.csv", "\u{feff}text\nx\n\"\"\n");
    assert_eq!(rows(&spec), [row("x", None), row("", None)]);
}

#[test]
fn tsv() {
    let dir = TempDir::new().unwrap();
    let spec = write(&dir, "a.tsv", "text\tlabel\na, b\t1\nc\t2\n");
    assert_eq!(rows(&spec), [row("a, b", Some("1")), row("c", Some("2"))]);
}

#[test]
fn corpus_orders_rows_and_labels_by_first_appearance() {
    let dir = TempDir::new().unwrap();
    let specs = [
        write(
            &dir,
            "a.jsonl",
            "{\"text\": \"a1\", \"label\": \"b\"}\n\n{\"text\": \"a2\", \"label\": \"a\"}\n",
        ),
        labelled(write(&dir, "b.txt", "b1\n"), "b"),
        write(&dir, "c.txt", "c1\nc2\n"),
        write(&dir, "d.csv", "text,label\n\"d\n1\",c\nd2,a\n"),
    ];
    let corpus = read_corpus(&specs, &FieldNames::default()).unwrap();
    assert_eq!(corpus.texts, ["a1", "a2", "b1", "c1", "c2", "d\n1", "d2"]);
    assert_eq!(corpus.label_names, ["b", "a", "c"]);
    assert_eq!(corpus.labels, [0, 1, 0, -1, -1, 2, 1]);
    let sources: Vec<_> = corpus.sources.iter().map(|s| (s.file, s.line)).collect();
    assert_eq!(
        sources,
        [(0, 1), (0, 3), (1, 1), (2, 1), (2, 2), (3, 2), (3, 4)]
    );
}

#[test]
fn corpus_needs_an_input() {
    let err = read_corpus(&[], &FieldNames::default()).unwrap_err();
    assert!(err.to_string().contains("no --input given"), "{err}");
}

#[test]
fn corpus_reports_the_failing_file() {
    let dir = TempDir::new().unwrap();
    let specs = [write(&dir, "ok.txt", "a\n"), write(&dir, "bad.txt", "")];
    let err = read_corpus(&specs, &FieldNames::default()).unwrap_err();
    assert!(err.to_string().contains("bad.txt"), "{err}");
}

#[test]
fn missing_file() {
    let dir = TempDir::new().unwrap();
    let spec = InputSpec {
        path: dir.path().join("absent.txt"),
        label: None,
    };
    let err = read_rows(&spec, &FieldNames::default()).unwrap_err();
    assert!(matches!(err, mscope::Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("absent.txt"), "{err}");
}

#[test]
fn invalid_utf8_names_the_line() {
    let dir = TempDir::new().unwrap();
    for name in ["a.txt", "a.jsonl", "a.csv"] {
        let spec = write(&dir, name, b"text\nok\nbad \xff byte\n");
        error(&spec, name, Some(3));
    }
}

#[test]
fn unknown_extension_lists_supported() {
    let dir = TempDir::new().unwrap();
    for name in ["a.json", "noext"] {
        let message = error(&write(&dir, name, "x\n"), name, None);
        assert!(message.contains(".txt, .jsonl, .csv, .tsv"), "{message}");
    }
}

#[test]
fn no_texts() {
    let dir = TempDir::new().unwrap();
    for (name, content) in [("a.txt", ""), ("a.jsonl", "\n \n"), ("a.csv", "text\n")] {
        let message = error(&write(&dir, name, content), name, None);
        assert!(message.contains("no texts"), "{message}");
    }
}

#[test]
fn jsonl_errors() {
    let dir = TempDir::new().unwrap();
    let ok = "{\"text\": \"a\"}\n";
    let cases = [
        ("[1, 2]", "not a JSON object"),
        ("{\"text\": ", "invalid JSON"),
        ("{\"body\": \"a\"}", "no field \"text\""),
        ("{\"text\": 3}", "\"text\" is not a string"),
        (
            "{\"text\": \"b\", \"label\": 1.5}",
            "\"label\" is not a string or an integer",
        ),
        (
            "{\"text\": \"b\", \"label\": true}",
            "\"label\" is not a string or an integer",
        ),
    ];
    for (line, expected) in cases {
        let spec = write(&dir, "a.jsonl", format!("{ok}\n{line}\n"));
        let message = error(&spec, "a.jsonl", Some(3));
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }
}

#[test]
fn csv_missing_text_column_names_the_columns() {
    let dir = TempDir::new().unwrap();
    let spec = write(&dir, "a.csv", "id,body\n1,x\n");
    let message = error(&spec, "a.csv", Some(1));
    assert!(
        message.contains("\"text\"") && message.contains("id, body"),
        "{message}"
    );
}

#[test]
fn csv_ragged_record_names_its_line() {
    let dir = TempDir::new().unwrap();
    let spec = write(&dir, "a.csv", "text,label\na,1\nb,2,extra\n");
    error(&spec, "a.csv", Some(3));
}

#[test]
fn partly_labelled_files_are_rejected_at_the_first_gap() {
    let dir = TempDir::new().unwrap();
    let jsonl = "{\"text\": \"a\"}\n{\"text\": \"b\", \"label\": \"x\"}\n{\"text\": \"c\", \"label\": \"\"}\n";
    let message = error(&write(&dir, "a.jsonl", jsonl), "a.jsonl", Some(1));
    assert!(message.contains("line 2"), "{message}");
    let csv = "text,label\na,x\nb,\nc,y\n";
    error(&write(&dir, "b.csv", csv), "b.csv", Some(3));
    let tsv = "text\tlabel\na\tx\nb\t\n";
    error(&write(&dir, "c.tsv", tsv), "c.tsv", Some(3));
}
