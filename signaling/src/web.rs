//! The browser SDK and call pages, embedded in the binary and served with a strict CSP.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Content-Security-Policy of every page: our own origin only, no third-party host. `'self'`
/// covers the page's own `ws:`/`wss:` origin (CSP 3), so no WebSocket host is allowed beyond it.
pub const CSP: &str = "default-src 'self'; connect-src 'self'; media-src 'self' blob:; \
img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; \
base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../web/index.html"),
    },
    Asset {
        path: "call.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/call.js"),
    },
    Asset {
        path: "moien.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/moien.js"),
    },
    Asset {
        path: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../web/style.css"),
    },
    Asset {
        path: "whip.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../web/whip.html"),
    },
    Asset {
        path: "whip.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/whip.js"),
    },
    Asset {
        path: "whep.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../web/whep.html"),
    },
    Asset {
        path: "whep.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/whep.js"),
    },
];

/// Serves `/` and `/<file>` from the embedded assets.
pub fn asset(path: &str) -> Response {
    let path = if path.is_empty() { "index.html" } else { path };
    match ASSETS.iter().find(|a| a.path == path) {
        Some(a) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(a.content_type),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            a.body,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_reference_no_third_party_host() {
        for a in ASSETS {
            for needle in ["http://", "https://", "//cdn", "googleapis", "stun:stun"] {
                let hits: Vec<&str> = a
                    .body
                    .lines()
                    .filter(|l| l.contains(needle))
                    // Comments may cite specs; code may not load from hosts.
                    .filter(|l| {
                        !l.trim_start().starts_with("//") && !l.trim_start().starts_with('*')
                    })
                    .collect();
                assert!(hits.is_empty(), "{} references {needle}: {hits:?}", a.path);
            }
        }
    }

    #[test]
    fn pages_have_no_inline_script() {
        for a in ASSETS.iter().filter(|a| a.path.ends_with(".html")) {
            for (i, _) in a.body.match_indices("<script") {
                let tag_end = a.body[i..].find('>').map_or(a.body.len(), |e| i + e);
                assert!(
                    a.body[i..tag_end].contains("src="),
                    "{} has an inline script",
                    a.path
                );
            }
            assert!(
                !a.body.contains(" style=\""),
                "{} has an inline style",
                a.path
            );
        }
    }
}
