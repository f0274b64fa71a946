//! Aligned text tables for the `--output table` of every verb.

/// Renders rows (the first one is the header) as columns separated by two spaces, each as wide
/// as its widest cell; trailing spaces are trimmed.
pub(crate) fn render<R: AsRef<[String]>>(rows: &[R]) -> String {
    let columns = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.as_ref().get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .as_ref()
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A JSON value as a table cell: strings bare, null as `-`, anything else as JSON.
pub(crate) fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_owned(),
        v => v.to_string(),
    }
}

/// Rows for `items` (a JSON array of objects): a header of the column titles, then one row per
/// item with the field each column names (`a.b` reaches into nested objects).
pub(crate) fn rows(items: &serde_json::Value, cols: &[(&str, &str)]) -> Vec<Vec<String>> {
    let mut rows = vec![cols.iter().map(|(h, _)| (*h).to_owned()).collect()];
    for item in items.as_array().map(Vec::as_slice).unwrap_or_default() {
        rows.push(
            cols.iter()
                .map(|(_, field)| {
                    let v = field.split('.').fold(item, |v, k| &v[k]);
                    cell(v)
                })
                .collect(),
        );
    }
    rows
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn columns_should_align_and_reach_into_nested_fields() {
        let items = json!([
            {"id": 1, "build": {"builder": "a1"}, "note": null},
            {"id": 22, "build": null, "note": "x"}
        ]);
        let out = render(&rows(
            &items,
            &[("ID", "id"), ("BUILDER", "build.builder"), ("NOTE", "note")],
        ));
        assert_eq!(out, "ID  BUILDER  NOTE\n1   a1       -\n22  -        x\n");
    }
}
