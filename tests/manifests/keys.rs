//! No committed file gives a Service Bus key away, in clear, base64-encoded or bare.

use std::{fs, path::Path, process::Command};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use serde::Deserialize;
use serde_json::Value;

use crate::ROOT;

#[test]
fn no_committed_file_holds_a_service_bus_key() {
    let output = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(ROOT)
        .output()
        .expect("git is needed to list the committed files");
    assert!(output.status.success(), "git ls-files failed");
    let files: Vec<&[u8]> = output
        .stdout
        .split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .collect();
    assert!(!files.is_empty());
    let offending: Vec<String> = files
        .into_iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .filter(|f| {
            fs::read(Path::new(ROOT).join(f))
                .is_ok_and(|bytes| leaks_a_key(f, &String::from_utf8_lossy(&bytes)))
        })
        .collect();
    assert!(
        offending.is_empty(),
        "committed files with what looks like a real Service Bus key: {offending:?}"
    );
}

#[test]
fn the_key_detector_sees_keys_in_clear_base64_encoded_and_bare() {
    // Built at run time, so this file holds no such string itself: 43 characters and one `=`,
    // the shape of a 256-bit key.
    let key = format!("{}Ab1=", "Ab1+".repeat(10));
    assert_eq!(key.len(), 44);
    let connection = format!(
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=dapr;SharedAccessKey={key}"
    );

    // In clear, in any file.
    assert!(leaks_a_key("notes.md", &connection));
    assert!(!leaks_a_key("notes.md", "SharedAccessKey=<key>;"));

    // Base64-encoded in a Secret's data, on one line or wrapped as kustomize writes it.
    let encoded = BASE64.encode(connection.as_bytes());
    let secret = |value: &str| format!("apiVersion: v1\nkind: Secret\ndata:\n  dapr: {value}\n");
    assert!(leaks_a_key("deploy/secret.yaml", &secret(&encoded)));
    let (head, tail) = encoded.split_at(76);
    assert!(leaks_a_key(
        "deploy/secret.yml",
        &secret(&format!("{head}\n    {tail}"))
    ));
    // Encoded secrets that hold no Service Bus key, and base64 outside YAML, are not flagged.
    let harmless = BASE64.encode(b"amqp://dapr:local-only@rabbitmq:5672");
    assert!(!leaks_a_key("deploy/secret.yaml", &secret(&harmless)));
    assert!(!leaks_a_key("notes.md", &encoded));

    // Bare, in YAML and env files.
    assert!(leaks_a_key("deploy/x.yaml", &format!("key: {key}\n")));
    assert!(leaks_a_key("deploy/x.yaml", &format!("key: \"{key}\"\n")));
    assert!(leaks_a_key("servicebus.env", &format!("KEY={key}\n")));
    assert!(leaks_a_key(".env", &format!("KEY={key}")));
    assert!(!leaks_a_key("notes.md", &format!("key: {key}\n")));
    // Not a key's shape: a 43-character name before `=` and its value, no padding, two `=`,
    // one letter case only.
    for not_a_key in [
        format!("{}=value", &key[..43]),
        format!("v: {}", &key[..43]),
        format!("v: {}A==", &key[..42]),
        format!("v: {}=", "ab+/".repeat(11).split_at(43).0),
    ] {
        assert!(
            !leaks_a_key("deploy/x.yaml", &not_a_key),
            "flagged {not_a_key:?}"
        );
    }
}

/// Whether `text`, the content of the committed file `path`, gives a Service Bus key away: a
/// connection string in clear, in any file; in YAML, also one base64-encoded, as a Secret's
/// `data:` holds it; in YAML and env files, also a bare key.
pub(crate) fn leaks_a_key(path: &str, text: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
    let env = name.ends_with(".env") || name.starts_with(".env");
    looks_like_a_key(text)
        || (yaml && yaml_strings(text).iter().any(|s| base64_hides_a_key(s)))
        || ((yaml || env) && holds_a_bare_key(text))
}

/// `SharedAccessKey=` followed by 40 or more base64 characters: a real key is 44.
pub(crate) fn looks_like_a_key(text: &str) -> bool {
    text.match_indices("SharedAccessKey=").any(|(at, marker)| {
        text[at + marker.len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
            .count()
            >= 40
    })
}

/// Every string value in a YAML file; every word, should a document not parse.
pub(crate) fn yaml_strings(text: &str) -> Vec<String> {
    fn collect(value: &Value, strings: &mut Vec<String>) {
        match value {
            Value::String(s) => strings.push(s.clone()),
            Value::Array(items) => items.iter().for_each(|v| collect(v, strings)),
            Value::Object(map) => map.values().for_each(|v| collect(v, strings)),
            _ => {}
        }
    }
    let mut strings = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        match Value::deserialize(document) {
            Ok(value) => collect(&value, &mut strings),
            Err(_) => {
                return text
                    .split(|c: char| c.is_whitespace() || matches!(c, '"' | '\''))
                    .map(str::to_owned)
                    .collect();
            }
        }
    }
    strings
}

/// A base64 value (line breaks and indentation ignored, as in a wrapped Secret value) whose
/// decoded text holds a connection string with its key. 76 characters encode the 56 that
/// [`looks_like_a_key`] needs at the least.
pub(crate) fn base64_hides_a_key(value: &str) -> bool {
    let value: String = value.chars().filter(|c| !c.is_whitespace()).collect();
    value.len() >= 76
        && BASE64
            .decode(&value)
            .is_ok_and(|bytes| looks_like_a_key(&String::from_utf8_lossy(&bytes)))
}

/// A word of 43 base64 characters and one `=`, the encoding of a 256-bit key as Azure prints
/// it, standing alone (not a name before `=value`). Upper case, lower case and a digit are all
/// required, as in any real key but few names.
pub(crate) fn holds_a_bare_key(text: &str) -> bool {
    let body = |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/';
    let bytes = text.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        if !body(bytes[at]) {
            at += 1;
            continue;
        }
        let start = at;
        while at < bytes.len() && body(bytes[at]) {
            at += 1;
        }
        let word = &bytes[start..at];
        let padding = bytes[at..].iter().take_while(|&&b| b == b'=').count();
        at += padding;
        if word.len() == 43
            && padding == 1
            && !bytes.get(at).copied().is_some_and(body)
            && word.iter().any(u8::is_ascii_uppercase)
            && word.iter().any(u8::is_ascii_lowercase)
            && word.iter().any(u8::is_ascii_digit)
        {
            return true;
        }
    }
    false
}
