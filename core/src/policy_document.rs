//! Policy data documents (`spec/api.md §3.6`). Adopters ship data, never rules: a document is
//! either JSON or the upstream Rego data-document form — a `# caracal:data-document` marker, a
//! `package caracal.authz` header, `import` lines and `name := <JSON literal>` assignments of the
//! allowed names. Validation first reproduces upstream's checks in upstream's order (so the SDK
//! sees the same `error_description` codes), then parses every value as a literal; anything else
//! is rejected with its line and column, so the decision engine only ever sees data.

use std::collections::BTreeMap;

use serde_json::Value;

/// The contract schema version of documents and inputs.
pub const SCHEMA_VERSION: &str = "2026-05-20";
/// Largest accepted document, in characters.
pub const MAX_CONTENT_CHARS: usize = 262_144;
/// The only data names a document may define.
pub const ALLOWED_NAMES: [&str; 6] = [
    "app_ids",
    "grants",
    "confinement",
    "restrict",
    "risk",
    "approval_tiers",
];

/// Calls that would reach the network, the clock or the runtime if a document were evaluated.
const FORBIDDEN_BUILTINS: [&str; 9] = [
    "http.send",
    "net.lookup_ip_addr",
    "net.cidr_contains",
    "net.cidr_intersects",
    "net.cidr_expand",
    "net.cidr_merge",
    "opa.runtime",
    "rand.intn",
    "time.now_ns",
];

/// A validated data document: its package and its named values.
#[derive(Debug, Clone, PartialEq)]
pub struct DataDocument {
    /// Always `caracal.authz` for an accepted document.
    pub package: String,
    /// The defined data, by name.
    pub values: BTreeMap<String, Value>,
}

/// Why a document was rejected: the upstream code, plus where, when we know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentError {
    /// The `error_description` code (`missing_package_declaration`, …).
    pub code: String,
}

impl DocumentError {
    fn new(code: impl Into<String>) -> Self {
        Self { code: code.into() }
    }
}

/// Replaces comments and string literals with blanks, keeping line structure, so structural
/// checks never see their contents. Returns `None` for an unterminated string.
fn strip_comments_and_strings(src: &str) -> Option<String> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        if ch == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if ch == '"' || ch == '`' {
            out.push(' ');
            i += 1;
            let mut closed = false;
            while i < chars.len() {
                let c = chars[i];
                if ch == '"' && c == '\\' && i + 1 < chars.len() {
                    i += 2;
                    continue;
                }
                if c == ch {
                    closed = true;
                    i += 1;
                    break;
                }
                if ch == '"' && c == '\n' {
                    break;
                }
                i += 1;
            }
            if !closed {
                return None;
            }
            continue;
        }
        out.push(ch);
        i += 1;
    }
    Some(out)
}

fn balanced(src: &str) -> bool {
    let mut stack = Vec::new();
    for ch in src.chars() {
        match ch {
            '(' | '[' | '{' => stack.push(ch),
            ')' | ']' | '}' => {
                let want = match ch {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.pop() != Some(want) {
                    return false;
                }
            }
            _ => {}
        }
    }
    stack.is_empty()
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn valid_package_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            part.chars().next().is_some_and(is_ident_start) && part.chars().all(is_ident)
        })
}

/// Line-start rule names: an identifier (after an optional `default`) followed, possibly after
/// an argument list, by `:=`, `=`, `contains `, `{` or `if `.
fn rule_names(stripped: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in stripped.lines() {
        let mut rest = line.trim_start();
        if let Some(after) = rest.strip_prefix("default") {
            if after.starts_with(char::is_whitespace) {
                rest = after.trim_start();
            }
        }
        let ident_len = rest
            .char_indices()
            .take_while(|(i, c)| {
                if *i == 0 {
                    is_ident_start(*c)
                } else {
                    is_ident(*c)
                }
            })
            .count();
        if ident_len == 0 {
            continue;
        }
        let name = &rest[..ident_len];
        let mut tail = rest[ident_len..].trim_start();
        if tail.starts_with('(') {
            match tail.find(')') {
                Some(close) => tail = tail[close + 1..].trim_start(),
                None => continue,
            }
        }
        let is_rule = tail.starts_with(":=")
            || (tail.starts_with('=') && !tail.starts_with("=="))
            || tail.starts_with("contains ")
            || tail.starts_with('{')
            || tail.starts_with("if ");
        if is_rule && !matches!(name, "package" | "import" | "else" | "with") {
            names.push(name.to_owned());
        }
    }
    names
}

fn package_of(stripped: &str) -> Option<String> {
    stripped.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix("package")?;
        if !rest.starts_with(char::is_whitespace) {
            return None;
        }
        let name: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
            .collect();
        (!name.is_empty()).then_some(name)
    })
}

fn uses_forbidden_builtin(stripped: &str) -> Option<&'static str> {
    FORBIDDEN_BUILTINS.into_iter().find(|builtin| {
        stripped.match_indices(builtin).any(|(at, _)| {
            let before_ok = stripped[..at]
                .chars()
                .next_back()
                .is_none_or(|c| !(is_ident(c) || c == '.'));
            let after = stripped[at + builtin.len()..].trim_start();
            before_ok && after.starts_with('(')
        })
    })
}

fn has_marker(content: &str) -> bool {
    content.lines().any(|line| {
        line.trim_start()
            .strip_prefix('#')
            .is_some_and(|rest| rest.trim_start().starts_with("caracal:data-document"))
    })
}

/// Validates and parses a data document, in upstream's check order.
pub fn parse(content: &str) -> Result<DataDocument, DocumentError> {
    if content.trim().is_empty() {
        return Err(DocumentError::new("empty_policy"));
    }
    if content.chars().count() > MAX_CONTENT_CHARS {
        return Err(DocumentError::new("content_too_large"));
    }
    if content.trim_start().starts_with('{') {
        return parse_json(content);
    }
    let stripped = strip_comments_and_strings(content)
        .ok_or_else(|| DocumentError::new("unterminated_string"))?;
    if !balanced(&stripped) {
        return Err(DocumentError::new("unbalanced_delimiters"));
    }
    let package =
        package_of(&stripped).ok_or_else(|| DocumentError::new("missing_package_declaration"))?;
    if !valid_package_name(&package) {
        return Err(DocumentError::new("invalid_package_name"));
    }
    if let Some(builtin) = uses_forbidden_builtin(&stripped) {
        return Err(DocumentError::new(format!("forbidden_builtin:{builtin}")));
    }
    if package != "caracal.authz" {
        return Err(DocumentError::new("must_use_package_caracal_authz"));
    }
    if !has_marker(content) {
        return Err(DocumentError::new("must_be_data_document"));
    }
    let rules = rule_names(&stripped);
    if rules.iter().any(|r| r == "result") {
        return Err(DocumentError::new("data_document_must_not_define_result"));
    }
    if rules.is_empty() {
        return Err(DocumentError::new("data_document_must_define_data"));
    }
    if let Some(rule) = rules.iter().find(|r| !ALLOWED_NAMES.contains(&r.as_str())) {
        return Err(DocumentError::new(format!(
            "data_document_rule_not_allowed:{rule}"
        )));
    }
    let values = parse_assignments(content)?;
    Ok(DataDocument { package, values })
}

/// A document given as one JSON object of allowed names.
fn parse_json(content: &str) -> Result<DataDocument, DocumentError> {
    let value: Value = serde_json::from_str(content)
        .map_err(|e| DocumentError::new(format!("invalid_json:{}:{}", e.line(), e.column())))?;
    let Value::Object(map) = value else {
        return Err(DocumentError::new("data_document_must_define_data"));
    };
    if map.is_empty() {
        return Err(DocumentError::new("data_document_must_define_data"));
    }
    if let Some(name) = map.keys().find(|k| !ALLOWED_NAMES.contains(&k.as_str())) {
        return Err(DocumentError::new(format!(
            "data_document_rule_not_allowed:{name}"
        )));
    }
    Ok(DataDocument {
        package: "caracal.authz".into(),
        values: map.into_iter().collect(),
    })
}

/// Parses the statements of a Rego-form document: header lines, and `name := <literal>` where
/// the literal may span lines. Anything else is `not_a_data_statement:<line>:<col>`.
fn parse_assignments(content: &str) -> Result<BTreeMap<String, Value>, DocumentError> {
    let lines: Vec<&str> = content.lines().collect();
    let mut values = BTreeMap::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim();
        let col = line.len() - line.trim_start().len() + 1;
        if trimmed.is_empty()
            || trimmed.starts_with('#')
            || trimmed.starts_with("package ")
            || trimmed.starts_with("import ")
        {
            i += 1;
            continue;
        }
        let Some((name, literal_start)) = trimmed.split_once(":=") else {
            return Err(DocumentError::new(format!(
                "not_a_data_statement:{}:{col}",
                i + 1
            )));
        };
        let name = name.trim();
        if !ALLOWED_NAMES.contains(&name) {
            return Err(DocumentError::new(format!(
                "data_document_rule_not_allowed:{name}"
            )));
        }
        if values.contains_key(name) {
            return Err(DocumentError::new(format!(
                "duplicate_data_definition:{name}"
            )));
        }
        // Accumulate lines until the literal parses; a literal that never closes is an error at
        // the line where it started.
        let mut text = literal_start.trim().to_owned();
        let start_line = i;
        loop {
            match serde_json::from_str::<Value>(&text) {
                Ok(value) => {
                    values.insert(name.to_owned(), value);
                    break;
                }
                Err(err) if err.is_eof() && i + 1 < lines.len() => {
                    i += 1;
                    text.push('\n');
                    text.push_str(lines[i]);
                }
                Err(err) => {
                    let line_no = start_line + err.line();
                    return Err(DocumentError::new(format!(
                        "data_value_not_literal:{line_no}:{}",
                        err.column()
                    )));
                }
            }
        }
        i += 1;
    }
    if values.is_empty() {
        return Err(DocumentError::new("data_document_must_define_data"));
    }
    Ok(values)
}

/// The `preview` block of `/v1/policies/validate`.
pub fn preview(doc: &DataDocument) -> Value {
    let rules: Vec<&String> = doc.values.keys().collect();
    serde_json::json!({
        "package": doc.package,
        "rules": rules,
        "default_result": Value::Null,
        "decisions": [],
        "inputs_referenced": [],
        "data_referenced": rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDK_DOC: &str = "# caracal:data-document\npackage caracal.authz\nimport rego.v1\napp_ids := {\"a1\":\"a1\"}\ngrants := {\"resource://r\":{\"application\":\"a1\",\"roles\":{\"a1\":[\"read\"]}}}\n";

    fn code(content: &str) -> String {
        parse(content).err().map(|e| e.code).unwrap_or_default()
    }

    #[test]
    fn accepts_the_sdk_authored_document() {
        let doc = parse(SDK_DOC).expect("sdk document parses");
        assert_eq!(doc.values.len(), 2);
        assert_eq!(doc.values["app_ids"]["a1"], "a1");
    }

    #[test]
    fn upstream_codes_in_order() {
        assert_eq!(code("  "), "empty_policy");
        assert_eq!(
            code("package caracal.authz\nx := \"abc"),
            "unterminated_string"
        );
        assert_eq!(
            code("package caracal.authz\nx := {"),
            "unbalanced_delimiters"
        );
        assert_eq!(code("grants := {}"), "missing_package_declaration");
        assert_eq!(code("package 9abc\n"), "invalid_package_name");
        assert_eq!(
            code("package caracal.authz\nallow if http.send({})"),
            "forbidden_builtin:http.send"
        );
        assert_eq!(
            code("package other\ngrants := {}"),
            "must_use_package_caracal_authz"
        );
        assert_eq!(
            code("package caracal.authz\ngrants := {}"),
            "must_be_data_document"
        );
        assert_eq!(
            code("# caracal:data-document\npackage caracal.authz\nresult := {}"),
            "data_document_must_not_define_result"
        );
        assert_eq!(
            code("# caracal:data-document\npackage caracal.authz\n"),
            "data_document_must_define_data"
        );
        assert_eq!(
            code("# caracal:data-document\npackage caracal.authz\nallow := true"),
            "data_document_rule_not_allowed:allow"
        );
        assert_eq!(
            code(&"x".repeat(MAX_CONTENT_CHARS + 1)),
            "content_too_large"
        );
    }

    #[test]
    fn values_must_be_literals_with_a_position() {
        assert_eq!(
            code("# caracal:data-document\npackage caracal.authz\ngrants := input.x"),
            "data_value_not_literal:3:1"
        );
        assert_eq!(
            code("# caracal:data-document\npackage caracal.authz\ngrants if { true }"),
            "not_a_data_statement:3:1"
        );
    }

    #[test]
    fn multi_line_literals_and_json_form() {
        let doc =
            parse("# caracal:data-document\npackage caracal.authz\ngrants := {\n  \"r\": 1\n}\n")
                .expect("multi-line literal parses");
        assert_eq!(doc.values["grants"]["r"], 1);
        assert!(parse("{\"grants\": {}}").is_ok());
        assert_eq!(
            code("{\"allow\": true}"),
            "data_document_rule_not_allowed:allow"
        );
    }
}
