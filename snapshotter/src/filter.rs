//! containerd's filter syntax, for `List`: `name==x`, `parent==""`, `kind!=view`,
//! `labels."containerd.io/snapshot.ref"==sha256:…`, `labels.a~=^v1`, a field alone (it is set),
//! several joined by `,` (all must match). A request's filters are alternatives (any matches).

use regex::Regex;

use crate::snapshots::Snapshot;

/// One parsed filter string: every condition must hold.
#[derive(Debug)]
pub struct Filter(Vec<Condition>);

#[derive(Debug)]
struct Condition {
    field: Vec<String>,
    test: Test,
}

#[derive(Debug)]
enum Test {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

impl Filter {
    pub fn parse(text: &str) -> Result<Filter, String> {
        let mut scan = Scanner {
            rest: text.trim_start(),
        };
        let mut conditions = Vec::new();
        loop {
            conditions.push(scan.condition()?);
            scan.skip_space();
            if scan.rest.is_empty() {
                return Ok(Filter(conditions));
            }
            if !scan.eat(",") {
                return Err(format!("filter {text:?}: expected `,` at {:?}", scan.rest));
            }
            scan.skip_space();
        }
    }

    pub fn matches(&self, snapshot: &Snapshot) -> bool {
        self.0.iter().all(|c| c.matches(snapshot))
    }
}

/// Whether `snapshot` passes any of `filters` (all pass when there are none).
pub fn any(filters: &[Filter], snapshot: &Snapshot) -> bool {
    filters.is_empty() || filters.iter().any(|f| f.matches(snapshot))
}

impl Condition {
    fn matches(&self, snapshot: &Snapshot) -> bool {
        let value = match self.field.split_first() {
            Some((first, rest)) => match (first.as_str(), rest) {
                ("name", []) => Some(snapshot.name.as_str()),
                ("parent", []) => Some(snapshot.parent.as_str()),
                ("kind", []) => Some(snapshot.kind.name()),
                ("labels", []) => None,
                ("labels", key) => snapshot.labels.get(&key.join(".")).map(String::as_str),
                _ => None,
            },
            None => None,
        };
        match (&self.test, value) {
            (Test::Present, v) => v.is_some_and(|v| !v.is_empty()),
            (Test::Equal(want), Some(v)) => eq(&self.field, v, want),
            // An absent field equals the empty string, as in containerd (`parent==""`).
            (Test::Equal(want), None) => want.is_empty(),
            (Test::NotEqual(want), v) => !eq(&self.field, v.unwrap_or(""), want),
            (Test::Matches(re), v) => v.is_some_and(|v| re.is_match(v)),
        }
    }
}

/// `kind` compares without case (`Committed`, `committed`); everything else exactly.
fn eq(field: &[String], value: &str, want: &str) -> bool {
    if field.len() == 1 && field[0] == "kind" {
        value.eq_ignore_ascii_case(want)
    } else {
        value == want
    }
}

struct Scanner<'a> {
    rest: &'a str,
}

impl Scanner<'_> {
    fn skip_space(&mut self) {
        self.rest = self.rest.trim_start();
    }

    fn eat(&mut self, token: &str) -> bool {
        match self.rest.strip_prefix(token) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn condition(&mut self) -> Result<Condition, String> {
        let mut field = vec![self.field_part()?];
        while self.eat(".") {
            field.push(self.field_part()?);
        }
        self.skip_space();
        let test = if self.eat("==") {
            Test::Equal(self.value()?)
        } else if self.eat("!=") {
            Test::NotEqual(self.value()?)
        } else if self.eat("~=") {
            let pattern = self.value()?;
            Test::Matches(Regex::new(&pattern).map_err(|e| format!("regex {pattern:?}: {e}"))?)
        } else {
            Test::Present
        };
        Ok(Condition { field, test })
    }

    fn field_part(&mut self) -> Result<String, String> {
        if self.rest.starts_with('"') {
            return self.quoted();
        }
        let end = self
            .rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(self.rest.len());
        if end == 0 {
            return Err(format!("expected a field name at {:?}", self.rest));
        }
        let (part, rest) = self.rest.split_at(end);
        self.rest = rest;
        Ok(part.to_owned())
    }

    fn value(&mut self) -> Result<String, String> {
        self.skip_space();
        if self.rest.starts_with('"') {
            return self.quoted();
        }
        let end = self
            .rest
            .find(|c: char| c == ',' || c.is_whitespace())
            .unwrap_or(self.rest.len());
        let (value, rest) = self.rest.split_at(end);
        self.rest = rest;
        Ok(value.to_owned())
    }

    /// A double-quoted string; `\"` and `\\` are escapes.
    fn quoted(&mut self) -> Result<String, String> {
        let mut out = String::new();
        let mut chars = self.rest.char_indices().skip(1);
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &self.rest[i + 1..];
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, c)) => out.push(c),
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err(format!("unterminated quoted string in {:?}", self.rest))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use super::*;
    use crate::snapshots::Kind;

    fn snapshot(name: &str, parent: &str, kind: Kind, labels: &[(&str, &str)]) -> Snapshot {
        Snapshot {
            name: name.into(),
            id: 1,
            kind,
            parent: parent.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
            usage: None,
        }
    }

    #[test]
    fn the_filter_containerd_sends_after_a_remote_prepare() {
        let f =
            Filter::parse(r#"labels."containerd.io/snapshot.ref"==sha256:111,parent=="""#).unwrap();
        let layer = snapshot(
            "sha256:111",
            "",
            Kind::Committed,
            &[("containerd.io/snapshot.ref", "sha256:111")],
        );
        assert!(f.matches(&layer));
        let other = snapshot("sha256:111", "sha256:000", Kind::Committed, &layer_labels());
        assert!(!f.matches(&other), "a parent that is not empty");
        let unlabeled = snapshot("sha256:111", "", Kind::Committed, &[]);
        assert!(!f.matches(&unlabeled));
    }

    fn layer_labels() -> Vec<(&'static str, &'static str)> {
        vec![("containerd.io/snapshot.ref", "sha256:111")]
    }

    #[test]
    fn fields_operators_and_alternatives() {
        let s = snapshot(
            "default/3/x",
            "p",
            Kind::Active,
            &[("a.b", "v1.2"), ("c", "")],
        );
        let yes = |text: &str| Filter::parse(text).unwrap().matches(&s);
        assert!(yes("name==default/3/x"));
        assert!(yes("kind==active") && yes("kind==Active") && yes("kind!=committed"));
        assert!(yes("labels.a.b==v1.2") && yes(r#"labels."a.b"~=^v1\."#));
        assert!(yes("labels.a.b") && !yes("labels.c") && !yes("labels.missing"));
        assert!(yes("parent!=\"\"") && !yes("parent==\"\""));
        assert!(yes(" name == \"default/3/x\" , kind==active "));
        let filters = [
            Filter::parse("name==nope").unwrap(),
            Filter::parse("parent==p").unwrap(),
        ];
        assert!(any(&filters, &s));
        assert!(any(&[], &s));
    }

    #[test]
    fn bad_filters_are_refused_with_the_reason() {
        for bad in [
            "",
            "==x",
            "name=a",
            "labels.\"open",
            "labels.a~=(",
            "name==a,,",
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_is_refused_without_panicking(text in ".{0,64}") {
            if let Ok(f) = Filter::parse(&text) {
                let _ = f.matches(&snapshot("n", "", Kind::View, &[("k", "v")]));
            }
        }
    }
}
