//! A tenant's contacts (docs/rules.md §11): how a phone number given by a business becomes the
//! user key the channel knows, which tags and opt-in records are acceptable, and how a CSV
//! import is read a chunk at a time without holding the file.

use crate::Timestamp;

/// Why a phone number cannot be a contact's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("the phone number is empty")]
    Empty,
    #[error(
        "the phone number holds characters other than digits, spaces, '+', '-', '.', '(', ')' or '/'"
    )]
    BadCharacter,
    #[error(
        "the phone number has no country code: write it with '+' or give a default calling code"
    )]
    NoCountryCode,
    #[error("an E.164 number has 7 to 15 digits and does not start with 0")]
    BadLength,
}

/// Normalises a phone number as people write it to E.164 digits without `+` (the `wa_id`
/// form): separators dropped, `+` or `00` mark the international form, anything else is a
/// national number of `default_calling_code` (digits; empty when the import names none).
pub fn normalize_phone(raw: &str, default_calling_code: &str) -> Result<String, PhoneError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(PhoneError::Empty);
    }
    let (international, rest) = match trimmed.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    let mut digits = String::with_capacity(rest.len());
    for c in rest.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' | '/' => {}
            _ => return Err(PhoneError::BadCharacter),
        }
    }
    let e164 = if international {
        digits
    } else if let Some(rest) = digits.strip_prefix("00") {
        rest.to_owned()
    } else if default_calling_code.is_empty() {
        return Err(PhoneError::NoCountryCode);
    } else {
        format!("{default_calling_code}{digits}")
    };
    if !(7..=15).contains(&e164.len()) || e164.starts_with('0') {
        return Err(PhoneError::BadLength);
    }
    Ok(e164)
}

/// A default calling code for an import: 1 to 3 digits, not starting with 0.
pub fn is_calling_code(code: &str) -> bool {
    (1..=3).contains(&code.len())
        && code.bytes().all(|b| b.is_ascii_digit())
        && !code.starts_with('0')
}

/// Most tags one contact carries.
pub const MAX_TAGS: usize = 50;
/// Most attributes one contact carries.
pub const MAX_ATTRIBUTES: usize = 50;
/// Longest attribute value, in bytes.
pub const MAX_ATTRIBUTE_VALUE: usize = 512;

/// A tag: 1 to 64 letters, digits, `_`, `-`, `.` or `:`; compared in lower case.
pub fn normalize_tag(tag: &str) -> Option<String> {
    let tag = tag.trim();
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':');
    ((1..=64).contains(&tag.len()) && tag.chars().all(allowed)).then(|| tag.to_ascii_lowercase())
}

/// An attribute's key: 1 to 64 letters, digits or `_`, starting with a letter.
pub fn is_attribute_key(key: &str) -> bool {
    (1..=64).contains(&key.len())
        && key.starts_with(|c: char| c.is_ascii_alphabetic())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A contact's name or an opt-in's source: at most 256 bytes, no control characters.
pub fn is_label(text: &str) -> bool {
    text.len() <= 256 && !text.chars().any(char::is_control)
}

/// Proof of an opt-in (the text the user agreed to, a form's id): at most 2,048 bytes.
pub fn is_proof(text: &str) -> bool {
    text.len() <= 2_048
}

/// Parses an opt-in time: RFC 3339 (`2026-05-01T10:00:00Z`, an offset, or a date alone at
/// midnight UTC) or Unix seconds. Times after `now` are refused: consent is recorded, not
/// announced.
pub fn parse_time(text: &str, now: Timestamp) -> Option<Timestamp> {
    let text = text.trim();
    let at = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<i64>().ok()?.checked_mul(1_000_000)?
    } else {
        parse_rfc3339(text)?
    };
    (at > 0 && at <= now.micros()).then_some(Timestamp::from_micros(at))
}

fn parse_rfc3339(text: &str) -> Option<i64> {
    let num = |s: &str| -> Option<i64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (date, time) = match text.split_once(['T', 't', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let mut parts = date.splitn(3, '-');
    let (y, m, d) = (
        num(parts.next()?)?,
        num(parts.next()?)?,
        num(parts.next()?)?,
    );
    if date.len() != 10 || !(1..=12).contains(&m) || !(1..=days_in_month(y, m)).contains(&d) {
        return None;
    }
    let mut seconds = crate::time::days_from_civil(y, m, d) * 86_400;
    let mut micros = 0;
    if let Some(time) = time {
        let (clock, offset) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
            (clock, 0)
        } else {
            let at = time.rfind(['+', '-'])?;
            let (clock, zone) = time.split_at(at);
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let (h, mi) = zone[1..].split_once(':')?;
            let (h, mi) = (num(h)?, num(mi)?);
            if h > 23 || mi > 59 {
                return None;
            }
            (clock, sign * (h * 3_600 + mi * 60))
        };
        let (whole, fraction) = clock.split_once('.').unwrap_or((clock, ""));
        let mut hms = whole.splitn(3, ':');
        let (h, mi, s) = (num(hms.next()?)?, num(hms.next()?)?, num(hms.next()?)?);
        if whole.len() != 8 || h > 23 || mi > 59 || s > 60 {
            return None;
        }
        if !fraction.is_empty() {
            if fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let padded = format!("{fraction:0<6}");
            micros = num(&padded[..6])?;
        }
        seconds += h * 3_600 + mi * 60 + s.min(59) - offset;
    }
    seconds.checked_mul(1_000_000)?.checked_add(micros)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// One record of a CSV file and the line it starts on (1 is the first line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvRecord {
    pub line: u64,
    pub fields: Vec<String>,
}

/// Why a CSV stream cannot be read on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CsvError {
    #[error("line {line}: the record is longer than {max} bytes (an unclosed quote?)")]
    RecordTooLong { line: u64, max: usize },
    #[error("line {line}: the record is not UTF-8")]
    NotUtf8 { line: u64 },
    #[error("line {line}: a quoted field is not closed at the end of the file")]
    UnclosedQuote { line: u64 },
}

/// Longest record a [`CsvSplitter`] holds while it waits for its end.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// Reads RFC 4180 CSV from chunks cut anywhere (inside a field, a quote or a UTF-8
/// character): quoted fields with `""` escapes and line breaks, CRLF or LF, a UTF-8 byte order
/// mark at the start. It holds only the record being read, so a file of any size streams.
#[derive(Debug, Default)]
pub struct CsvSplitter {
    record: Vec<u8>,
    fields: Vec<String>,
    field: Vec<u8>,
    in_quotes: bool,
    /// The previous byte inside quotes was a quote: either an escape or the closing one.
    quote_pending: bool,
    line: u64,
    record_line: u64,
    started: bool,
    bom_checked: usize,
}

impl CsvSplitter {
    pub fn new() -> Self {
        Self {
            line: 1,
            record_line: 1,
            ..Self::default()
        }
    }

    /// Takes the next chunk; returns the records it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<CsvRecord>, CsvError> {
        let mut out = Vec::new();
        for &b in chunk {
            if self.bom_checked < 3 {
                // Skips EF BB BF at the very start; anything else is data.
                const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];
                if b == BOM[self.bom_checked] && self.record.len() == self.bom_checked {
                    self.record.push(b);
                    self.bom_checked += 1;
                    if self.bom_checked == 3 {
                        self.record.clear();
                    }
                    continue;
                }
                let held = std::mem::take(&mut self.record);
                self.bom_checked = 3;
                for h in held {
                    self.byte(h, &mut out)?;
                }
            }
            self.byte(b, &mut out)?;
        }
        Ok(out)
    }

    /// Ends the stream: the last record when the file does not end with a line break.
    pub fn finish(mut self) -> Result<Option<CsvRecord>, CsvError> {
        if self.bom_checked < 3 {
            // A file shorter than a byte order mark: what it holds is data.
            let held = std::mem::take(&mut self.record);
            self.bom_checked = 3;
            for h in held {
                self.byte(h, &mut Vec::new())?;
            }
        }
        if self.in_quotes && !self.quote_pending {
            return Err(CsvError::UnclosedQuote {
                line: self.record_line,
            });
        }
        if !self.started {
            return Ok(None);
        }
        self.end_field()?;
        Ok(Some(self.end_record()))
    }

    fn byte(&mut self, b: u8, out: &mut Vec<CsvRecord>) -> Result<(), CsvError> {
        self.record.push(b);
        if self.record.len() > MAX_RECORD_BYTES {
            return Err(CsvError::RecordTooLong {
                line: self.record_line,
                max: MAX_RECORD_BYTES,
            });
        }
        if self.in_quotes {
            if self.quote_pending {
                self.quote_pending = false;
                if b == b'"' {
                    self.field.push(b'"');
                    return Ok(());
                }
                self.in_quotes = false;
                // Falls through: the byte after a closing quote is read as unquoted.
            } else {
                if b == b'"' {
                    self.quote_pending = true;
                } else {
                    if b == b'\n' {
                        self.line += 1;
                    }
                    self.field.push(b);
                }
                return Ok(());
            }
        }
        match b {
            b'"' if self.field.is_empty() => {
                self.in_quotes = true;
                self.started = true;
            }
            b',' => {
                self.started = true;
                self.end_field()?;
            }
            b'\n' => {
                self.line += 1;
                if self.field.last() == Some(&b'\r') {
                    self.field.pop();
                }
                if self.started || !self.field.is_empty() {
                    self.end_field()?;
                    out.push(self.end_record());
                } else {
                    // An empty line is no record.
                    self.record.clear();
                    self.record_line = self.line;
                }
            }
            _ => {
                // A lone CR (of a CRLF) does not make an empty line a record.
                self.started |= b != b'\r';
                self.field.push(b);
            }
        }
        Ok(())
    }

    fn end_field(&mut self) -> Result<(), CsvError> {
        let bytes = std::mem::take(&mut self.field);
        let text = String::from_utf8(bytes).map_err(|_| CsvError::NotUtf8 {
            line: self.record_line,
        })?;
        self.fields.push(text);
        Ok(())
    }

    fn end_record(&mut self) -> CsvRecord {
        let record = CsvRecord {
            line: self.record_line,
            fields: std::mem::take(&mut self.fields),
        };
        self.record.clear();
        self.started = false;
        self.record_line = self.line;
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn phones_are_normalised_to_e164_digits() {
        assert_eq!(
            normalize_phone("+39 347 000 0001", ""),
            Ok("393470000001".into())
        );
        assert_eq!(
            normalize_phone("0039-347-0000001", ""),
            Ok("393470000001".into())
        );
        assert_eq!(
            normalize_phone("(347) 000.0001", "39"),
            Ok("393470000001".into())
        );
        assert_eq!(
            normalize_phone("+1 (415) 555-0100", "39"),
            Ok("14155550100".into())
        );
        assert_eq!(normalize_phone("  ", "39"), Err(PhoneError::Empty));
        assert_eq!(
            normalize_phone("347 000 0001", ""),
            Err(PhoneError::NoCountryCode)
        );
        assert_eq!(
            normalize_phone("+39 347 abc", ""),
            Err(PhoneError::BadCharacter)
        );
        assert_eq!(normalize_phone("+12345", ""), Err(PhoneError::BadLength));
        assert_eq!(
            normalize_phone("+1234567890123456", ""),
            Err(PhoneError::BadLength)
        );
        assert_eq!(
            normalize_phone("+0393470000001", ""),
            Err(PhoneError::BadLength)
        );
    }

    #[test]
    fn calling_codes_tags_and_keys() {
        assert!(is_calling_code("39") && is_calling_code("1") && is_calling_code("352"));
        assert!(!is_calling_code("") && !is_calling_code("039") && !is_calling_code("1234"));
        assert_eq!(normalize_tag(" VIP "), Some("vip".into()));
        assert_eq!(normalize_tag("promo:2026-05"), Some("promo:2026-05".into()));
        assert_eq!(normalize_tag(""), None);
        assert_eq!(normalize_tag("two words"), None);
        assert_eq!(normalize_tag(&"x".repeat(65)), None);
        assert!(is_attribute_key("city") && is_attribute_key("first_order_2026"));
        assert!(!is_attribute_key("1st") && !is_attribute_key("a-b") && !is_attribute_key(""));
        assert!(is_label("Giulia Rossi") && !is_label("a\nb"));
    }

    #[test]
    fn opt_in_times_are_rfc3339_or_unix_seconds_and_never_in_the_future() {
        let now = Timestamp::from_micros(1_800_000_000_000_000);
        let at = |micros: i64| Some(Timestamp::from_micros(micros));
        assert_eq!(parse_time("1700000000", now), at(1_700_000_000_000_000));
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z", now),
            at(1_700_000_000_000_000)
        );
        assert_eq!(
            parse_time("2023-11-14T23:13:20+01:00", now),
            at(1_700_000_000_000_000)
        );
        assert_eq!(
            parse_time("2023-11-14T22:13:20.25Z", now),
            at(1_700_000_000_250_000)
        );
        assert_eq!(parse_time("2024-02-29", now), at(1_709_164_800_000_000));
        assert_eq!(parse_time("2023-02-29", now), None);
        assert_eq!(parse_time("2023-13-01", now), None);
        assert_eq!(parse_time("2023-11-14T25:00:00Z", now), None);
        assert_eq!(parse_time("yesterday", now), None);
        assert_eq!(parse_time("2099-01-01", now), None);
        assert_eq!(parse_time("", now), None);
    }

    fn read_all(chunks: &[&[u8]]) -> Result<Vec<CsvRecord>, CsvError> {
        let mut splitter = CsvSplitter::new();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(splitter.push(c)?);
        }
        out.extend(splitter.finish()?);
        Ok(out)
    }

    fn rec(line: u64, fields: &[&str]) -> CsvRecord {
        CsvRecord {
            line,
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
        }
    }

    #[test]
    fn csv_quotes_line_breaks_and_empty_lines() {
        let file = b"\xEF\xBB\xBFphone,name\r\n+39 1,\"Rossi, Giulia\"\r\n\r\n+39 2,\"say \"\"hi\"\"\nthere\"\n+39 3,\n+39 4";
        assert_eq!(
            read_all(&[file]).unwrap(),
            vec![
                rec(1, &["phone", "name"]),
                rec(2, &["+39 1", "Rossi, Giulia"]),
                rec(4, &["+39 2", "say \"hi\"\nthere"]),
                rec(6, &["+39 3", ""]),
                rec(7, &["+39 4"]),
            ]
        );
    }

    #[test]
    fn csv_errors_name_their_line() {
        assert_eq!(
            read_all(&[b"a\n\"open\nb"]),
            Err(CsvError::UnclosedQuote { line: 2 })
        );
        assert_eq!(
            read_all(&[b"a\n\xFF\xFE,b\n"]),
            Err(CsvError::NotUtf8 { line: 2 })
        );
        let long = vec![b'x'; MAX_RECORD_BYTES + 1];
        assert_eq!(
            read_all(&[&long]),
            Err(CsvError::RecordTooLong {
                line: 1,
                max: MAX_RECORD_BYTES
            })
        );
        assert_eq!(read_all(&[b""]), Ok(vec![]));
        assert_eq!(read_all(&[b"\xEF\xBB"]), Err(CsvError::NotUtf8 { line: 1 }));
    }

    proptest! {
        /// However a file is cut into chunks, the same records come out.
        #[test]
        fn any_chunking_reads_the_same_records(
            rows in proptest::collection::vec(
                proptest::collection::vec("[a-z0-9 ,\"\né]{0,8}", 1..4), 0..12),
            cuts in proptest::collection::vec(0usize..400, 0..8),
        ) {
            let mut file = String::from("\u{feff}");
            for row in &rows {
                let fields: Vec<String> = row
                    .iter()
                    .map(|f| format!("\"{}\"", f.replace('"', "\"\"")))
                    .collect();
                file.push_str(&fields.join(","));
                file.push_str("\r\n");
            }
            let bytes = file.as_bytes();
            let whole = read_all(&[bytes]).unwrap();
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for p in points {
                chunks.push(&bytes[last..p]);
                last = p;
            }
            chunks.push(&bytes[last..]);
            prop_assert_eq!(read_all(&chunks).unwrap(), whole.clone());
            let expected: Vec<Vec<String>> = rows.clone();
            prop_assert_eq!(whole.into_iter().map(|r| r.fields).collect::<Vec<_>>(), expected);
        }
    }
}
