//! A small subset of Go's text/template, enough for docker's `--format`:
//!
//! - text is copied; `{{ ACTION }}` is replaced by its value, `{{-`/`-}}`
//!   trim the whitespace next to them;
//! - an action is a pipeline `CMD [| CMD]…`; a command is a value (`.`, a
//!   field path `.A.B.C`, a "string" or `raw` literal, an integer) or a
//!   function with arguments: `json X`, `upper X`, `lower X`, `title X`,
//!   `len X`, `index X KEY…`, `join X SEP`; a piped value is the last argument;
//! - values print as Go's `%v` does for decoded JSON: strings as is,
//!   `[a b]` for lists, `map[k:v]` for objects, `<no value>` for a missing
//!   field.
//!
//! `{{if}}`, `{{range}}`, variables and comparison functions are not
//! supported and are reported as template errors.
//!
//! [`OutputFormat`] adds docker's conventions on top: a `table ` prefix
//! (a header row, columns aligned), literal `\t`/`\n` in the flag, and
//! `json` meaning `{{json .}}`.

use serde_json::Value;

use crate::error::{CliError, Result};
use crate::table::align_columns;

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Action(Vec<Command>),
}

#[derive(Debug, Clone)]
enum Command {
    Value(Arg),
    Call(String, Vec<Arg>),
}

#[derive(Debug, Clone)]
enum Arg {
    Field(Vec<String>),
    Str(String),
    Int(i64),
}

const FUNCTIONS: &[&str] = &["json", "upper", "lower", "title", "len", "index", "join"];

impl Template {
    /// Parses `src`.
    pub fn parse(src: &str) -> Result<Template> {
        let mut nodes = Vec::new();
        let mut rest = src;
        let mut trim_next_text = false;
        while let Some(open) = rest.find("{{") {
            let mut text = rest[..open].to_string();
            if trim_next_text {
                text = text.trim_start().to_string();
            }
            let after = &rest[open + 2..];
            let (after, trim_before) = match after.strip_prefix('-') {
                Some(a) if a.starts_with(char::is_whitespace) => (a, true),
                _ => (after, false),
            };
            if trim_before {
                text = text.trim_end().to_string();
            }
            if !text.is_empty() {
                nodes.push(Node::Text(text));
            }
            let close = find_close(after)
                .ok_or_else(|| CliError::Template(format!("unclosed action in {src:?}")))?;
            let mut body = &after[..close];
            trim_next_text = false;
            if let Some(b) = body.strip_suffix('-') {
                if b.ends_with(char::is_whitespace) {
                    body = b;
                    trim_next_text = true;
                }
            }
            nodes.push(Node::Action(parse_pipeline(body.trim())?));
            rest = &after[close + 2..];
        }
        let mut text = rest.to_string();
        if trim_next_text {
            text = text.trim_start().to_string();
        }
        if !text.is_empty() {
            nodes.push(Node::Text(text));
        }
        Ok(Template { nodes })
    }

    /// Renders the template with `data` as `.`.
    pub fn render(&self, data: &Value) -> Result<String> {
        let mut out = String::new();
        for n in &self.nodes {
            match n {
                Node::Text(t) => out.push_str(t),
                Node::Action(p) => {
                    let v = eval_pipeline(p, data)?;
                    out.push_str(&go_print(v.as_ref()));
                }
            }
        }
        Ok(out)
    }
}

/// Finds the `}}` closing an action, skipping quoted strings.
fn find_close(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < b.len() {
        match quote {
            Some(q) => {
                if b[i] == b'\\' && q == b'"' {
                    i += 1;
                } else if b[i] == q {
                    quote = None;
                }
            }
            None => {
                if b[i] == b'"' || b[i] == b'`' {
                    quote = Some(b[i]);
                } else if b[i] == b'}' && b.get(i + 1) == Some(&b'}') {
                    return Some(i);
                }
            }
        }
        i += 1;
    }
    None
}

fn tokenize(s: &str) -> Result<Vec<String>> {
    let mut toks = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '|' {
            toks.push("|".into());
            i += 1;
        } else if c == '"' || c == '`' {
            let mut t = String::from(c);
            i += 1;
            loop {
                let Some(&d) = chars.get(i) else {
                    return Err(CliError::Template(format!("unterminated string in {s:?}")));
                };
                i += 1;
                if d == '\\' && c == '"' {
                    match chars.get(i) {
                        Some('n') => t.push('\n'),
                        Some('t') => t.push('\t'),
                        Some(&e) => t.push(e),
                        None => {}
                    }
                    i += 1;
                    continue;
                }
                if d == c {
                    break;
                }
                t.push(d);
            }
            toks.push(t);
        } else {
            let start = i;
            while i < chars.len() && !chars[i].is_whitespace() && chars[i] != '|' {
                i += 1;
            }
            toks.push(chars[start..i].iter().collect());
        }
    }
    Ok(toks)
}

fn parse_arg(tok: &str) -> Result<Arg> {
    if let Some(s) = tok.strip_prefix('"').or_else(|| tok.strip_prefix('`')) {
        return Ok(Arg::Str(s.to_string()));
    }
    if tok == "." {
        return Ok(Arg::Field(Vec::new()));
    }
    if let Some(path) = tok.strip_prefix('.') {
        let parts: Vec<String> = path.split('.').map(String::from).collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(CliError::Template(format!("bad field path {tok:?}")));
        }
        return Ok(Arg::Field(parts));
    }
    if let Ok(n) = tok.parse::<i64>() {
        return Ok(Arg::Int(n));
    }
    Err(CliError::Template(format!(
        "function {tok:?} not defined (supported: {})",
        FUNCTIONS.join(", ")
    )))
}

fn parse_pipeline(body: &str) -> Result<Vec<Command>> {
    let toks = tokenize(body)?;
    if toks.is_empty() {
        return Err(CliError::Template("missing value for command".into()));
    }
    let mut cmds = Vec::new();
    for part in toks.split(|t| t == "|") {
        let Some((head, args)) = part.split_first() else {
            return Err(CliError::Template(format!("missing command in {body:?}")));
        };
        if FUNCTIONS.contains(&head.as_str()) {
            let args = args.iter().map(|a| parse_arg(a)).collect::<Result<_>>()?;
            cmds.push(Command::Call(head.clone(), args));
        } else {
            if !args.is_empty() {
                return Err(CliError::Template(format!(
                    "can't give argument to non-function {head}"
                )));
            }
            if matches!(
                head.as_str(),
                "if" | "range" | "with" | "end" | "else" | "define"
            ) {
                return Err(CliError::Template(format!(
                    "{{{{{head}}}}} is not supported by orca's template subset"
                )));
            }
            cmds.push(Command::Value(parse_arg(head)?));
        }
    }
    Ok(cmds)
}

/// `None` is Go's "no value" (a missing map key).
fn eval_arg(a: &Arg, data: &Value) -> Result<Option<Value>> {
    match a {
        Arg::Str(s) => Ok(Some(Value::String(s.clone()))),
        Arg::Int(n) => Ok(Some(Value::from(*n))),
        Arg::Field(path) => {
            let mut cur = data;
            for (i, name) in path.iter().enumerate() {
                match cur {
                    Value::Object(m) => match m.get(name) {
                        Some(v) => cur = v,
                        None => return Ok(None),
                    },
                    Value::Null => return Ok(None),
                    other => {
                        return Err(CliError::Template(format!(
                            "can't evaluate field {name} in type {} (at .{})",
                            go_type(other),
                            path[..=i].join(".")
                        )))
                    }
                }
            }
            Ok(Some(cur.clone()))
        }
    }
}

fn go_type(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Number(_) => "float64",
        Value::Bool(_) => "bool",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
        Value::Null => "<nil>",
    }
}

fn eval_pipeline(cmds: &[Command], data: &Value) -> Result<Option<Value>> {
    let mut piped: Option<Option<Value>> = None;
    for c in cmds {
        let v = match c {
            Command::Value(a) => {
                if piped.is_some() {
                    return Err(CliError::Template("can't pipe into a non-function".into()));
                }
                eval_arg(a, data)?
            }
            Command::Call(f, args) => {
                let mut vals = args
                    .iter()
                    .map(|a| eval_arg(a, data))
                    .collect::<Result<Vec<_>>>()?;
                if let Some(p) = piped.take() {
                    vals.push(p);
                }
                Some(call(f, vals)?)
            }
        };
        piped = Some(v);
    }
    Ok(piped.flatten())
}

fn call(f: &str, args: Vec<Option<Value>>) -> Result<Value> {
    let want = |n: usize| -> Result<()> {
        if args.len() == n {
            Ok(())
        } else {
            Err(CliError::Template(format!(
                "wrong number of args for {f}: want {n} got {}",
                args.len()
            )))
        }
    };
    let text = |v: &Option<Value>| go_print(v.as_ref());
    match f {
        "json" => {
            want(1)?;
            Ok(Value::String(match &args[0] {
                Some(v) => serde_json::to_string(v)?,
                None => "null".into(),
            }))
        }
        "upper" => {
            want(1)?;
            Ok(Value::String(text(&args[0]).to_uppercase()))
        }
        "lower" => {
            want(1)?;
            Ok(Value::String(text(&args[0]).to_lowercase()))
        }
        "title" => {
            want(1)?;
            let t = text(&args[0]);
            let mut c = t.chars();
            Ok(Value::String(match c.next() {
                Some(first) => first.to_uppercase().chain(c).collect(),
                None => String::new(),
            }))
        }
        "len" => {
            want(1)?;
            let n = match &args[0] {
                Some(Value::Array(a)) => a.len(),
                Some(Value::Object(m)) => m.len(),
                Some(Value::String(s)) => s.len(),
                Some(Value::Null) | None => 0,
                Some(v) => return Err(CliError::Template(format!("len of type {}", go_type(v)))),
            };
            Ok(Value::from(n))
        }
        "join" => {
            want(2)?;
            let sep = text(&args[1]);
            match &args[0] {
                Some(Value::Array(a)) => Ok(Value::String(
                    a.iter()
                        .map(|v| go_print(Some(v)))
                        .collect::<Vec<_>>()
                        .join(&sep),
                )),
                v => Ok(Value::String(text(v))),
            }
        }
        "index" => {
            if args.len() < 2 {
                return Err(CliError::Template("index needs a value and a key".into()));
            }
            let mut it = args.into_iter();
            let mut cur = it.next().flatten().unwrap_or(Value::Null);
            for key in it {
                cur = match (&cur, key) {
                    (Value::Object(m), Some(Value::String(k))) => {
                        m.get(&k).cloned().unwrap_or(Value::Null)
                    }
                    (Value::Array(a), Some(Value::Number(n))) => n
                        .as_u64()
                        .and_then(|i| a.get(i as usize).cloned())
                        .ok_or_else(|| CliError::Template(format!("index {n} out of range")))?,
                    (v, _) => {
                        return Err(CliError::Template(format!(
                            "can't index item of type {}",
                            go_type(v)
                        )))
                    }
                };
            }
            Ok(cur)
        }
        _ => Err(CliError::Template(format!("function {f:?} not defined"))),
    }
}

/// Go's `%v` of a decoded JSON value; `None` is `<no value>`.
pub fn go_print(v: Option<&Value>) -> String {
    match v {
        None => "<no value>".into(),
        Some(Value::Null) => "<nil>".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Array(a)) => format!(
            "[{}]",
            a.iter()
                .map(|v| go_print(Some(v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Some(Value::Object(m)) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            format!(
                "map[{}]",
                keys.iter()
                    .map(|k| format!("{k}:{}", go_print(m.get(*k))))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        }
    }
}

/// A docker `--format` value: a template, maybe a table.
#[derive(Debug, Clone)]
pub struct OutputFormat {
    /// `table …`: print a header and align columns.
    pub table: bool,
    /// The template text, with docker's `\t`/`\n` escapes applied.
    pub template: String,
}

impl OutputFormat {
    /// Parses a `--format` value; `default_table` is used for "" and "table".
    pub fn parse(flag: Option<&str>, default_table: &str) -> OutputFormat {
        let raw = flag.unwrap_or("").trim();
        let raw = match raw {
            "" | "table" => default_table,
            "json" => "{{json .}}",
            other => other,
        };
        let (table, body) = match raw.strip_prefix("table") {
            Some(rest) if rest.is_empty() || rest.starts_with(char::is_whitespace) => (true, rest),
            _ => (false, raw),
        };
        let template = body
            .trim_matches(' ')
            .replace("\\t", "\t")
            .replace("\\n", "\n");
        OutputFormat { table, template }
    }

    /// Renders `rows` (a header from `headers` first when a table); each
    /// row ends with a newline.
    pub fn render(&self, headers: &Value, rows: &[Value]) -> Result<String> {
        let t = Template::parse(&self.template)?;
        let mut out = String::new();
        if self.table {
            out.push_str(&t.render(headers)?);
            out.push('\n');
        }
        for r in rows {
            out.push_str(&t.render(r)?);
            out.push('\n');
        }
        Ok(if self.table { align_columns(&out) } else { out })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(t: &str, v: &Value) -> String {
        Template::parse(t).unwrap().render(v).unwrap()
    }

    #[test]
    fn fields_nested_and_json() {
        let v = json!({"ID": "abc", "State": {"Status": "running", "Pid": 42, "Running": true},
                       "Args": ["a", "b"], "Labels": {"z": "1", "a": "2"}, "Nil": null});
        assert_eq!(render("{{.ID}}", &v), "abc");
        assert_eq!(
            render("id={{ .ID }} st={{.State.Status}}", &v),
            "id=abc st=running"
        );
        assert_eq!(render("{{.State.Pid}} {{.State.Running}}", &v), "42 true");
        assert_eq!(render("{{json .Args}}", &v), r#"["a","b"]"#);
        assert_eq!(
            render("{{json .State}}", &v),
            r#"{"Pid":42,"Running":true,"Status":"running"}"#
        );
        assert_eq!(render("{{.Args}}", &v), "[a b]");
        assert_eq!(render("{{.Labels}}", &v), "map[a:2 z:1]");
        assert_eq!(render("{{.Missing}}", &v), "<no value>");
        assert_eq!(render("{{.Nil.X}}", &v), "<no value>");
        assert_eq!(render("{{.State.Status | upper}}", &v), "RUNNING");
        assert_eq!(render("{{index .Labels \"z\"}}", &v), "1");
        assert_eq!(render("{{join .Args \",\"}}", &v), "a,b");
        assert_eq!(render("{{len .Args}}", &v), "2");
        assert_eq!(render("a  {{- .ID -}}  b", &v), "aabcb");
        assert_eq!(render("{{json .}}", &json!({"a": "<b>"})), r#"{"a":"<b>"}"#);
    }

    #[test]
    fn errors_are_reported() {
        assert!(Template::parse("{{.ID").is_err());
        assert!(Template::parse("{{range .X}}").is_err());
        assert!(Template::parse("{{nope .X}}").is_err());
        let t = Template::parse("{{.ID.Deeper}}").unwrap();
        let e = t.render(&json!({"ID": "x"})).unwrap_err();
        assert!(e.to_string().contains("can't evaluate field Deeper"), "{e}");
    }

    #[test]
    fn table_format_has_header_and_aligned_columns() {
        let f = OutputFormat::parse(Some("table {{.ID}}\\t{{.Names}}"), "");
        assert!(f.table);
        let out = f
            .render(
                &json!({"ID": "CONTAINER ID", "Names": "NAMES"}),
                &[json!({"ID": "0123456789ab", "Names": "web"})],
            )
            .unwrap();
        assert_eq!(out, "CONTAINER ID   NAMES\n0123456789ab   web\n");
        let f = OutputFormat::parse(Some("{{.Names}}"), "");
        assert!(!f.table);
        let out = f
            .render(&json!({}), &[json!({"Names": "a"}), json!({"Names": "b"})])
            .unwrap();
        assert_eq!(out, "a\nb\n");
        let f = OutputFormat::parse(Some("json"), "");
        assert_eq!(f.template, "{{json .}}");
        let f = OutputFormat::parse(None, "table {{.ID}}");
        assert!(f.table);
    }
}
