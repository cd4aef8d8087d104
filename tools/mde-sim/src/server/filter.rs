//! The OData `$filter` subset `GET /api/machineactions` accepts: clauses `field eq 'value'` on
//! `id`, `status`, `machineId`, `type` and `requestor`, and `creationDateTimeUtc` compared with
//! `eq`, `ge`, `gt`, `le` or `lt` to a bare date-time (`2026-11-29T23:00:00Z`), joined by `and`
//! (binds tighter) and `or`, with `''` for a quote inside a value; strings compare without regard
//! to case.
//!
//! Separate because it is a small parser with its own tests, and nothing else in the list handler
//! needs to know OData.

use serde_json::Value;

/// One clause: a string field equal to a value, or the creation time compared to an instant.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Clause {
    Eq(String, String),
    Created(std::cmp::Ordering, bool, time::OffsetDateTime),
}

/// A parsed filter: any of the alternatives, each all of its clauses.
pub(super) type Filter = Vec<Vec<Clause>>;

fn instant(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// Whether an action entity passes `filter`.
pub(super) fn matches(filter: &Filter, entity: &Value) -> bool {
    filter.iter().any(|all| {
        all.iter().all(|clause| match clause {
            Clause::Eq(field, want) => entity
                .get(field)
                .and_then(Value::as_str)
                .is_some_and(|got| got.eq_ignore_ascii_case(want)),
            Clause::Created(order, or_equal, at) => entity
                .get("creationDateTimeUtc")
                .and_then(Value::as_str)
                .and_then(instant)
                .is_some_and(|created| {
                    let o = created.cmp(at);
                    o == *order || (*or_equal && o == std::cmp::Ordering::Equal)
                }),
        })
    })
}

/// `$filter` clauses `field eq 'value'`, joined by `and` (binds tighter) and `or`.
pub(super) fn parse_filter(filter: &str) -> Result<Filter, String> {
    let mut any = Vec::new();
    for alt in split_keyword(filter, "or") {
        let mut all = Vec::new();
        for clause in split_keyword(&alt, "and") {
            let clause = clause.trim();
            let mut parts = clause.splitn(3, ' ');
            let (Some(field), Some(op), Some(value)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("cannot parse filter clause '{clause}'"));
            };
            let value = value.trim();
            if field.eq_ignore_ascii_case("creationDateTimeUtc") {
                use std::cmp::Ordering::{Equal, Greater, Less};
                let (order, or_equal) = match op.to_ascii_lowercase().as_str() {
                    "eq" => (Equal, true),
                    "ge" => (Greater, true),
                    "gt" => (Greater, false),
                    "le" => (Less, true),
                    "lt" => (Less, false),
                    other => return Err(format!("operator '{other}' is not supported")),
                };
                let at = instant(value).ok_or_else(|| {
                    format!("'{value}' is not a date-time (2026-01-01T00:00:00Z)")
                })?;
                all.push(Clause::Created(order, or_equal, at));
                continue;
            }
            if !op.eq_ignore_ascii_case("eq") {
                return Err(format!("operator '{op}' is not supported (only eq)"));
            }
            let value = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .ok_or_else(|| format!("value in '{clause}' must be quoted"))?;
            let field = match field.to_ascii_lowercase().as_str() {
                "id" => "id",
                "status" => "status",
                "machineid" => "machineId",
                "type" => "type",
                "requestor" => "requestor",
                other => return Err(format!("cannot filter on '{other}'")),
            };
            all.push(Clause::Eq(field.to_string(), value.replace("''", "'")));
        }
        any.push(all);
    }
    Ok(any)
}

fn split_keyword(s: &str, kw: &str) -> Vec<String> {
    // Split on ` kw ` outside quotes, without regard to case.
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quote = false;
    let chars: Vec<char> = s.chars().collect();
    let pat: Vec<char> = format!(" {kw} ").chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            in_quote = !in_quote;
        }
        if !in_quote
            && i + pat.len() <= chars.len()
            && chars[i..i + pat.len()]
                .iter()
                .zip(&pat)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
        {
            out.push(std::mem::take(&mut cur));
            i += pat.len();
            continue;
        }
        cur.push(c);
        i += 1;
    }
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_parses_and_or() {
        let f =
            parse_filter("machineId eq 'abc' and status eq 'Pending' or type eq 'LiveResponse'")
                .unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(
            f[0],
            vec![
                Clause::Eq("machineId".into(), "abc".into()),
                Clause::Eq("status".into(), "Pending".into())
            ]
        );
        assert!(parse_filter("machineId gt 'a'").is_err());
        assert!(parse_filter("foo eq 'a'").is_err());
        let q = parse_filter("requestor eq 'a or b'").unwrap();
        assert_eq!(
            q,
            vec![vec![Clause::Eq("requestor".into(), "a or b".into())]]
        );
    }

    #[test]
    fn creation_time_compares_as_an_instant() {
        let f =
            parse_filter("type eq 'LiveResponse' and creationDateTimeUtc ge 2026-11-29T23:00:00Z")
                .unwrap();
        let at = |t: &str| serde_json::json!({"type": "LiveResponse", "creationDateTimeUtc": t});
        assert!(matches(&f, &at("2026-11-29T23:00:00Z")));
        assert!(matches(&f, &at("2026-11-29T23:00:00.5Z")));
        assert!(!matches(&f, &at("2026-11-29T22:59:59.9Z")));
        let lt = parse_filter("creationDateTimeUtc lt 2026-11-29T23:00:00Z").unwrap();
        assert!(matches(&lt, &at("2026-11-29T22:00:00Z")));
        assert!(!matches(&lt, &at("2026-11-29T23:00:00Z")));
        assert!(parse_filter("creationDateTimeUtc ge yesterday").is_err());
        assert!(parse_filter("creationDateTimeUtc ne 2026-11-29T23:00:00Z").is_err());
    }
}
