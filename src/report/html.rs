//! HTML pieces: escaping, the page frame (styles inline, so a page opens from disk with no
//! network) and sortable tables.

use std::fmt::Write;

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A number for a table: fixed decimals, `–` for none.
pub fn number(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        Some(v) => v.to_string(),
        None => "–".to_string(),
    }
}

/// A value with three significant digits (activations range from 1e-3 to 1e3 across models).
pub fn significant(value: f64) -> String {
    let a = value.abs();
    if a == 0.0 || !a.is_finite() {
        return value.to_string();
    }
    if !(0.01..1000.0).contains(&a) {
        return format!("{value:.2e}");
    }
    let decimals = (2 - a.log10().floor() as i64).max(0) as usize;
    format!("{value:.decimals$}")
}

const STYLE: &str = r#"
body{font-family:system-ui,sans-serif;margin:0;color:#1a1a1a;background:#fafafa}
header{background:#22313f;color:#fff;padding:10px 24px}
header a{color:#cfe3ff;margin-right:18px;text-decoration:none}
header .study{font-weight:600;margin-right:24px}
main{padding:12px 24px 40px;max-width:1400px}
h1{font-size:22px;margin:12px 0}
h2{font-size:18px;margin:26px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}
p.note{color:#555;max-width:900px}
.partial{background:#fff4d6;border:1px solid #e0b94f;padding:8px 14px;margin:10px 0;border-radius:4px}
.partial li{margin:2px 0}
table{border-collapse:collapse;font-size:13px;background:#fff}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
th.sortable{cursor:pointer;user-select:none;background:#f0f3f6}
th.sortable:after{content:" ⇅";color:#999}
.plots{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.plot{background:#fff;border:1px solid #e4e4e4}
.examples{display:grid;grid-template-columns:repeat(auto-fill,minmax(132px,1fr));gap:10px}
.example{background:#fff;border:1px solid #e4e4e4;padding:4px;font-size:11px}
.example img{display:block;width:128px;height:128px;object-fit:contain;margin:auto}
.example .value{font-weight:600}
.example .missing{width:128px;height:128px;display:flex;align-items:center;justify-content:center;color:#999;background:#f3f3f3;margin:auto}
.matches{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:14px}
.match{background:#fff;border:1px solid #ddd;padding:8px}
.match .examples{grid-template-columns:repeat(auto-fill,minmax(92px,1fr))}
.match .example img,.match .example .missing{width:88px;height:88px}
ol.captions li{margin:2px 0;font-size:13px}
"#;

/// Sorts a table by a clicked header: numbers by value (`data-sort` when given), text
/// alphabetically; a second click reverses.
const SORT_SCRIPT: &str = r#"
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, column) {
    th.classList.add('sortable');
    th.addEventListener('click', function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var ascending = th.dataset.order !== 'asc';
      th.dataset.order = ascending ? 'asc' : 'desc';
      var key = function (row) {
        var cell = row.cells[column];
        var text = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent;
        var value = parseFloat(text);
        return isNaN(value) ? text : value;
      };
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        var order = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === 'number' ? -1 : 1);
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"#;

/// A whole page. `root` is the relative path from the page to the report's folder (`""`,
/// `"../"`, ...), for links and images.
pub fn page(study: &str, title: &str, root: &str, body: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{} · {}</title>
<style>{STYLE}</style></head>
<body><header><span class="study">saeshare · {}</span><a href="{root}index.html">wMPPC</a><a href="{root}index.html#sharedness">sharedness</a><a href="{root}training.html">SAE training</a></header>
<main>
{body}
</main>
<script>{SORT_SCRIPT}</script>
</body></html>
"#,
        escape(title),
        escape(study),
        escape(study)
    );
    s
}

/// A table whose columns sort on click. Cells are HTML already; a cell starting with `#` is
/// right-aligned as a number.
pub fn sortable_table(id: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!(r#"<table id="{}" class="sortable"><thead><tr>"#, escape(id));
    for h in headers {
        let _ = write!(s, "<th>{}</th>", escape(h));
    }
    s.push_str("</tr></thead><tbody>");
    for row in rows {
        s.push_str("<tr>");
        for cell in row {
            match cell.strip_prefix('#') {
                Some(number) => {
                    let _ = write!(s, r#"<td class="num">{number}</td>"#);
                }
                None => {
                    let _ = write!(s, "<td>{cell}</td>");
                }
            }
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
    s
}

/// The notice of a partial report: what is missing and which command makes it.
pub fn partial_notice(missing: &[String]) -> String {
    if missing.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        r#"<div class="partial" id="partial"><strong>Partial report:</strong> this run folder is not complete; what exists is shown.<ul>"#,
    );
    for m in missing {
        let _ = write!(s, "<li>{}</li>", escape(m));
    }
    s.push_str("</ul></div>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn significant_keeps_three_digits_at_any_scale() {
        assert_eq!(significant(0.006512), "6.51e-3");
        assert_eq!(significant(0.5123), "0.512");
        assert_eq!(significant(3.643), "3.64");
        assert_eq!(significant(103.56), "104");
        assert_eq!(significant(0.0), "0");
    }

    #[test]
    fn numbers_cells_are_right_aligned() {
        let t = sortable_table("t", &["a", "b"], &[vec!["x".into(), "#1.5".into()]]);
        assert!(t.contains(r#"<td class="num">1.5</td>"#), "{t}");
        assert!(t.contains("<td>x</td>"));
    }
}
