//! The small language of `aspen kv txn`: compares for `--if`, operations for `--then` and
//! `--else`.
//!
//! ```text
//! compare := FIELD "(" KEY ")" OP TARGET
//! FIELD   := value | version | create_rev | mod_rev | lease
//! OP      := == | != | < | >
//! TARGET  := a string for value (quoted or bare), an unsigned number otherwise
//! op      := put KEY VALUE | del KEY | get KEY
//! ```
//!
//! Keys and values may be quoted with `'` or `"`; inside quotes a backslash escapes the
//! next character.

use aspen_core::command::{Compare, CompareOp, CompareTarget, TxnOp};

/// Why a compare or an operation did not parse; names the offending token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse {what} `{input}`: {problem}")]
pub struct TxnParseError {
    what: &'static str,
    input: String,
    problem: String,
}

impl TxnParseError {
    fn new(what: &'static str, input: &str, problem: impl Into<String>) -> Self {
        TxnParseError { what, input: input.to_string(), problem: problem.into() }
    }
}

const FIELDS: &str = "value, version, create_rev, mod_rev or lease";

/// Parses one `--if` compare, e.g. `mod_rev(app/x) == 7` or `value("a b") != 'x'`.
pub fn parse_compare(input: &str) -> Result<Compare, TxnParseError> {
    let err = |problem: String| TxnParseError::new("compare", input, problem);
    let mut s = Scanner::new(input);
    s.skip_ws();
    let field = s.take_while(|c| c.is_ascii_alphanumeric() || c == '_');
    if field.is_empty() {
        return Err(err(format!("expected {FIELDS} at `{}`", s.rest_token())));
    }
    if !matches!(field.as_str(), "value" | "version" | "create_rev" | "mod_rev" | "lease") {
        return Err(err(format!("unknown field `{field}`; use {FIELDS}")));
    }
    s.skip_ws();
    if !s.eat('(') {
        return Err(err(format!("expected `(` after `{field}` at `{}`", s.rest_token())));
    }
    s.skip_ws();
    let key = if s.peek_quote().is_some() {
        s.quoted().map_err(&err)?
    } else {
        s.take_while(|c| c != ')').trim_end().to_string()
    };
    if key.is_empty() {
        return Err(err("the key is empty".into()));
    }
    s.skip_ws();
    if !s.eat(')') {
        return Err(err(format!("expected `)` after the key at `{}`", s.rest_token())));
    }
    s.skip_ws();
    let op_text = s.take_while(|c| matches!(c, '=' | '!' | '<' | '>'));
    let op = match op_text.as_str() {
        "==" => CompareOp::Equal,
        "!=" => CompareOp::NotEqual,
        "<" => CompareOp::Less,
        ">" => CompareOp::Greater,
        "" => return Err(err(format!("expected ==, !=, < or > at `{}`", s.rest_token()))),
        other => return Err(err(format!("unknown operator `{other}`; use ==, !=, < or >"))),
    };
    s.skip_ws();
    let target_text = if s.peek_quote().is_some() {
        s.quoted().map_err(&err)?
    } else {
        let t = s.take_while(|c| !c.is_whitespace());
        if t.is_empty() {
            return Err(err(format!("expected a value after `{op_text}`")));
        }
        t
    };
    s.skip_ws();
    if !s.at_end() {
        return Err(err(format!("unexpected `{}` after the value", s.rest_token())));
    }
    let number = |what: &str| {
        target_text
            .parse::<u64>()
            .map_err(|_| err(format!("`{target_text}` is not a number; {what} compares take an unsigned integer")))
    };
    let target = match field.as_str() {
        "value" => CompareTarget::Value(target_text.clone().into_bytes()),
        "version" => CompareTarget::Version(number("version")?),
        "create_rev" => CompareTarget::CreateRevision(number("create_rev")?),
        "mod_rev" => CompareTarget::ModRevision(number("mod_rev")?),
        _ => CompareTarget::Lease(number("lease")?),
    };
    Ok(Compare { key: key.into_bytes(), op, target })
}

/// Parses one `--then`/`--else` operation, e.g. `put app/x 1`, `del app/x`, `get 'a b'`.
pub fn parse_op(input: &str) -> Result<TxnOp, TxnParseError> {
    let err = |problem: String| TxnParseError::new("operation", input, problem);
    let words = split_words(input).map_err(&err)?;
    let Some((verb, args)) = words.split_first() else {
        return Err(err("it is empty; use put KEY VALUE, del KEY or get KEY".into()));
    };
    let arity = |n: usize, usage: &str| {
        if args.len() == n {
            Ok(())
        } else if args.len() > n {
            Err(err(format!("unexpected `{}`; usage: {usage}", args[n])))
        } else {
            Err(err(format!("missing arguments; usage: {usage}")))
        }
    };
    let key = |i: usize| -> Result<Vec<u8>, TxnParseError> {
        let k: &String = &args[i];
        if k.is_empty() { Err(err("the key is empty".into())) } else { Ok(k.clone().into_bytes()) }
    };
    match verb.as_str() {
        "put" => {
            arity(2, "put KEY VALUE")?;
            Ok(TxnOp::Put { key: key(0)?, value: args[1].clone().into_bytes(), lease: None })
        }
        "del" | "delete" => {
            arity(1, "del KEY")?;
            Ok(TxnOp::Delete { key: key(0)? })
        }
        "get" => {
            arity(1, "get KEY")?;
            Ok(TxnOp::Get { key: key(0)? })
        }
        other => Err(err(format!("unknown operation `{other}`; use put, del or get"))),
    }
}

/// Splits on whitespace, honouring quotes.
fn split_words(input: &str) -> Result<Vec<String>, String> {
    let mut s = Scanner::new(input);
    let mut words = Vec::new();
    loop {
        s.skip_ws();
        if s.at_end() {
            return Ok(words);
        }
        if s.peek_quote().is_some() {
            words.push(s.quoted()?);
            if !s.at_end() && !s.peek_ws() {
                return Err(format!("expected a space after the closing quote at `{}`", s.rest_token()));
            }
        } else {
            words.push(s.take_while(|c| !c.is_whitespace()));
        }
    }
}

/// A cursor over the characters of one argument.
struct Scanner<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    rest: &'a str,
}

impl<'a> Scanner<'a> {
    fn new(input: &'a str) -> Self {
        Scanner { chars: input.chars().peekable(), rest: input }
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        self.rest = &self.rest[c.len_utf8()..];
        Some(c)
    }

    fn at_end(&mut self) -> bool {
        self.chars.peek().is_none()
    }

    fn peek_ws(&mut self) -> bool {
        self.chars.peek().is_some_and(|c| c.is_whitespace())
    }

    fn peek_quote(&mut self) -> Option<char> {
        self.chars.peek().copied().filter(|c| *c == '\'' || *c == '"')
    }

    fn skip_ws(&mut self) {
        while self.peek_ws() {
            self.bump();
        }
    }

    fn eat(&mut self, want: char) -> bool {
        if self.chars.peek() == Some(&want) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> String {
        let mut out = String::new();
        while let Some(&c) = self.chars.peek() {
            if !keep(c) {
                break;
            }
            out.push(c);
            self.bump();
        }
        out
    }

    /// The text up to the next whitespace, for error messages.
    fn rest_token(&self) -> String {
        let token: String = self.rest.split_whitespace().next().unwrap_or("").chars().take(40).collect();
        if token.is_empty() { "end of input".into() } else { token }
    }

    /// A quoted string starting at the current quote character.
    fn quoted(&mut self) -> Result<String, String> {
        let Some(quote) = self.bump() else {
            return Err("expected a quote".into());
        };
        let mut out = String::new();
        loop {
            match self.bump() {
                None => return Err(format!("unterminated {quote}quoted{quote} string")),
                Some('\\') => match self.bump() {
                    Some(c) => out.push(c),
                    None => return Err("a backslash ends the input".into()),
                },
                Some(c) if c == quote => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(key: &str, op: CompareOp, target: CompareTarget) -> Compare {
        Compare { key: key.as_bytes().to_vec(), op, target }
    }

    #[test]
    fn numeric_compares_parse() {
        assert_eq!(
            parse_compare("mod_rev(app/x) == 7").unwrap(),
            cmp("app/x", CompareOp::Equal, CompareTarget::ModRevision(7))
        );
        assert_eq!(parse_compare("version(k)>0").unwrap(), cmp("k", CompareOp::Greater, CompareTarget::Version(0)));
        assert_eq!(
            parse_compare("create_rev(k) < 3").unwrap(),
            cmp("k", CompareOp::Less, CompareTarget::CreateRevision(3))
        );
        assert_eq!(parse_compare("lease(k) != 12").unwrap(), cmp("k", CompareOp::NotEqual, CompareTarget::Lease(12)));
    }

    #[test]
    fn value_compares_take_quoted_or_bare_strings() {
        let want = cmp("app/x", CompareOp::Equal, CompareTarget::Value(b"hello world".to_vec()));
        assert_eq!(parse_compare(r#"value(app/x) == "hello world""#).unwrap(), want);
        assert_eq!(parse_compare("value(app/x) == 'hello world'").unwrap(), want);
        assert_eq!(
            parse_compare("value(k) != bare").unwrap(),
            cmp("k", CompareOp::NotEqual, CompareTarget::Value(b"bare".to_vec()))
        );
        assert_eq!(
            parse_compare(r"value(k) == 'it\'s'").unwrap(),
            cmp("k", CompareOp::Equal, CompareTarget::Value(b"it's".to_vec()))
        );
    }

    #[test]
    fn quoted_keys_may_hold_parentheses_and_spaces() {
        assert_eq!(
            parse_compare("version('a (b)') == 1").unwrap(),
            cmp("a (b)", CompareOp::Equal, CompareTarget::Version(1))
        );
    }

    #[test]
    fn bad_compares_name_the_bad_token() {
        let e = |s: &str| parse_compare(s).unwrap_err().to_string();
        assert!(e("size(k) == 1").contains("unknown field `size`"));
        assert!(e("version(k) = 1").contains("unknown operator `=`"));
        assert!(e("version(k) == x").contains("`x` is not a number"));
        assert!(e("version k == 1").contains("expected `(`"));
        assert!(e("version(k == 1").contains("expected `)`"));
        assert!(e("version(k) == 1 extra").contains("unexpected `extra`"));
        assert!(e("value(k) == 'open").contains("unterminated"));
        assert!(e("version() == 1").contains("key is empty"));
        assert!(e("version(k)").contains("expected ==, !=, < or > at `end of input`"));
    }

    #[test]
    fn ops_parse() {
        assert_eq!(
            parse_op("put app/x 1").unwrap(),
            TxnOp::Put { key: b"app/x".to_vec(), value: b"1".to_vec(), lease: None }
        );
        assert_eq!(parse_op("del app/x").unwrap(), TxnOp::Delete { key: b"app/x".to_vec() });
        assert_eq!(parse_op("get 'a b'").unwrap(), TxnOp::Get { key: b"a b".to_vec() });
        assert_eq!(
            parse_op(r#"put k "two words""#).unwrap(),
            TxnOp::Put { key: b"k".to_vec(), value: b"two words".to_vec(), lease: None }
        );
        assert_eq!(parse_op("put k ''").unwrap(), TxnOp::Put { key: b"k".to_vec(), value: vec![], lease: None });
    }

    #[test]
    fn bad_ops_name_the_bad_token() {
        let e = |s: &str| parse_op(s).unwrap_err().to_string();
        assert!(e("set k v").contains("unknown operation `set`"));
        assert!(e("put k").contains("missing arguments"));
        assert!(e("get k extra").contains("unexpected `extra`"));
        assert!(e("").contains("empty"));
        assert!(e("put 'k v").contains("unterminated"));
        assert!(e("get ''").contains("key is empty"));
    }
}
