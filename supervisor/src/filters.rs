//! containerd's filter syntax (`pkg/filters`): a request's `filters` are
//! OR-ed; each is a comma-separated AND of selectors `fieldpath`,
//! `fieldpath==value`, `fieldpath!=value` or `fieldpath~=regexp`. Field path
//! components are separated by `.`; components and values may be quoted with
//! `"…"` (backslash escapes) or, for values, `/…/`.

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(regex::Regex),
}

#[derive(Debug, Clone)]
struct Selector {
    fieldpath: Vec<String>,
    op: Op,
}

/// A parsed filter set: matches when any of its filters matches.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    any_of: Vec<Vec<Selector>>,
}

/// Something filters can look into: the value of a field path, if present.
pub trait Adaptor {
    fn field(&self, path: &[String]) -> Option<String>;
}

impl<F: Fn(&[String]) -> Option<String>> Adaptor for F {
    fn field(&self, path: &[String]) -> Option<String> {
        self(path)
    }
}

impl Filter {
    /// Parses a request's filter list (empty → matches everything).
    pub fn parse_all(filters: &[String]) -> Result<Filter> {
        let mut any_of = Vec::new();
        for f in filters {
            if f.trim().is_empty() {
                continue;
            }
            any_of.push(parse_one(f)?);
        }
        Ok(Filter { any_of })
    }

    pub fn matches(&self, a: &dyn Adaptor) -> bool {
        self.any_of.is_empty()
            || self.any_of.iter().any(|sels| {
                sels.iter().all(|s| {
                    let v = a.field(&s.fieldpath);
                    match &s.op {
                        Op::Present => v.is_some(),
                        Op::Equal(x) => v.as_deref() == Some(x.as_str()),
                        Op::NotEqual(x) => v.as_deref().unwrap_or("") != x,
                        Op::Matches(re) => re.is_match(v.as_deref().unwrap_or("")),
                    }
                })
            })
    }
}

/// Looks up `labels.KEY` (KEY is the rest of the path joined with '.').
pub fn label_field(
    labels: &std::collections::HashMap<String, String>,
    rest: &[String],
) -> Option<String> {
    if rest.is_empty() {
        return None;
    }
    labels.get(&rest.join(".")).cloned()
}

struct Scanner<'a> {
    s: &'a [u8],
    i: usize,
    text: &'a str,
}

impl<'a> Scanner<'a> {
    fn err(&self, what: &str) -> Error {
        Error::InvalidArgument(format!(
            "filter {:?}: {what} at position {}",
            self.text, self.i
        ))
    }
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn quoted(&mut self, close: u8) -> Result<String> {
        self.i += 1;
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            if c == b'\\' && close == b'"' {
                let Some(n) = self.peek() else { break };
                self.i += 1;
                out.push(match n {
                    b'n' => b'\n',
                    b't' => b'\t',
                    other => other,
                });
            } else if c == close {
                return String::from_utf8(out).map_err(|_| self.err("invalid UTF-8"));
            } else {
                out.push(c);
            }
        }
        Err(self.err("unterminated quoted string"))
    }
    fn field(&mut self) -> Result<String> {
        self.skip_ws();
        match self.peek() {
            Some(b'"') => self.quoted(b'"'),
            _ => {
                let start = self.i;
                while let Some(c) = self.peek() {
                    if c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'/' {
                        self.i += 1;
                    } else {
                        break;
                    }
                }
                if start == self.i {
                    return Err(self.err("expected a field name"));
                }
                Ok(self.text[start..self.i].to_string())
            }
        }
    }
    fn value(&mut self) -> Result<String> {
        self.skip_ws();
        match self.peek() {
            Some(b'"') => self.quoted(b'"'),
            _ => {
                let start = self.i;
                while let Some(c) = self.peek() {
                    if c == b',' {
                        break;
                    }
                    self.i += 1;
                }
                let v = self.text[start..self.i].trim();
                if v.is_empty() {
                    return Err(self.err("expected a value"));
                }
                Ok(v.to_string())
            }
        }
    }
}

fn parse_one(text: &str) -> Result<Vec<Selector>> {
    let mut sc = ScannerWithMode {
        inner: Scanner {
            s: text.as_bytes(),
            i: 0,
            text,
        },
    };
    let mut sels = Vec::new();
    loop {
        let mut fieldpath = vec![sc.inner.field()?];
        while sc.inner.peek() == Some(b'.') {
            sc.inner.i += 1;
            fieldpath.push(sc.inner.field()?);
        }
        sc.inner.skip_ws();
        let rest = &text[sc.inner.i..];
        let op = if rest.starts_with("==") {
            sc.inner.i += 2;
            Op::Equal(sc.value(false)?)
        } else if rest.starts_with("!=") {
            sc.inner.i += 2;
            Op::NotEqual(sc.value(false)?)
        } else if rest.starts_with("~=") {
            sc.inner.i += 2;
            let v = sc.value(true)?;
            Op::Matches(regex::Regex::new(&v).map_err(|e| {
                Error::InvalidArgument(format!("filter {text:?}: bad regexp {v:?}: {e}"))
            })?)
        } else {
            Op::Present
        };
        sels.push(Selector { fieldpath, op });
        sc.inner.skip_ws();
        match sc.inner.peek() {
            None => break,
            Some(b',') => sc.inner.i += 1,
            Some(_) => return Err(sc.inner.err("expected ',' or an operator")),
        }
    }
    Ok(sels)
}

struct ScannerWithMode<'a> {
    inner: Scanner<'a>,
}

impl ScannerWithMode<'_> {
    fn value(&mut self, regex: bool) -> Result<String> {
        self.inner.skip_ws();
        if regex && self.inner.peek() == Some(b'/') {
            return self.inner.quoted(b'/');
        }
        self.inner.value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic_adaptor(
        topic: &'static str,
        ns: &'static str,
    ) -> impl Fn(&[String]) -> Option<String> {
        move |p: &[String]| match p.first().map(String::as_str) {
            Some("topic") => Some(topic.to_string()),
            Some("namespace") => Some(ns.to_string()),
            _ => None,
        }
    }

    #[test]
    fn containerd_filter_syntax() {
        let f = Filter::parse_all(&[r#"topic=="/tasks/exit""#.to_string()]).unwrap();
        assert!(f.matches(&topic_adaptor("/tasks/exit", "x")));
        assert!(!f.matches(&topic_adaptor("/tasks/start", "x")));
        let f = Filter::parse_all(&[
            r#"topic~="/tasks/.*",namespace==a"#.to_string(),
            "namespace==b".to_string(),
        ])
        .unwrap();
        assert!(f.matches(&topic_adaptor("/tasks/exit", "a")));
        assert!(!f.matches(&topic_adaptor("/images/create", "a")));
        assert!(f.matches(&topic_adaptor("/images/create", "b")));
        let f = Filter::parse_all(&["labels.\"a.b\"".to_string()]).unwrap();
        assert!(!f.matches(&topic_adaptor("/x", "a")));
        assert!(Filter::parse_all(&["topic==".to_string()]).is_err());
        assert!(Filter::parse_all(&[])
            .unwrap()
            .matches(&topic_adaptor("/x", "a")));
    }
}
