//! `{{name}}` / `${name}` templates in node parameters, compiled once at
//! build time. A string that is exactly one template takes the input's JSON
//! value (and type); templates inside longer strings are interpolated as
//! text. Anything else, such as SQL's `$1`, is left alone.
//!
//! `{{session.user_id}}` (a dotted path after `session.`) reads the
//! caller's session data ([`Context::session`](crate::Context::session))
//! instead of a run input.

use serde_json::{Map, Value};

#[derive(Debug, Clone)]
pub(crate) enum Tpl {
    /// No templates inside.
    Literal(Value),
    /// The whole string is one template.
    Whole(String),
    Text(Vec<Piece>),
    Array(Vec<Tpl>),
    Object(Vec<(String, Tpl)>),
}

#[derive(Debug, Clone)]
pub(crate) enum Piece {
    Lit(String),
    Input(String),
}

/// A template reference and where it sits in the parameters.
#[derive(Debug, Clone)]
pub(crate) struct Ref {
    pub name: String,
    pub path: Vec<String>,
    pub whole: bool,
}

/// The prefix of a template that reads the session rather than an input.
pub(crate) const SESSION: &str = "session.";

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// A run input's name, or `session.` and a dotted path (`session.user.id`).
fn is_name(s: &str) -> bool {
    match s.strip_prefix(SESSION) {
        Some(path) => path.split('.').all(|seg| {
            !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        }),
        None => is_ident(s),
    }
}

/// What a template names: a run input, or a value in the session data.
fn lookup<'v>(
    inputs: &'v Map<String, Value>,
    session: Option<&'v Map<String, Value>>,
    name: &str,
) -> Option<&'v Value> {
    match name.strip_prefix(SESSION) {
        None => inputs.get(name),
        Some(path) => {
            let mut segs = path.split('.');
            let first = session?.get(segs.next()?)?;
            segs.try_fold(first, |cur, seg| match cur {
                Value::Object(m) => m.get(seg),
                Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            })
        }
    }
}

/// Splits a string into literal text and template names.
fn pieces(s: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut rest = s;
    while !rest.is_empty() {
        let next = [("{{", "}}"), ("${", "}")]
            .iter()
            .filter_map(|(open, close)| rest.find(open).map(|i| (i, *open, *close)))
            .min_by_key(|(i, _, _)| *i);
        let Some((i, open, close)) = next else { break };
        let after = &rest[i + open.len()..];
        match after.find(close) {
            Some(j) if is_name(after[..j].trim()) => {
                lit.push_str(&rest[..i]);
                if !lit.is_empty() {
                    out.push(Piece::Lit(std::mem::take(&mut lit)));
                }
                out.push(Piece::Input(after[..j].trim().to_string()));
                rest = &after[j + close.len()..];
            }
            _ => {
                lit.push_str(&rest[..i + open.len()]);
                rest = after;
            }
        }
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        out.push(Piece::Lit(lit));
    }
    out
}

pub(super) fn compile(v: &Value) -> Tpl {
    let t = match v {
        Value::String(s) => {
            let p = pieces(s);
            match p.as_slice() {
                [Piece::Input(name)] => Tpl::Whole(name.clone()),
                _ if p.iter().any(|x| matches!(x, Piece::Input(_))) => Tpl::Text(p),
                _ => Tpl::Literal(v.clone()),
            }
        }
        Value::Array(a) => Tpl::Array(a.iter().map(compile).collect()),
        Value::Object(o) => Tpl::Object(o.iter().map(|(k, v)| (k.clone(), compile(v))).collect()),
        _ => Tpl::Literal(v.clone()),
    };
    match t {
        Tpl::Array(items) if items.iter().all(|t| matches!(t, Tpl::Literal(_))) => {
            Tpl::Literal(v.clone())
        }
        Tpl::Object(items) if items.iter().all(|(_, t)| matches!(t, Tpl::Literal(_))) => {
            Tpl::Literal(v.clone())
        }
        t => t,
    }
}

impl Tpl {
    pub(crate) fn refs(&self) -> Vec<Ref> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, path: &mut Vec<String>, out: &mut Vec<Ref>) {
        match self {
            Tpl::Literal(_) => {}
            Tpl::Whole(name) => out.push(Ref {
                name: name.clone(),
                path: path.clone(),
                whole: true,
            }),
            Tpl::Text(p) => {
                for piece in p {
                    if let Piece::Input(name) = piece {
                        out.push(Ref {
                            name: name.clone(),
                            path: path.clone(),
                            whole: false,
                        });
                    }
                }
            }
            Tpl::Array(items) => {
                for (i, t) in items.iter().enumerate() {
                    path.push(i.to_string());
                    t.collect(path, out);
                    path.pop();
                }
            }
            Tpl::Object(items) => {
                for (k, t) in items {
                    path.push(k.clone());
                    t.collect(path, out);
                    path.pop();
                }
            }
        }
    }

    /// Renders with `inputs` (and `session` for `{{session.*}}`). A
    /// top-level parameter that is exactly one template of a missing input
    /// is left out when `omittable` says it may be; any other missing input
    /// is `Err(name)`.
    pub(crate) fn render(
        &self,
        inputs: &Map<String, Value>,
        session: Option<&Map<String, Value>>,
        omittable: &dyn Fn(&str) -> bool,
    ) -> Result<Value, String> {
        self.render_at(inputs, session, omittable, 0)
    }

    fn render_at(
        &self,
        inputs: &Map<String, Value>,
        session: Option<&Map<String, Value>>,
        omittable: &dyn Fn(&str) -> bool,
        depth: usize,
    ) -> Result<Value, String> {
        Ok(match self {
            Tpl::Literal(v) => v.clone(),
            Tpl::Whole(name) => match lookup(inputs, session, name) {
                Some(v) => v.clone(),
                None => return Err(name.clone()),
            },
            Tpl::Text(p) => {
                let mut s = String::new();
                for piece in p {
                    match piece {
                        Piece::Lit(l) => s.push_str(l),
                        Piece::Input(name) => match lookup(inputs, session, name) {
                            Some(Value::String(v)) => s.push_str(v),
                            Some(v) => s.push_str(&v.to_string()),
                            None => return Err(name.clone()),
                        },
                    }
                }
                Value::String(s)
            }
            Tpl::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for t in items {
                    out.push(t.render_at(inputs, session, omittable, depth + 1)?);
                }
                Value::Array(out)
            }
            Tpl::Object(items) => {
                let mut out = Map::new();
                for (k, t) in items {
                    match t.render_at(inputs, session, omittable, depth + 1) {
                        Ok(v) => {
                            out.insert(k.clone(), v);
                        }
                        // A missing input for an optional top-level parameter
                        // omits it; a missing session value is always an error
                        // (the session was expected to hold it).
                        Err(_)
                            if depth == 0
                                && matches!(t, Tpl::Whole(n) if !n.starts_with(SESSION))
                                && omittable(k) => {}
                        Err(name) => return Err(name),
                    }
                }
                Value::Object(out)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(t: &Value, inputs: Value) -> Result<Value, String> {
        compile(t).render(inputs.as_object().unwrap(), None, &|k| k == "opt")
    }

    #[test]
    fn session_templates_read_the_session_data() {
        let session = json!({"user_id": "u1", "prefs": {"lang": ["de"]}});
        let t = compile(&json!({"id": "{{session.user_id}}", "l": "x {{ session.prefs.lang.0 }}"}));
        let refs: Vec<String> = t.refs().into_iter().map(|r| r.name).collect();
        assert_eq!(refs, ["session.user_id", "session.prefs.lang.0"]);
        let out = t.render(&Map::new(), session.as_object(), &|_| false);
        assert_eq!(out.unwrap(), json!({"id": "u1", "l": "x de"}));
        assert_eq!(
            t.render(&Map::new(), None, &|_| false).unwrap_err(),
            "session.user_id"
        );
        assert_eq!(
            t.render(&Map::new(), None, &|_| true).unwrap_err(),
            "session.user_id",
            "never omitted, even for an optional parameter"
        );
        assert!(matches!(compile(&json!("{{session.}}")), Tpl::Literal(_)));
        assert!(matches!(compile(&json!("{{other.x}}")), Tpl::Literal(_)));
    }

    #[test]
    fn whole_templates_keep_the_json_type() {
        let out = render(
            &json!({"n": "{{n}}", "s": "${s}", "deep": [{"x": "{{ n }}"}]}),
            json!({"n": 5, "s": [1]}),
        );
        assert_eq!(out.unwrap(), json!({"n": 5, "s": [1], "deep": [{"x": 5}]}));
    }

    #[test]
    fn text_templates_interpolate_and_sql_placeholders_stay() {
        let out = render(
            &json!({"q": "hi {{name}}, $1 and ${ and {{not a name}}"}),
            json!({"name": "Ann"}),
        );
        assert_eq!(
            out.unwrap(),
            json!({"q": "hi Ann, $1 and ${ and {{not a name}}"})
        );
        assert!(matches!(compile(&json!("$1")), Tpl::Literal(_)));
    }

    #[test]
    fn missing_inputs_omit_optional_parameters_only() {
        assert_eq!(
            render(&json!({"opt": "{{x}}", "a": 1}), json!({})).unwrap(),
            json!({"a": 1})
        );
        assert_eq!(
            render(&json!({"req": "{{x}}"}), json!({})).unwrap_err(),
            "x"
        );
        assert_eq!(
            render(&json!({"opt": "a {{x}}"}), json!({})).unwrap_err(),
            "x"
        );
    }

    #[test]
    fn refs_report_paths() {
        let refs = compile(&json!({"filter": {"email": "{{email}}"}, "t": "x {{y}}"})).refs();
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[0].path, ["filter", "email"]);
        assert!(refs[0].whole);
        assert!(!refs[1].whole);
    }
}
