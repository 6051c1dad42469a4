//! PHP's `serialize()` format, in the subset GatewayWorker puts on the wire (reference §9.2):
//! arrays with int or string keys, strings, ints, floats, bools and null.
//!
//! [`decode`] reads bytes from a peer, so every size it trusts is bounded first ([`Limits`]):
//! nesting depth, string length and the number of elements, and it never reserves memory for
//! a count the remaining input could not hold. Objects, references and enums (`O:`, `C:`,
//! `r:`, `R:`, `E:`) are refused: GatewayWorker never sends them, and PHP itself unserializes
//! its packets with objects disabled.
//!
//! [`encode`] writes what PHP 7.1+ writes (`serialize_precision = -1`), byte for byte, for a
//! value PHP could hold: an array's keys unique and a numeric string key stored as an int, as
//! [`decode`] leaves them. Floats follow PHP's `php_gcvt` with the shortest digits that read
//! back to the same float: `0.1` → `d:0.1;`, `1.0` → `d:1;`, `-0.0` → `d:-0;`,
//! `1e100` → `d:1.0E+100;`, `1e-5` → `d:1.0E-5;`, infinities → `d:INF;` / `d:-INF;`, NaN →
//! `d:NAN;`; the exponent form is used when the decimal point would sit more than 17 digits
//! right or more than 3 zeros left of the digits.

use std::collections::HashMap;

/// A PHP value of the subset.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `N;`
    Null,
    /// `b:0;` / `b:1;`
    Bool(bool),
    /// `i:…;`
    Int(i64),
    /// `d:…;`
    Float(f64),
    /// `s:len:"…";`: bytes, not necessarily UTF-8.
    Str(Vec<u8>),
    /// `a:n:{…}`: entries in PHP's order.
    Array(Vec<(Key, Value)>),
}

impl Value {
    /// A PHP array keyed by names, as PHP keys them (`"5"` becomes 5); a name given twice keeps
    /// its first place and its last value, as PHP's assignment does.
    pub fn keyed(entries: impl IntoIterator<Item = (String, Value)>) -> Value {
        let mut out: Vec<(Key, Value)> = Vec::new();
        let mut at = HashMap::new();
        for (name, value) in entries {
            let key = Key::from_bytes(name.as_bytes());
            match at.get(&key) {
                Some(&slot) => out[slot] = (key, value),
                None => {
                    at.insert(key.clone(), out.len());
                    out.push((key, value));
                }
            }
        }
        Value::Array(out)
    }
}

/// An array key: PHP stores a string that reads as a canonical integer as that integer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// An integer key.
    Int(i64),
    /// A string key that is not a canonical integer.
    Str(Vec<u8>),
}

impl Key {
    /// The key PHP makes of the string `bytes`: `"5"` and `"-3"` become integers, `"05"`,
    /// `"-0"` and `"+1"` stay strings.
    pub fn from_bytes(bytes: &[u8]) -> Key {
        canonical_int(bytes).map_or_else(|| Key::Str(bytes.to_vec()), Key::Int)
    }
}

/// Bounds on what [`decode`] accepts from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Arrays nested deeper than this are refused.
    pub max_depth: usize,
    /// A string (value or key) longer than this is refused.
    pub max_string: usize,
    /// More elements than this in the whole value (all arrays together) are refused.
    pub max_elements: usize,
}

impl Limits {
    /// What GatewayWorker's packets need with room to spare: sessions and replies are small
    /// maps, bodies at most Workerman's 10 MB package.
    pub const DEFAULT: Limits = Limits {
        max_depth: 32,
        max_string: 10 << 20,
        max_elements: 1 << 20,
    };
}

/// Why bytes are not a value of the subset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ends inside a value.
    #[error("input ends inside a value (at byte {0})")]
    Truncated(usize),
    /// A byte that the format does not allow here.
    #[error("unexpected byte at {at}: expected {expected}")]
    Unexpected {
        /// Its offset.
        at: usize,
        /// What the format wants there.
        expected: &'static str,
    },
    /// A type of value outside the subset (object, reference, enum …).
    #[error("unsupported PHP type `{tag}` at byte {at}")]
    Unsupported {
        /// The type letter.
        tag: char,
        /// Its offset.
        at: usize,
    },
    /// A number that is malformed or out of range.
    #[error("malformed or out-of-range number at byte {0}")]
    BadNumber(usize),
    /// An array key that is neither an int nor a string.
    #[error("array key at byte {0} is neither an int nor a string")]
    BadKey(usize),
    /// Arrays nested deeper than [`Limits::max_depth`].
    #[error("arrays nested deeper than {0}")]
    TooDeep(usize),
    /// A string longer than [`Limits::max_string`].
    #[error("a string of {len} bytes is over the limit of {limit}")]
    TooLong {
        /// The length it declares.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// More elements than [`Limits::max_elements`].
    #[error("more than {0} array elements")]
    TooManyElements(usize),
    /// Bytes left after the value.
    #[error("{0} bytes after the value")]
    Trailing(usize),
}

/// Reads exactly one value from `input`.
pub fn decode(input: &[u8], limits: Limits) -> Result<Value, DecodeError> {
    let mut reader = Reader {
        input,
        at: 0,
        limits,
        elements: 0,
    };
    let value = reader.value(0)?;
    match input.len() - reader.at {
        0 => Ok(value),
        left => Err(DecodeError::Trailing(left)),
    }
}

/// Writes `value` as PHP's `serialize()` does.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(value, &mut out);
    out
}

/// Appends `value`, serialized, to `out`.
pub fn encode_into(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"N;"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"b:1;" } else { b"b:0;" }),
        Value::Int(i) => out.extend_from_slice(format!("i:{i};").as_bytes()),
        Value::Float(f) => out.extend_from_slice(format!("d:{};", php_float(*f)).as_bytes()),
        Value::Str(s) => encode_str(s, out),
        Value::Array(entries) => {
            out.extend_from_slice(format!("a:{}:{{", entries.len()).as_bytes());
            for (key, value) in entries {
                match key {
                    Key::Int(i) => out.extend_from_slice(format!("i:{i};").as_bytes()),
                    Key::Str(s) => encode_str(s, out),
                }
                encode_into(value, out);
            }
            out.push(b'}');
        }
    }
}

fn encode_str(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("s:{}:\"", s.len()).as_bytes());
    out.extend_from_slice(s);
    out.extend_from_slice(b"\";");
}

/// `f` as PHP's `php_gcvt(f, 17, '.', 'E')` prints it with mode-0 (shortest) digits.
fn php_float(f: f64) -> String {
    if f.is_nan() {
        return "NAN".into();
    }
    if f.is_infinite() {
        return if f < 0.0 { "-INF" } else { "INF" }.into();
    }
    // Rust's `{:e}` gives the shortest digits that read back to `f`, as dtoa's mode 0 does.
    let scientific = format!("{:e}", f.abs());
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("`{:e}` always has an exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let exponent: i32 = exponent.parse().expect("`{:e}` writes a decimal exponent");
    // PHP's decpt: the decimal point sits after this many digits.
    let point = exponent + 1;
    let mut out = String::new();
    if f.is_sign_negative() {
        out.push('-');
    }
    if !(-3..=17).contains(&point) {
        let (first, rest) = digits.split_at(1);
        let rest = if rest.is_empty() { "0" } else { rest };
        let sign = if exponent < 0 { '-' } else { '+' };
        out.push_str(&format!("{first}.{rest}E{sign}{}", exponent.unsigned_abs()));
    } else if point <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', point.unsigned_abs() as usize));
        out.push_str(&digits);
    } else {
        let point = point as usize;
        if digits.len() <= point {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', point - digits.len()));
        } else {
            out.push_str(&digits[..point]);
            out.push('.');
            out.push_str(&digits[point..]);
        }
    }
    out
}

/// The integer a string key stands for in PHP: decimal, no leading zero or `+`, not `-0`,
/// within `i64`.
fn canonical_int(bytes: &[u8]) -> Option<i64> {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    let canonical = match digits {
        [b'0'] => bytes.len() == 1,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !canonical {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// The decoder's position in its input.
struct Reader<'a> {
    input: &'a [u8],
    at: usize,
    limits: Limits,
    /// Array elements read so far, in all arrays.
    elements: usize,
}

impl Reader<'_> {
    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        let start = self.at;
        let tag = self.byte()?;
        if tag == b'N' {
            self.expect(b';', "`;`")?;
            return Ok(Value::Null);
        }
        self.expect(b':', "`:`")?;
        match tag {
            b'b' => {
                let value = match self.byte()? {
                    b'0' => false,
                    b'1' => true,
                    _ => {
                        return Err(DecodeError::Unexpected {
                            at: self.at - 1,
                            expected: "`0` or `1`",
                        });
                    }
                };
                self.expect(b';', "`;`")?;
                Ok(Value::Bool(value))
            }
            b'i' => Ok(Value::Int(self.int()?)),
            b'd' => Ok(Value::Float(self.float()?)),
            b's' => Ok(Value::Str(self.string()?)),
            b'a' => self.array(depth + 1),
            other => Err(DecodeError::Unsupported {
                tag: char::from(other),
                at: start,
            }),
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, DecodeError> {
        if depth > self.limits.max_depth {
            return Err(DecodeError::TooDeep(self.limits.max_depth));
        }
        let count = self.length(b':')?;
        self.elements = self.elements.saturating_add(count);
        if self.elements > self.limits.max_elements {
            return Err(DecodeError::TooManyElements(self.limits.max_elements));
        }
        self.expect(b'{', "`{`")?;
        // The shortest element, `i:0;N;`, is 6 bytes: never reserve beyond what could follow.
        let mut entries = Vec::with_capacity(count.min((self.input.len() - self.at) / 6));
        let mut index: HashMap<Key, usize> = HashMap::new();
        for _ in 0..count {
            let at = self.at;
            let key = match self.byte()? {
                b'i' => {
                    self.expect(b':', "`:`")?;
                    Key::Int(self.int()?)
                }
                b's' => {
                    self.expect(b':', "`:`")?;
                    Key::from_bytes(&self.string()?)
                }
                _ => return Err(DecodeError::BadKey(at)),
            };
            let value = self.value(depth)?;
            // As PHP's hash update: a repeated key keeps its first place and its last value.
            match index.get(&key) {
                Some(&place) => entries[place] = (key, value),
                None => {
                    index.insert(key.clone(), entries.len());
                    entries.push((key, value));
                }
            }
        }
        self.expect(b'}', "`}`")?;
        Ok(Value::Array(entries))
    }

    fn string(&mut self) -> Result<Vec<u8>, DecodeError> {
        let len = self.length(b':')?;
        if len > self.limits.max_string {
            return Err(DecodeError::TooLong {
                len,
                limit: self.limits.max_string,
            });
        }
        self.expect(b'"', "`\"`")?;
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.input.len())
            .ok_or(DecodeError::Truncated(self.input.len()))?;
        let bytes = self.input[self.at..end].to_vec();
        self.at = end;
        self.expect(b'"', "`\"`")?;
        self.expect(b';', "`;`")?;
        Ok(bytes)
    }

    /// An unsigned length followed by `end`.
    fn length(&mut self, end: u8) -> Result<usize, DecodeError> {
        let start = self.at;
        let text = self.until(end)?;
        if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
            return Err(DecodeError::BadNumber(start));
        }
        parse(text).ok_or(DecodeError::BadNumber(start))
    }

    /// `[+-]?[0-9]+;`
    fn int(&mut self) -> Result<i64, DecodeError> {
        let start = self.at;
        let text = self.until(b';')?;
        let digits = text.strip_prefix(b"+").unwrap_or(text);
        let unsigned = digits.strip_prefix(b"-").unwrap_or(digits);
        if unsigned.is_empty() || !unsigned.iter().all(u8::is_ascii_digit) {
            return Err(DecodeError::BadNumber(start));
        }
        parse(digits).ok_or(DecodeError::BadNumber(start))
    }

    /// PHP's float grammar: `[+-]?` digits with an optional point and exponent, or `NAN`,
    /// `INF`, `-INF`; then `;`.
    fn float(&mut self) -> Result<f64, DecodeError> {
        let start = self.at;
        let text = self.until(b';')?;
        match text {
            b"NAN" => return Ok(f64::NAN),
            b"INF" => return Ok(f64::INFINITY),
            b"-INF" => return Ok(f64::NEG_INFINITY),
            _ => {}
        }
        let (mantissa, exponent) = match text.iter().position(|b| matches!(b, b'e' | b'E')) {
            Some(at) => (&text[..at], Some(&text[at + 1..])),
            None => (text, None),
        };
        let mantissa_ok = {
            let m = strip_sign(mantissa);
            let (whole, fraction) = match m.iter().position(|b| *b == b'.') {
                Some(at) => (&m[..at], Some(&m[at + 1..])),
                None => (m, None),
            };
            let digits = |d: &[u8]| d.iter().all(u8::is_ascii_digit);
            digits(whole)
                && fraction.is_none_or(digits)
                && !(whole.is_empty() && fraction.is_none_or(<[u8]>::is_empty))
        };
        let exponent_ok = exponent.is_none_or(|e| {
            let e = strip_sign(e);
            !e.is_empty() && e.iter().all(u8::is_ascii_digit)
        });
        if !(mantissa_ok && exponent_ok) {
            return Err(DecodeError::BadNumber(start));
        }
        parse(text).ok_or(DecodeError::BadNumber(start))
    }

    /// The bytes up to `end`, which is consumed.
    fn until(&mut self, end: u8) -> Result<&[u8], DecodeError> {
        let rest = &self.input[self.at..];
        let len = rest
            .iter()
            .position(|b| *b == end)
            .ok_or(DecodeError::Truncated(self.input.len()))?;
        self.at += len + 1;
        Ok(&rest[..len])
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let byte = *self
            .input
            .get(self.at)
            .ok_or(DecodeError::Truncated(self.at))?;
        self.at += 1;
        Ok(byte)
    }

    fn expect(&mut self, want: u8, expected: &'static str) -> Result<(), DecodeError> {
        if self.byte()? == want {
            Ok(())
        } else {
            Err(DecodeError::Unexpected {
                at: self.at - 1,
                expected,
            })
        }
    }
}

fn strip_sign(text: &[u8]) -> &[u8] {
    text.strip_prefix(b"+")
        .or_else(|| text.strip_prefix(b"-"))
        .unwrap_or(text)
}

fn parse<T: std::str::FromStr>(text: &[u8]) -> Option<T> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn d(input: &[u8]) -> Result<Value, DecodeError> {
        decode(input, Limits::DEFAULT)
    }

    #[test]
    fn floats_print_as_php_does() {
        for (f, php) in [
            (0.1, "0.1"),
            (1.0, "1"),
            (-0.0, "-0"),
            (0.0, "0"),
            (1.5, "1.5"),
            (-2.25, "-2.25"),
            (100.0, "100"),
            (1e15, "1000000000000000"),
            (1e16, "10000000000000000"),
            (1e17, "1.0E+17"),
            (1e18, "1.0E+18"),
            (1.25e18, "1.25E+18"),
            (1e100, "1.0E+100"),
            (0.001, "0.001"),
            (0.0001, "0.0001"),
            (0.00012, "0.00012"),
            (1e-5, "1.0E-5"),
            (1.5e-7, "1.5E-7"),
            (0.30000000000000004, "0.30000000000000004"),
            (f64::INFINITY, "INF"),
            (f64::NEG_INFINITY, "-INF"),
            (f64::NAN, "NAN"),
            (f64::MAX, "1.7976931348623157E+308"),
        ] {
            assert_eq!(php_float(f), php, "{f:e}");
        }
    }

    #[test]
    fn decodes_and_encodes_a_session_as_php_writes_it() {
        let php = br#"a:5:{s:3:"uid";i:42;s:4:"name";s:5:"alice";i:7;d:0.5;s:2:"ok";b:1;s:4:"tags";a:2:{i:0;s:1:"a";i:1;N;}}"#;
        let value = d(php).unwrap();
        let Value::Array(entries) = &value else {
            panic!("not an array: {value:?}");
        };
        assert_eq!(entries[0], (Key::Str(b"uid".to_vec()), Value::Int(42)));
        assert_eq!(entries[2], (Key::Int(7), Value::Float(0.5)));
        assert_eq!(encode(&value), php);
    }

    #[test]
    fn numeric_string_keys_and_repeated_keys_become_what_php_holds() {
        let value = d(br#"a:3:{s:1:"5";N;s:2:"05";N;i:5;b:1;}"#).unwrap();
        assert_eq!(
            value,
            Value::Array(vec![
                (Key::Int(5), Value::Bool(true)),
                (Key::Str(b"05".to_vec()), Value::Null),
            ])
        );
        assert_eq!(Key::from_bytes(b"-0"), Key::Str(b"-0".to_vec()));
        assert_eq!(Key::from_bytes(b"-12"), Key::Int(-12));
        assert_eq!(
            Key::from_bytes(b"9223372036854775808"),
            Key::Str(b"9223372036854775808".to_vec())
        );
    }

    #[test]
    fn reads_every_number_form_php_reads() {
        assert_eq!(d(b"i:+5;"), Ok(Value::Int(5)));
        assert_eq!(d(b"i:-9223372036854775808;"), Ok(Value::Int(i64::MIN)));
        assert_eq!(d(b"d:1.;"), Ok(Value::Float(1.0)));
        assert_eq!(d(b"d:.5;"), Ok(Value::Float(0.5)));
        assert_eq!(d(b"d:-1.5E+3;"), Ok(Value::Float(-1500.0)));
        assert_eq!(d(b"d:2e-1;"), Ok(Value::Float(0.2)));
        assert_eq!(d(b"d:-INF;"), Ok(Value::Float(f64::NEG_INFINITY)));
        assert!(matches!(d(b"d:NAN;"), Ok(Value::Float(f)) if f.is_nan()));
        for bad in [
            &b"i:9223372036854775808;"[..],
            b"i:;",
            b"i:1x;",
            b"d:.;",
            b"d:1e;",
            b"d:inf;",
            b"d:0x10;",
            b"s:-1:\"\";",
            b"a:+1:{i:0;N;}",
        ] {
            assert!(
                matches!(d(bad), Err(DecodeError::BadNumber(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn refuses_what_is_outside_the_subset_or_the_limits() {
        assert!(matches!(
            d(br#"O:8:"stdClass":0:{}"#),
            Err(DecodeError::Unsupported { tag: 'O', at: 0 })
        ));
        assert!(matches!(
            d(b"a:1:{i:0;r:1;}"),
            Err(DecodeError::Unsupported { tag: 'r', .. })
        ));
        assert_eq!(d(b"a:1:{d:1;N;}"), Err(DecodeError::BadKey(5)));
        assert_eq!(d(b"N;N;"), Err(DecodeError::Trailing(2)));
        assert!(matches!(d(b"s:5:\"abc\";"), Err(DecodeError::Truncated(_))));
        assert!(matches!(d(b"a:2:{i:0;N;}"), Err(DecodeError::BadKey(_))));
        assert!(matches!(d(b"b:2;"), Err(DecodeError::Unexpected { .. })));

        let limits = Limits {
            max_depth: 2,
            max_string: 4,
            max_elements: 3,
        };
        assert!(decode(b"a:1:{i:0;a:0:{}}", limits).is_ok());
        assert_eq!(
            decode(b"a:1:{i:0;a:1:{i:0;a:0:{}}}", limits),
            Err(DecodeError::TooDeep(2))
        );
        assert_eq!(
            decode(b"s:5:\"abcde\";", limits),
            Err(DecodeError::TooLong { len: 5, limit: 4 })
        );
        assert_eq!(
            decode(b"a:2:{i:0;N;i:1;a:2:{i:0;N;i:1;N;}}", limits),
            Err(DecodeError::TooManyElements(3))
        );
        // A huge declared count is refused before anything is reserved for it.
        assert_eq!(
            d(b"a:99999999999:{"),
            Err(DecodeError::TooManyElements(Limits::DEFAULT.max_elements))
        );
        // Deep nesting ends at the depth limit, never in a stack overflow.
        let deep = b"a:1:{i:0;".repeat(100_000);
        assert_eq!(
            d(&deep),
            Err(DecodeError::TooDeep(Limits::DEFAULT.max_depth))
        );
    }

    /// A random value of the subset, as PHP could hold it (unique, canonical keys).
    pub(crate) fn random_value(rng: &mut StdRng, depth: usize) -> Value {
        match rng.random_range(0..if depth == 0 { 6 } else { 5 }) {
            0 => Value::Null,
            1 => Value::Bool(rng.random()),
            2 => Value::Int(random_int(rng)),
            3 => Value::Float(random_float(rng)),
            4 => Value::Str(random_bytes(rng)),
            _ => {
                let mut entries: Vec<(Key, Value)> = Vec::new();
                for _ in 0..rng.random_range(0..6) {
                    let key = if rng.random() {
                        Key::Int(random_int(rng))
                    } else {
                        Key::from_bytes(&random_bytes(rng))
                    };
                    if entries.iter().all(|(k, _)| *k != key) {
                        entries.push((key, random_value(rng, depth - 1)));
                    }
                }
                Value::Array(entries)
            }
        }
    }

    fn random_int(rng: &mut StdRng) -> i64 {
        match rng.random_range(0..4) {
            0 => rng.random(),
            1 => rng.random_range(-100..100),
            2 => *[i64::MIN, i64::MAX, 0, -1]
                .get(rng.random_range(0..4))
                .unwrap(),
            _ => rng.random_range(0..100_000),
        }
    }

    fn random_float(rng: &mut StdRng) -> f64 {
        match rng.random_range(0..5) {
            0 => f64::from_bits(rng.random()),
            1 => rng.random_range(-1000.0..1000.0),
            2 => f64::from(rng.random_range(-1000..1000)) / 8.0,
            3 => 10f64.powi(rng.random_range(-30..30)),
            _ => *[0.0, -0.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 0.1]
                .get(rng.random_range(0..6))
                .unwrap(),
        }
    }

    pub(crate) fn random_bytes(rng: &mut StdRng) -> Vec<u8> {
        let alphabet: &[u8] = b"ab\"';:{}\0\n5-0.\xff\xc3\xa9";
        (0..rng.random_range(0..12))
            .map(|_| {
                if rng.random_range(0..4) == 0 {
                    rng.random()
                } else {
                    alphabet[rng.random_range(0..alphabet.len())]
                }
            })
            .collect()
    }

    #[test]
    fn every_value_round_trips_byte_for_byte() {
        let mut rng = StdRng::seed_from_u64(17);
        for _ in 0..20_000 {
            let value = random_value(&mut rng, 3);
            let bytes = encode(&value);
            let back = d(&bytes).unwrap_or_else(|e| {
                panic!("{e}: {}", String::from_utf8_lossy(&bytes));
            });
            // NaN is not equal to itself: compare what PHP would see, the bytes.
            assert_eq!(encode(&back), bytes);
        }
    }

    #[test]
    fn every_float_reads_back_to_the_same_float() {
        let mut rng = StdRng::seed_from_u64(18);
        for _ in 0..100_000 {
            let f = random_float(&mut rng);
            let text = php_float(f);
            let back: f64 = match text.as_str() {
                "NAN" => f64::NAN,
                "INF" => f64::INFINITY,
                "-INF" => f64::NEG_INFINITY,
                text => text.parse().unwrap(),
            };
            assert!(
                back.to_bits() == f.to_bits() || (f.is_nan() && back.is_nan()),
                "{f:e} → {text}"
            );
        }
    }
}
