//! How results are shown: text for people, JSON (`--json`) for programs.
//!
//! Keys and values are binary. In text they print as UTF-8 when they are, else with
//! non-ASCII bytes escaped (`\xNN`). In JSON a field `F` holds the UTF-8 string, or, for
//! other bytes, a field `F_base64` holds them base64-encoded instead.

use std::io::{IsTerminal, Write};

use aspen_core::{Event, EventKind, KeyValue};
use serde_json::{Map, Value, json};

/// Bytes as text: UTF-8 as is, anything else escaped.
pub fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => bytes.escape_ascii().to_string(),
    }
}

/// Bytes as a shell word that can be pasted back into a command, when they are printable
/// UTF-8; `None` otherwise.
pub fn shell_word(bytes: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(bytes).ok()?;
    if s.chars().any(char::is_control) {
        return None;
    }
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-:=@+,".contains(c)) {
        return Some(s.to_string());
    }
    Some(format!("'{}'", s.replace('\'', r"'\''")))
}

/// Adds `bytes` to `map` as `field` (UTF-8) or `field_base64`.
pub fn put_bytes(map: &mut Map<String, Value>, field: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => map.insert(field.to_string(), Value::String(s.to_string())),
        Err(_) => map.insert(format!("{field}_base64"), Value::String(data_encoding::BASE64.encode(bytes))),
    };
}

/// A JSON object holding just `bytes` under `field`.
pub fn bytes_object(field: &str, bytes: &[u8]) -> Map<String, Value> {
    let mut map = Map::new();
    put_bytes(&mut map, field, bytes);
    map
}

/// A key-value with all its metadata, as JSON.
pub fn kv_json(kv: &KeyValue) -> Value {
    let mut map = bytes_object("key", &kv.key);
    put_bytes(&mut map, "value", &kv.value);
    map.insert("create_revision".into(), json!(kv.create_revision));
    map.insert("mod_revision".into(), json!(kv.mod_revision));
    map.insert("version".into(), json!(kv.version));
    map.insert("lease".into(), json!(kv.lease.map(|l| l.0)));
    Value::Object(map)
}

/// An optional key-value as JSON (`null` when absent).
pub fn opt_kv_json(kv: Option<&KeyValue>) -> Value {
    kv.map_or(Value::Null, kv_json)
}

/// `key=value`.
pub fn kv_line(kv: &KeyValue) -> String {
    format!("{}={}", text(&kv.key), text(&kv.value))
}

/// A key-value's metadata, for text output: `create_rev=1 mod_rev=3 version=2 lease=-`.
pub fn kv_meta(kv: &KeyValue) -> String {
    let lease = kv.lease.map_or("-".to_string(), |l| l.to_string());
    format!("create_rev={} mod_rev={} version={} lease={lease}", kv.create_revision, kv.mod_revision, kv.version)
}

/// A watch event: `PUT key=value rev=N` or `DELETE key rev=N`.
pub fn event_line(event: &Event) -> String {
    match event.kind {
        EventKind::Put => format!("PUT {} rev={}", kv_line(&event.kv), event.revision()),
        EventKind::Delete => format!("DELETE {} rev={}", text(&event.kv.key), event.revision()),
    }
}

/// A watch event as JSON.
pub fn event_json(event: &Event) -> Value {
    let kind = match event.kind {
        EventKind::Put => "put",
        EventKind::Delete => "delete",
    };
    let mut map = Map::new();
    map.insert("type".into(), json!(kind));
    map.insert("revision".into(), json!(event.revision()));
    map.insert("kv".into(), kv_json(&event.kv));
    Value::Object(map)
}

/// An endpoint id in the hex form iroh prints.
pub fn endpoint_hex(id: &[u8; 32]) -> String {
    data_encoding::HEXLOWER.encode(id)
}

/// Prints one JSON value on its own line and flushes, so streams are read line by line.
pub fn print_json(value: &Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value).map_err(std::io::Error::other)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Prints one line of text and flushes.
pub fn print_line(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Writes a value's raw bytes, adding a newline only for a person at a terminal.
pub fn print_raw(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    if std::io::stdout().is_terminal() {
        out.write_all(b"\n")?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aspen_core::LeaseId;

    fn kv(key: &[u8], value: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: 1,
            mod_revision: 2,
            version: 3,
            lease: Some(LeaseId(9)),
        }
    }

    #[test]
    fn utf8_values_are_json_strings() {
        let v = kv_json(&kv(b"a", b"x"));
        assert_eq!(
            v,
            json!({"key": "a", "value": "x", "create_revision": 1, "mod_revision": 2, "version": 3, "lease": 9})
        );
    }

    #[test]
    fn binary_values_are_base64_with_a_marker_field() {
        let v = kv_json(&kv(b"a", &[0xff, 0x00]));
        assert_eq!(v["value_base64"], json!("/wA="));
        assert!(v.get("value").is_none());
    }

    #[test]
    fn text_escapes_binary_bytes() {
        assert_eq!(text(b"plain"), "plain");
        assert_eq!(text(&[b'a', 0xff]), "a\\xff");
    }

    #[test]
    fn shell_words_are_quoted_when_needed() {
        assert_eq!(shell_word(b"app/x").as_deref(), Some("app/x"));
        assert_eq!(shell_word(b"a b").as_deref(), Some("'a b'"));
        assert_eq!(shell_word(b"it's").as_deref(), Some(r"'it'\''s'"));
        assert_eq!(shell_word(b"a\0"), None);
        assert_eq!(shell_word(&[0xff]), None);
    }

    #[test]
    fn events_print_as_documented() {
        let put = Event { kind: EventKind::Put, kv: kv(b"app/x", b"1") };
        assert_eq!(event_line(&put), "PUT app/x=1 rev=2");
        let del = Event { kind: EventKind::Delete, kv: kv(b"app/x", b"") };
        assert_eq!(event_line(&del), "DELETE app/x rev=2");
    }
}
