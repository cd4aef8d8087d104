//! The OData `$filter` subset `GET /api/machineactions` accepts: clauses `field eq 'value'` on
//! `id`, `status`, `machineId`, `type` and `requestor`, joined by `and` (binds tighter) and `or`,
//! with `''` for a quote inside a value; values compare without regard to case.
//!
//! Separate because it is a small parser with its own tests, and nothing else in the list handler
//! needs to know OData.

use serde_json::Value;

/// A parsed filter: any of the alternatives, each all of its `(field, value)` clauses.
pub(super) type Filter = Vec<Vec<(String, String)>>;

/// Whether an action entity passes `filter`.
pub(super) fn matches(filter: &Filter, entity: &Value) -> bool {
    filter.iter().any(|all| {
        all.iter().all(|(field, want)| {
            entity
                .get(field)
                .and_then(Value::as_str)
                .is_some_and(|got| got.eq_ignore_ascii_case(want))
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
            if !op.eq_ignore_ascii_case("eq") {
                return Err(format!("operator '{op}' is not supported (only eq)"));
            }
            let value = value.trim();
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
            all.push((field.to_string(), value.replace("''", "'")));
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
                ("machineId".into(), "abc".into()),
                ("status".into(), "Pending".into())
            ]
        );
        assert!(parse_filter("machineId gt 'a'").is_err());
        assert!(parse_filter("foo eq 'a'").is_err());
        let q = parse_filter("requestor eq 'a or b'").unwrap();
        assert_eq!(q, vec![vec![("requestor".into(), "a or b".into())]]);
    }
}
