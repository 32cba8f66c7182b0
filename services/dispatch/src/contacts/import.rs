//! Reading an ImportContacts file (docs/rules.md §11): records from the streaming CSV reader,
//! the header's columns, each row validated with `domain::contacts` (the first fault rejects
//! it, naming the column), a user key already seen earlier in the file reported as a
//! duplicate of that line, an opt-out noted and still imported (with its opt-in withdrawn).
//! Valid rows leave in batches; the reader holds one batch and a digest of each key seen.

use std::collections::{BTreeMap, HashMap};

use finestra_domain::Timestamp;
use finestra_domain::contacts::{self, CsvError, CsvRecord, CsvSplitter};

use super::merge::{Change, OptIn};

/// One row as the file gives it, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub line: u64,
    pub user_key: String,
    pub name: String,
    pub tags: Vec<String>,
    pub attributes: BTreeMap<String, String>,
    pub opt_in: Option<(String, Timestamp, String)>,
    pub opted_out: bool,
}

/// A row the report names: rejected, duplicate or opted out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Noted {
    pub line: u64,
    pub phone: String,
    pub outcome: &'static str,
    pub field: String,
    pub reason: &'static str,
    pub message: String,
}

/// The header's columns, by position.
pub struct Columns {
    phone: usize,
    name: Option<usize>,
    tags: Option<usize>,
    opt_in_source: Option<usize>,
    opt_in_at: Option<usize>,
    opt_in_proof: Option<usize>,
    opted_out: Option<usize>,
    attributes: Vec<(usize, String)>,
    width: usize,
}

impl Columns {
    pub fn of(header: &CsvRecord) -> Result<Self, String> {
        let mut c = Columns {
            phone: usize::MAX,
            name: None,
            tags: None,
            opt_in_source: None,
            opt_in_at: None,
            opt_in_proof: None,
            opted_out: None,
            attributes: Vec::new(),
            width: header.fields.len(),
        };
        for (i, raw) in header.fields.iter().enumerate() {
            let col = raw.trim().to_ascii_lowercase();
            match col.as_str() {
                "phone" => c.phone = i,
                "name" => c.name = Some(i),
                "tags" => c.tags = Some(i),
                "opt_in_source" => c.opt_in_source = Some(i),
                "opt_in_at" => c.opt_in_at = Some(i),
                "opt_in_proof" => c.opt_in_proof = Some(i),
                "opted_out" => c.opted_out = Some(i),
                other => match other.strip_prefix("attr.") {
                    Some(key) if contacts::is_attribute_key(key) => {
                        c.attributes.push((i, key.to_owned()))
                    }
                    _ => return Err(format!("line 1: unknown column {raw:?}")),
                },
            }
        }
        if c.phone == usize::MAX {
            return Err("line 1: the header has no phone column".to_owned());
        }
        Ok(c)
    }
}

/// Validates one record; the first fault rejects the row.
pub fn row_of(
    record: &CsvRecord,
    columns: &Columns,
    calling_code: &str,
    now: Timestamp,
) -> Result<Row, Noted> {
    let field = |i: Option<usize>| {
        i.and_then(|i| record.fields.get(i))
            .map_or("", |s| s.trim())
    };
    let phone = field(Some(columns.phone)).to_owned();
    let reject = |column: &str, reason: &'static str, message: String| Noted {
        line: record.line,
        phone: phone.clone(),
        outcome: "rejected",
        field: column.to_owned(),
        reason,
        message,
    };
    if record.fields.len() > columns.width {
        return Err(reject(
            "",
            "TOO_MANY_COLUMNS",
            format!(
                "{} fields, the header names {}",
                record.fields.len(),
                columns.width
            ),
        ));
    }
    let user_key = contacts::normalize_phone(&phone, calling_code)
        .map_err(|e| reject("phone", "INVALID_PHONE", e.to_string()))?;
    let name = field(columns.name).to_owned();
    if !contacts::is_label(&name) {
        return Err(reject(
            "name",
            "INVALID_NAME",
            "a name has at most 256 bytes and no control characters".into(),
        ));
    }
    let mut tags = Vec::new();
    for t in field(columns.tags)
        .split(';')
        .filter(|t| !t.trim().is_empty())
    {
        tags.push(contacts::normalize_tag(t).ok_or_else(|| {
            reject(
                "tags",
                "INVALID_TAG",
                format!("{t:?}: 1-64 letters, digits, '_', '-', '.', ':'"),
            )
        })?);
    }
    tags.sort();
    tags.dedup();
    if tags.len() > contacts::MAX_TAGS {
        return Err(reject(
            "tags",
            "INVALID_TAG",
            format!("at most {} tags", contacts::MAX_TAGS),
        ));
    }
    let mut attributes = BTreeMap::new();
    for (i, key) in &columns.attributes {
        let value = field(Some(*i));
        if value.len() > contacts::MAX_ATTRIBUTE_VALUE {
            return Err(reject(
                &format!("attr.{key}"),
                "INVALID_ATTRIBUTE",
                "too long".into(),
            ));
        }
        if !value.is_empty() {
            attributes.insert(key.clone(), value.to_owned());
        }
    }
    let opted_out = match field(columns.opted_out).to_ascii_lowercase().as_str() {
        "" | "false" | "no" | "0" => false,
        "true" | "yes" | "1" => true,
        other => {
            return Err(reject(
                "opted_out",
                "INVALID_OPT_IN",
                format!("{other:?} is not true or false"),
            ));
        }
    };
    let source = field(columns.opt_in_source);
    let at = field(columns.opt_in_at);
    let opt_in = match (source.is_empty(), at.is_empty()) {
        (true, true) => None,
        (false, false) if !opted_out => {
            let at = contacts::parse_time(at, now).ok_or_else(|| {
                reject(
                    "opt_in_at",
                    "INVALID_OPT_IN",
                    "RFC 3339 or Unix seconds, not in the future".into(),
                )
            })?;
            if !contacts::is_label(source) || !contacts::is_proof(field(columns.opt_in_proof)) {
                return Err(reject(
                    "opt_in_source",
                    "INVALID_OPT_IN",
                    "too long or control characters".into(),
                ));
            }
            Some((
                source.to_owned(),
                at,
                field(columns.opt_in_proof).to_owned(),
            ))
        }
        (false, false) => None,
        _ => {
            return Err(reject(
                "opt_in_at",
                "INVALID_OPT_IN",
                "an opt-in needs both its source and its time".into(),
            ));
        }
    };
    Ok(Row {
        line: record.line,
        user_key,
        name,
        tags,
        attributes,
        opt_in,
        opted_out,
    })
}

/// Rows applied at once.
pub const BATCH: usize = 1_000;

impl Row {
    /// The change this row makes to its contact.
    pub fn change(&self, now: Timestamp) -> Change {
        Change {
            name: self.name.clone(),
            attributes: self.attributes.clone(),
            add_tags: self.tags.clone(),
            remove_tags: Vec::new(),
            opt_in: self.opt_in.as_ref().map(|(source, at, proof)| OptIn {
                source: source.clone(),
                at: *at,
                proof: proof.clone(),
            }),
            opted_out_at: self.opted_out.then_some(now),
            block: None,
            resumed_at: None,
        }
    }
}

/// A user key's first 128 bits of SHA-256: two keys of one file never share it in practice
/// (about one chance in 10^26 for a million keys).
fn key_digest(user_key: &str) -> u128 {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(user_key.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&d[..16]);
    u128::from_le_bytes(first)
}

/// Reads a whole import a chunk at a time.
pub struct Reader {
    splitter: Option<CsvSplitter>,
    columns: Option<Columns>,
    calling_code: String,
    now: Timestamp,
    /// The line each user key first appeared on, by the key's digest: 16 bytes a row instead
    /// of the key (a million rows' keys took over 200 MiB as strings).
    seen: HashMap<u128, u64>,
    /// Valid rows not yet applied.
    pub batch: Vec<Row>,
    /// Rows the report names, not yet recorded.
    pub noted: Vec<Noted>,
    /// Data rows read.
    pub rows: u64,
}

impl Reader {
    pub fn new(calling_code: &str, now: Timestamp) -> Self {
        Self {
            splitter: Some(CsvSplitter::new()),
            columns: None,
            calling_code: calling_code.to_owned(),
            now,
            seen: HashMap::new(),
            batch: Vec::new(),
            noted: Vec::new(),
            rows: 0,
        }
    }

    /// Reads a chunk. An error is the file's (malformed CSV, a bad header): the import fails.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), String> {
        let Some(splitter) = self.splitter.as_mut() else {
            return Err("the file was already finished".to_owned());
        };
        let records = splitter.push(chunk).map_err(|e: CsvError| e.to_string())?;
        for r in records {
            self.record(&r)?;
        }
        Ok(())
    }

    /// Ends the file.
    pub fn finish(&mut self) -> Result<(), String> {
        let Some(splitter) = self.splitter.take() else {
            return Ok(());
        };
        if let Some(r) = splitter.finish().map_err(|e| e.to_string())? {
            self.record(&r)?;
        }
        if self.columns.is_none() {
            return Err(
                "the file is empty: it needs a header line naming a phone column".to_owned(),
            );
        }
        Ok(())
    }

    fn record(&mut self, r: &CsvRecord) -> Result<(), String> {
        let Some(columns) = &self.columns else {
            self.columns = Some(Columns::of(r)?);
            return Ok(());
        };
        self.rows += 1;
        match row_of(r, columns, &self.calling_code, self.now) {
            Err(noted) => self.noted.push(noted),
            Ok(row) => {
                let digest = key_digest(&row.user_key);
                if let Some(first) = self.seen.get(&digest) {
                    self.noted.push(Noted {
                        line: row.line,
                        phone: r.fields.get(columns.phone).cloned().unwrap_or_default(),
                        outcome: "duplicate",
                        field: "phone".to_owned(),
                        reason: "DUPLICATE",
                        message: format!("the same user as line {first}"),
                    });
                    return Ok(());
                }
                self.seen.insert(digest, row.line);
                if row.opted_out {
                    self.noted.push(Noted {
                        line: row.line,
                        phone: r.fields.get(columns.phone).cloned().unwrap_or_default(),
                        outcome: "opted_out",
                        field: "opted_out".to_owned(),
                        reason: "OPTED_OUT",
                        message: "imported without marketing consent".to_owned(),
                    });
                }
                self.batch.push(row);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_secs(1_800_000_000);

    fn read(file: &str) -> Result<Reader, String> {
        let mut reader = Reader::new("39", NOW);
        reader.push(file.as_bytes())?;
        reader.finish()?;
        Ok(reader)
    }

    #[test]
    fn rows_are_validated_deduplicated_and_noted_by_line() {
        let file = "phone,name,tags,opt_in_source,opt_in_at,opted_out,attr.city\n\
                    +39 347 000 0001,Giulia,vip;Promo,web,2026-01-02T10:00:00Z,,Roma\n\
                    347 000 0002,Marco,,,,,\n\
                    not a number,X,,,,,\n\
                    0039 347 000 0001,Giulia again,,,,,\n\
                    +39 347 000 0003,Anna,bad tag,,,,\n\
                    +39 347 000 0004,Luca,,web,,,\n\
                    +39 347 000 0005,Sara,,,,true,\n";
        let r = read(file).unwrap();
        assert_eq!(r.rows, 7);
        let users: Vec<&str> = r.batch.iter().map(|b| b.user_key.as_str()).collect();
        assert_eq!(users, vec!["393470000001", "393470000002", "393470000005"]);
        assert_eq!(r.batch[0].tags, vec!["promo".to_owned(), "vip".to_owned()]);
        assert_eq!(
            r.batch[0].attributes.get("city").map(String::as_str),
            Some("Roma")
        );
        assert!(r.batch[0].opt_in.is_some());
        assert!(r.batch[2].opted_out);
        let noted: Vec<(u64, &str, &str, &str)> = r
            .noted
            .iter()
            .map(|n| (n.line, n.outcome, n.field.as_str(), n.reason))
            .collect();
        assert_eq!(
            noted,
            vec![
                (4, "rejected", "phone", "INVALID_PHONE"),
                (5, "duplicate", "phone", "DUPLICATE"),
                (6, "rejected", "tags", "INVALID_TAG"),
                (7, "rejected", "opt_in_at", "INVALID_OPT_IN"),
                (8, "opted_out", "opted_out", "OPTED_OUT"),
            ]
        );
    }

    #[test]
    fn a_bad_header_or_file_fails_the_import() {
        assert!(read("").is_err());
        assert!(read("name\nGiulia\n").is_err());
        assert!(read("phone,colour\n+393470000001,red\n").is_err());
        assert!(read("phone\n\"+39347").is_err());
        assert_eq!(read("phone\n").unwrap().rows, 0);
    }
}
