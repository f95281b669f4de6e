//! The web console: plain HTML, CSS and JavaScript modules built into the
//! binary and served as they are (no build step, nothing from elsewhere).

use axum::Router;
use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::ApiError;

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file under `/console/`: name, content type, text.
const FILES: &[(&str, &str, &str)] = &[
    ("app.js", JS, include_str!("console/app.js")),
    ("api.js", JS, include_str!("console/api.js")),
    ("feed.js", JS, include_str!("console/feed.js")),
    ("i18n.js", JS, include_str!("console/i18n.js")),
    ("dom.js", JS, include_str!("console/dom.js")),
    ("alert.js", JS, include_str!("console/alert.js")),
    ("queue.js", JS, include_str!("console/queue.js")),
    ("incident.js", JS, include_str!("console/incident.js")),
    ("carer.js", JS, include_str!("console/carer.js")),
    ("closing.js", JS, include_str!("console/closing.js")),
    ("wellbeing.js", JS, include_str!("console/wellbeing.js")),
    ("reports.js", JS, include_str!("console/reports.js")),
    ("chart.js", JS, include_str!("console/chart.js")),
    ("accounts.js", JS, include_str!("console/accounts.js")),
    ("style.css", CSS, include_str!("console/style.css")),
];

const INDEX: &str = include_str!("console/index.html");

/// Only what the console itself serves: no inline scripts, no other origins
/// (a map link opens OpenStreetMap in a new tab; nothing is loaded from it).
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     frame-ancestors 'none'; form-action 'self'";

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            // Always revalidate: a new server version must not run old scripts.
            (CACHE_CONTROL, "no-cache"),
            (HeaderName::from_static("x-content-type-options"), "nosniff"),
            (HeaderName::from_static("content-security-policy"), POLICY),
            (HeaderName::from_static("referrer-policy"), "no-referrer"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    file(HTML, INDEX)
}

async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    FILES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, ct, body)| file(ct, body))
        .ok_or(ApiError::NotFound)
}

/// `/` and `/console/{file}`. Not in the OpenAPI document: pages, not API.
pub fn router() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/console/{file}", get(asset))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every module a script imports, and every file the page links, is served.
    #[test]
    fn every_import_and_link_is_served() {
        let served: Vec<&str> = FILES.iter().map(|(n, _, _)| *n).collect();
        let mut wanted = Vec::new();
        for (_, _, text) in FILES.iter().filter(|(_, ct, _)| *ct == JS) {
            for line in text.lines() {
                let line = line.trim();
                if !(line.starts_with("import ") || line.starts_with("export ")) {
                    continue;
                }
                if let Some(spec) = line.split(" from ").nth(1) {
                    let spec = spec.trim_end_matches(';').trim_matches(['\'', '"']);
                    wanted.push(spec.trim_start_matches("./").to_owned());
                }
            }
        }
        for part in INDEX.split("/console/").skip(1) {
            wanted.push(part.split('"').next().unwrap().to_owned());
        }
        assert!(wanted.len() > 5, "{wanted:?}");
        for w in &wanted {
            assert!(served.contains(&w.as_str()), "{w} is used but not served");
        }
        for name in &served {
            assert!(
                wanted.iter().any(|w| w == name),
                "{name} is served but nothing uses it"
            );
        }
    }

    /// Every `t('…')` the scripts call names a string both languages have.
    #[test]
    fn every_string_used_is_in_both_languages() {
        let i18n = FILES.iter().find(|f| f.0 == "i18n.js").unwrap().2;
        let (zh, en) = i18n.split_once("\n  en: {").expect("the en block");
        let has = |block: &str, key: &str| {
            block.contains(&format!("'{key}':")) || block.contains(&format!("\n    {key}:"))
        };
        let mut used = 0;
        for (name, _, text) in FILES.iter().filter(|(_, ct, _)| *ct == JS) {
            for (at, _) in text.match_indices("t('") {
                // A call of `t`, not the end of a longer name (`CustomEvent('…')`).
                let before = text[..at].chars().next_back().unwrap_or(' ');
                if before.is_alphanumeric() || before == '_' || before == '$' {
                    continue;
                }
                let key = text[at + 3..].split('\'').next().unwrap();
                used += 1;
                assert!(has(zh, key), "{name}: '{key}' has no Chinese");
                assert!(has(en, key), "{name}: '{key}' has no English");
            }
        }
        assert!(used > 100, "{used} strings");
    }

    #[test]
    fn the_page_declares_utf8_and_loads_no_other_origin() {
        assert!(INDEX.contains("<meta charset=\"utf-8\">"));
        for (name, _, text) in FILES.iter().chain([("index.html", HTML, INDEX)].iter()) {
            for bad in [
                "<script src=\"http",
                "href=\"//",
                "@import url(http",
                "cdn.",
            ] {
                assert!(!text.contains(bad), "{name} loads from elsewhere: {bad}");
            }
        }
    }
}
