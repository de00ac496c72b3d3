//! Where Python's `json.loads` (CPython 3.10's C scanner) reports a syntax
//! error, and with which message: FastAPI puts both into its `json_invalid`
//! answer (`"loc": ["body", pos]`, `"ctx": {"error": msg}`).
//!
//! Used only after serde_json has rejected a body, to describe the error the
//! way Forge would.

/// A decode error as Python reports it: the message without position, and
/// the position in characters (not bytes).
#[derive(Debug, PartialEq, Eq)]
pub struct PyJsonError {
    pub msg: &'static str,
    pub pos: usize,
}

/// Nesting beyond this is not analysed (Python would hit its recursion limit).
const MAX_DEPTH: usize = 900;

/// Finds the first error Python's decoder would report in `text`, or `None`
/// when Python would accept it (e.g. `NaN`, which serde_json rejects).
pub fn locate(text: &str) -> Option<PyJsonError> {
    let chars: Vec<char> = text.chars().collect();
    let scanner = Scanner { s: &chars };
    let start = scanner.skip_ws(0);
    let result = scanner.value(start, 0).and_then(|end| {
        let end = scanner.skip_ws(end);
        if end == chars.len() {
            Ok(end)
        } else {
            Err(err("Extra data", end))
        }
    });
    result.err().flatten()
}

fn err(msg: &'static str, pos: usize) -> Option<PyJsonError> {
    Some(PyJsonError { msg, pos })
}

/// `Err(None)` means "gave up" (too deep): no position to report.
type Scan = Result<usize, Option<PyJsonError>>;

struct Scanner<'a> {
    s: &'a [char],
}

impl Scanner<'_> {
    fn at(&self, i: usize) -> Option<char> {
        self.s.get(i).copied()
    }

    fn skip_ws(&self, mut i: usize) -> usize {
        while matches!(self.at(i), Some(' ' | '\t' | '\n' | '\r')) {
            i += 1;
        }
        i
    }

    fn starts_with(&self, i: usize, word: &str) -> bool {
        word.chars()
            .enumerate()
            .all(|(k, c)| self.at(i + k) == Some(c))
    }

    /// A value starting exactly at `i`; "Expecting value" where none starts.
    fn value(&self, i: usize, depth: usize) -> Scan {
        if depth > MAX_DEPTH {
            return Err(None);
        }
        match self.at(i) {
            Some('"') => self.string(i + 1),
            Some('{') => self.object(i + 1, depth + 1),
            Some('[') => self.array(i + 1, depth + 1),
            _ => {
                for word in ["null", "true", "false", "NaN", "Infinity", "-Infinity"] {
                    if self.starts_with(i, word) {
                        return Ok(i + word.chars().count());
                    }
                }
                self.number(i).ok_or_else(|| err("Expecting value", i))
            }
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?`, longest match.
    fn number(&self, start: usize) -> Option<usize> {
        let digits = |mut i: usize| {
            let from = i;
            while matches!(self.at(i), Some('0'..='9')) {
                i += 1;
            }
            (i > from).then_some(i)
        };
        let mut i = start;
        if self.at(i) == Some('-') {
            i += 1;
        }
        i = match self.at(i) {
            Some('0') => i + 1,
            Some('1'..='9') => digits(i)?,
            _ => return None,
        };
        if self.at(i) == Some('.') {
            if let Some(end) = digits(i + 1) {
                i = end;
            }
        }
        if matches!(self.at(i), Some('e' | 'E')) {
            let sign = usize::from(matches!(self.at(i + 1), Some('+' | '-')));
            if let Some(end) = digits(i + 1 + sign) {
                i = end;
            }
        }
        Some(i)
    }

    /// A string whose opening quote is at `begin - 1`.
    fn string(&self, begin: usize) -> Scan {
        let mut i = begin;
        loop {
            match self.at(i) {
                None => return Err(err("Unterminated string starting at", begin - 1)),
                Some('"') => return Ok(i + 1),
                Some('\\') => match self.at(i + 1) {
                    None => return Err(err("Unterminated string starting at", begin - 1)),
                    Some('"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't') => i += 2,
                    Some('u') => {
                        let hex =
                            (2..6).all(|k| self.at(i + k).is_some_and(|c| c.is_ascii_hexdigit()));
                        if !hex {
                            return Err(err("Invalid \\uXXXX escape", i + 1));
                        }
                        i += 6;
                    }
                    Some(_) => return Err(err("Invalid \\escape", i)),
                },
                Some(c) if (c as u32) < 0x20 => return Err(err("Invalid control character at", i)),
                Some(_) => i += 1,
            }
        }
    }

    /// An object whose `{` is at `i - 1`.
    fn object(&self, i: usize, depth: usize) -> Scan {
        let mut i = self.skip_ws(i);
        if self.at(i) == Some('}') {
            return Ok(i + 1);
        }
        loop {
            if self.at(i) != Some('"') {
                return Err(err("Expecting property name enclosed in double quotes", i));
            }
            i = self.skip_ws(self.string(i + 1)?);
            if self.at(i) != Some(':') {
                return Err(err("Expecting ':' delimiter", i));
            }
            i = self.skip_ws(i + 1);
            i = self.skip_ws(self.value(i, depth)?);
            match self.at(i) {
                Some('}') => return Ok(i + 1),
                Some(',') => i = self.skip_ws(i + 1),
                _ => return Err(err("Expecting ',' delimiter", i)),
            }
        }
    }

    /// An array whose `[` is at `i - 1`.
    fn array(&self, i: usize, depth: usize) -> Scan {
        let mut i = self.skip_ws(i);
        if self.at(i) == Some(']') {
            return Ok(i + 1);
        }
        loop {
            i = self.skip_ws(self.value(i, depth)?);
            match self.at(i) {
                Some(']') => return Ok(i + 1),
                Some(',') => i = self.skip_ws(i + 1),
                _ => return Err(err("Expecting ',' delimiter", i)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(msg: &'static str, pos: usize) -> Option<PyJsonError> {
        Some(PyJsonError { msg, pos })
    }

    #[test]
    fn plain_text_is_expecting_value_at_zero() {
        assert_eq!(locate("not json"), at("Expecting value", 0));
        assert_eq!(locate(""), at("Expecting value", 0));
        assert_eq!(locate("   "), at("Expecting value", 3));
    }

    #[test]
    fn truncated_object_reports_where_python_stops() {
        assert_eq!(locate(r#"{"steps": "#), at("Expecting value", 10));
        assert_eq!(locate(r#"{"steps": 20"#), at("Expecting ',' delimiter", 12));
        assert_eq!(
            locate(r#"{"steps": 20,}"#),
            at("Expecting property name enclosed in double quotes", 13)
        );
        assert_eq!(
            locate("{steps: 20}"),
            at("Expecting property name enclosed in double quotes", 1)
        );
        assert_eq!(locate(r#"{"steps" 20}"#), at("Expecting ':' delimiter", 9));
    }

    #[test]
    fn trailing_garbage_is_extra_data() {
        assert_eq!(locate("{} x"), at("Extra data", 3));
        assert_eq!(locate("01"), at("Extra data", 1));
    }

    #[test]
    fn string_errors() {
        assert_eq!(
            locate(r#"{"a": "b"#),
            at("Unterminated string starting at", 6)
        );
        assert_eq!(locate("\"a\nb\""), at("Invalid control character at", 2));
        assert_eq!(locate(r#""\q""#), at("Invalid \\escape", 1));
    }

    #[test]
    fn positions_count_characters_not_bytes() {
        assert_eq!(locate("\"é\" x"), at("Extra data", 4));
    }

    #[test]
    fn python_accepts_what_serde_rejects() {
        assert_eq!(locate(r#"{"cfg_scale": NaN}"#), None);
        assert_eq!(locate("[1, -Infinity]"), None);
    }

    #[test]
    fn trailing_comma_in_array_is_expecting_value() {
        assert_eq!(locate("[1,]"), at("Expecting value", 3));
    }
}
