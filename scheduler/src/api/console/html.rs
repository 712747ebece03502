//! The console's HTML: the page around each view, the cells, and making what comes from the
//! network safe to show (escaped; URLs without their secrets).

use std::time::Duration;

use axum::response::Html;
use shoal_p2p::BySource;

/// The page around `body`; `refresh`: reloaded every few seconds.
pub(super) fn page(title: &str, active: &str, body: &str, refresh: bool) -> Html<String> {
    let nav: String = [
        ("hosts", "/console", "Hosts"),
        ("tasks", "/console/tasks", "Tasks"),
        ("jobs", "/console/jobs", "Preheat jobs"),
    ]
    .iter()
    .map(|(key, href, name)| {
        let class = if *key == active {
            " class=\"active\""
        } else {
            ""
        };
        format!("<a href=\"{href}\"{class}>{name}</a>")
    })
    .collect();
    let signed_in = !active.is_empty();
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} · Shoal</title>{meta}\
         <style>{STYLE}</style></head><body><header><span class=\"brand\">Shoal</span><nav>{nav}</nav>{out}</header>\
         <main>{body}</main></body></html>",
        title = esc(title),
        meta = if refresh {
            "<meta http-equiv=\"refresh\" content=\"5\">"
        } else {
            ""
        },
        nav = if signed_in { nav } else { String::new() },
        out = if signed_in {
            "<form method=\"post\" action=\"/console/logout\"><button>Sign out</button></form>"
        } else {
            ""
        },
    ))
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:0;color:#1d2433;background:#f6f7f9}\
header{display:flex;gap:24px;align-items:center;background:#12355b;color:#fff;padding:10px 20px}\
.brand{font-weight:700;font-size:18px}nav a{color:#cfe0f5;margin-right:16px;text-decoration:none}\
nav a.active{color:#fff;border-bottom:2px solid #fff}header form{margin-left:auto}\
main{padding:16px 20px}table{border-collapse:collapse;background:#fff;width:100%}\
th,td{padding:6px 10px;border-bottom:1px solid #e3e6eb;text-align:left;white-space:nowrap}\
th{background:#eef1f5}tfoot td{font-weight:600}tr.down{color:#8a8f99}\
td[data-bytes]{text-align:right;font-variant-numeric:tabular-nums}.problem{color:#b00020}\
.note,.url{color:#5b6270}td.url{white-space:normal;word-break:break-all;min-width:16em}";

/// The four source cells, each with its exact bytes.
pub(super) fn source_cells(by: &BySource) -> String {
    [
        ("origin", by.origin),
        ("peer", by.peer),
        ("seed", by.seed),
        ("cache", by.cache),
    ]
    .iter()
    .map(|(class, n)| bytes_cell(class, *n))
    .collect()
}

pub(super) fn bytes_cell(class: &str, n: u64) -> String {
    format!(
        "<td class=\"{class}\" data-bytes=\"{n}\" title=\"{n} bytes\">{}</td>",
        human(n)
    )
}

pub(super) fn add(total: &mut BySource, by: &BySource) {
    // Hosts' figures: a wrong one must not overflow the sum.
    total.origin = total.origin.saturating_add(by.origin);
    total.peer = total.peer.saturating_add(by.peer);
    total.seed = total.seed.saturating_add(by.seed);
    total.cache = total.cache.saturating_add(by.cache);
}

pub(super) fn p2p_ratio(by: &BySource) -> String {
    let fetched = by.origin + by.peer + by.seed;
    match fetched {
        0 => "-".into(),
        _ => format!(
            "{:.1} %",
            (by.peer + by.seed) as f64 * 100.0 / fetched as f64
        ),
    }
}

pub(super) fn percent(n: u64, of: u64) -> String {
    match of {
        0 => "-".into(),
        _ => format!("{:.0} %", n as f64 * 100.0 / of as f64),
    }
}

pub(super) fn human(n: u64) -> String {
    shoal_p2p::api::human(n)
}

pub(super) fn ago(d: Duration) -> String {
    match d.as_secs() {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{} h", s / 3600),
    }
}

/// A task id as shown: its first 16 characters (a digest's algorithm and 9 of its hex).
pub(super) fn short(id: &str) -> String {
    match id.char_indices().nth(16) {
        Some((at, _)) => format!("{}…", &id[..at]),
        None => id.to_owned(),
    }
}

/// A URL without what may be a secret: user info, query (a presigned URL's signature) and
/// fragment.
pub(super) fn redacted(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            let had_query = u.query().is_some();
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            let mut shown = u.to_string();
            if had_query {
                shown.push_str("?…");
            }
            shown
        }
        Err(_) => String::new(),
    }
}

/// `text` safe in HTML text and in quoted attributes.
pub(super) fn esc(text: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_comes_from_the_network_is_escaped_and_urls_lose_their_secrets() {
        assert_eq!(
            esc("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(
            redacted("https://user:pw@bucket.example/a/b.tar?X-Amz-Signature=abc#f"),
            "https://bucket.example/a/b.tar?…"
        );
        assert_eq!(redacted("http://h/x"), "http://h/x");
        assert_eq!(redacted("not a url"), "");
        assert_eq!(short("sha256:0123456789abcdef"), "sha256:012345678…");
        assert_eq!(short("abc"), "abc");
    }
}
