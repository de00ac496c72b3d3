//! How Forge's Python sees a JSON value: `==`, `repr()`, `type().__name__`
//! and `json.dumps()`. Forge's answers are built from these, so the
//! simulator reproduces them where they reach the client.

use serde_json::Value;

/// Python's `a == b` on the decoded values: numbers compare as numbers
/// (`4096 == 4096.0`, `True == 1`), containers element by element.
pub fn py_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| py_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, a)| y.get(k).is_some_and(|b| py_eq(a, b)))
        }
        _ => match (as_number(a), as_number(b)) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
    }
}

/// A number, or a bool as Python's int subclass.
pub fn as_number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

/// Python's `repr()` of the decoded value, e.g. `'nope'` for the string
/// `nope`, as it appears in `model 'nope' not found`.
pub fn py_repr(value: &Value) -> String {
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) => py_float(f),
            _ => n.to_string(),
        },
        Value::String(s) => repr_str(s),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(py_repr).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", repr_str(k), py_repr(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
    }
}

/// `type(value).__name__` of the decoded value.
pub fn py_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// `json.dumps(value)` with Python's defaults: `", "` and `": "` separators
/// and non-ASCII escaped. Forge's generation `info` string is made this way.
pub fn py_json_dumps(value: &Value) -> String {
    let mut out = String::new();
    dump(value, &mut out, Style::Dumps);
    out
}

/// The body of a Starlette `JSONResponse`, which is how FastAPI answers:
/// `json.dumps(content, ensure_ascii=False, separators=(",", ":"))`, so no
/// spaces, non-ASCII as UTF-8, and floats as Python writes them (`80.0`,
/// `1e+20`).
pub fn py_json_response(value: &Value) -> Vec<u8> {
    let mut out = String::new();
    write_json_response(value, &mut out);
    out.into_bytes()
}

/// [`py_json_response`] appending to `out`.
pub fn write_json_response(value: &Value, out: &mut String) {
    dump(value, out, Style::Response);
}

/// The two ways Forge's Python writes JSON.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    /// `json.dumps(value)`.
    Dumps,
    /// Starlette's `JSONResponse.render`.
    Response,
}

fn dump(value: &Value, out: &mut String, style: Style) {
    let (comma, colon) = match style {
        Style::Dumps => (", ", ": "),
        Style::Response => (",", ":"),
    };
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => out.push_str(&py_float(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => dump_str(s, out, style),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(comma);
                }
                dump(item, out, style);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(comma);
                }
                dump_str(key, out, style);
                out.push_str(colon);
                dump(item, out, style);
            }
            out.push('}');
        }
    }
}

fn dump_str(s: &str, out: &mut String, style: Style) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            c if style == Style::Response && (c as u32) >= 0x20 => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest digits that read back as `f`, in
/// positional notation with at least one decimal (`80.0`, `0.0001`) when the
/// decimal exponent is in `-4..16`, else in scientific notation with a signed,
/// two-digit exponent (`1e+16`, `1.5e-05`).
pub fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: `1.2345e3`, `-5e-5`.
    let scientific = format!("{f:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("`{:e}` always writes an exponent");
    let exponent: i32 = exponent.parse().expect("a decimal exponent");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (-4..16).contains(&exponent) {
        let point = exponent + 1;
        if point <= 0 {
            let zeros = "0".repeat(point.unsigned_abs() as usize);
            format!("{sign}0.{zeros}{digits}")
        } else {
            let point = point as usize;
            let (int, frac) = if digits.len() > point {
                (digits[..point].to_owned(), digits[point..].to_owned())
            } else {
                (format!("{digits:0<point$}"), "0".to_owned())
            };
            format!("{sign}{int}.{frac}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let rest = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!(
            "{sign}{first}{rest}e{exp_sign}{:02}",
            exponent.unsigned_abs()
        )
    }
}

fn repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_compare_as_numbers() {
        assert!(py_eq(&json!(4096), &json!(4096.0)));
        assert!(py_eq(&json!(true), &json!(1)));
        assert!(py_eq(&json!([1, {"a": 2}]), &json!([1.0, {"a": 2.0}])));
        assert!(!py_eq(&json!("4096"), &json!(4096)));
        assert!(!py_eq(&json!([1]), &json!([1, 2])));
    }

    #[test]
    fn repr_quotes_like_python() {
        assert_eq!(py_repr(&json!("nope")), "'nope'");
        assert_eq!(py_repr(&json!("it's")), "\"it's\"");
        assert_eq!(py_repr(&json!("a'b\"c")), "'a\\'b\"c'");
        assert_eq!(py_repr(&json!(5)), "5");
        assert_eq!(py_repr(&json!(5.0)), "5.0");
        assert_eq!(py_repr(&json!(null)), "None");
        assert_eq!(py_repr(&json!([true, "x"])), "[True, 'x']");
    }

    #[test]
    fn dumps_uses_python_separators_and_escapes_non_ascii() {
        assert_eq!(
            py_json_dumps(&json!({"a": [1, 2.0], "b": "é"})),
            r#"{"a": [1, 2.0], "b": "\u00e9"}"#
        );
    }

    #[test]
    fn floats_are_written_as_python_repr_writes_them() {
        for (f, text) in [
            (80.0, "80.0"),
            (-1.0, "-1.0"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (0.5, "0.5"),
            (0.05, "0.05"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (123.456, "123.456"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1e20, "1e+20"),
            (1.2345678901234568e22, "1.2345678901234568e+22"),
            (1.5e300, "1.5e+300"),
            (23081.0, "23081.0"),
        ] {
            assert_eq!(py_float(f), text, "{f}");
        }
    }

    #[test]
    fn responses_are_compact_and_keep_non_ascii() {
        assert_eq!(
            py_json_response(&json!({"a": [1, 2.0, 1e20], "b": "é\n\u{1}"})),
            "{\"a\":[1,2.0,1e+20],\"b\":\"é\\n\\u0001\"}".as_bytes()
        );
    }

    #[test]
    fn type_names_are_pythons() {
        assert_eq!(py_type_name(&json!("x")), "str");
        assert_eq!(py_type_name(&json!(1.5)), "float");
        assert_eq!(py_type_name(&json!(null)), "NoneType");
    }
}
