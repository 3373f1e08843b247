//! JSON paths: patterns from the config (`$.items[*].price`) and the
//! concrete paths met while walking two documents. Hand-written because only
//! this small subset is needed (names, indexes, wildcards) and matching must
//! be cheap enough to run at every node of a million documents.

use std::fmt::Write;

/// One step of a concrete path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// One step of a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PatStep {
    Key(String),
    AnyKey,
    Index(usize),
    AnyIndex,
}

/// A parsed pattern such as `$.a["b c"][*].d`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern(Vec<PatStep>);

impl PathPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix('$')
            .ok_or_else(|| "a path starts with $".to_string())?;
        let chars: Vec<char> = rest.chars().collect();
        let mut steps = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '.' => {
                    let start = i + 1;
                    let mut j = start;
                    while j < chars.len() && chars[j] != '.' && chars[j] != '[' {
                        j += 1;
                    }
                    let name: String = chars[start..j].iter().collect();
                    steps.push(match name.as_str() {
                        "" => return Err(format!("empty name at character {}", i + 2)),
                        "*" => PatStep::AnyKey,
                        _ => PatStep::Key(name),
                    });
                    i = j;
                }
                '[' => {
                    let close = chars[i..]
                        .iter()
                        .position(|&c| c == ']')
                        .map(|p| p + i)
                        .ok_or_else(|| format!("unclosed [ at character {}", i + 2))?;
                    let inner: String = chars[i + 1..close].iter().collect();
                    let inner = inner.trim();
                    steps.push(if inner == "*" {
                        PatStep::AnyIndex
                    } else if let Ok(n) = inner.parse::<usize>() {
                        PatStep::Index(n)
                    } else if inner.len() >= 2
                        && (inner.starts_with('"') && inner.ends_with('"')
                            || inner.starts_with('\'') && inner.ends_with('\''))
                    {
                        PatStep::Key(inner[1..inner.len() - 1].to_string())
                    } else {
                        return Err(format!("cannot read [{inner}]"));
                    });
                    i = close + 1;
                }
                c => return Err(format!("unexpected {c:?} at character {}", i + 2)),
            }
        }
        Ok(Self(steps))
    }

    /// Whether the concrete path `path` is exactly what this pattern names.
    pub fn matches(&self, path: &[Step]) -> bool {
        self.0.len() == path.len()
            && self.0.iter().zip(path).all(|(p, s)| match (p, s) {
                (PatStep::Key(a), Step::Key(b)) => a == b,
                (PatStep::AnyKey, Step::Key(_)) => true,
                (PatStep::Index(a), Step::Index(b)) => a == b,
                (PatStep::AnyIndex, Step::Index(_)) => true,
                _ => false,
            })
    }

    /// Whether the pattern may match a descendant of `path` (or `path`).
    pub fn may_match_below(&self, path: &[Step]) -> bool {
        self.0.len() >= path.len()
            && self.0.iter().zip(path).all(|(p, s)| match (p, s) {
                (PatStep::Key(a), Step::Key(b)) => a == b,
                (PatStep::AnyKey, Step::Key(_)) => true,
                (PatStep::Index(a), Step::Index(b)) => a == b,
                (PatStep::AnyIndex, Step::Index(_)) => true,
                _ => false,
            })
    }

    /// Every value in `doc` this pattern names.
    pub fn select<'a>(&self, doc: &'a serde_json::Value) -> Vec<&'a serde_json::Value> {
        let mut found = vec![doc];
        for step in &self.0 {
            let mut next = Vec::new();
            for v in found {
                match (step, v) {
                    (PatStep::Key(k), serde_json::Value::Object(m)) => next.extend(m.get(k)),
                    (PatStep::AnyKey, serde_json::Value::Object(m)) => next.extend(m.values()),
                    (PatStep::Index(i), serde_json::Value::Array(a)) => next.extend(a.get(*i)),
                    (PatStep::AnyIndex, serde_json::Value::Array(a)) => next.extend(a.iter()),
                    _ => {}
                }
            }
            found = next;
        }
        found
    }
}

/// The report name of a concrete path: indexes become `[*]`, so the same
/// field of every array element is counted together.
pub fn field_name(path: &[Step]) -> String {
    let mut s = String::from("$");
    for step in path {
        match step {
            Step::Key(k) if is_plain(k) => {
                let _ = write!(s, ".{k}");
            }
            Step::Key(k) => {
                let _ = write!(s, "[{}]", serde_json::Value::String(k.clone()));
            }
            Step::Index(_) => s.push_str("[*]"),
        }
    }
    s
}

fn is_plain(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
        && !k.starts_with(|c: char| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(k: &str) -> Step {
        Step::Key(k.into())
    }

    #[test]
    fn patterns_parse_and_match() {
        let p = PathPattern::parse("$.items[*].price").unwrap();
        assert!(p.matches(&[key("items"), Step::Index(3), key("price")]));
        assert!(!p.matches(&[key("items"), key("x"), key("price")]));
        assert!(p.may_match_below(&[key("items")]));
        assert!(!p.may_match_below(&[key("other")]));
        let q = PathPattern::parse("$[\"a b\"].*[0]").unwrap();
        assert!(q.matches(&[key("a b"), key("z"), Step::Index(0)]));
        assert!(PathPattern::parse("$").unwrap().matches(&[]));
        for bad in ["items", "$.", "$[", "$[x]", "$a"] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn select_and_names() {
        let doc = json!({"items": [{"price": 1}, {"price": 2}, {"x": 3}]});
        let p = PathPattern::parse("$.items[*].price").unwrap();
        assert_eq!(p.select(&doc), vec![&json!(1), &json!(2)]);
        assert_eq!(
            field_name(&[key("items"), Step::Index(7), key("price")]),
            "$.items[*].price"
        );
        assert_eq!(field_name(&[key("a.b")]), "$[\"a.b\"]");
    }
}
