//! Keeping credentials out of logs, errors and `Debug` output.
//!
//! Every broker and store is reached through a connection string that may carry a secret:
//! the userinfo of a URL (`amqp://user:PASSWORD@host`, `nats://TOKEN@host`,
//! `redis://:PASSWORD@host`), a query or key-value parameter (`?password=…`,
//! `sslpassword=…`), or a client property (`sasl.password`). This module is the one place
//! that knows those shapes; every transport, store and binary shows connection strings
//! through [`redact_url`] and passes client errors through [`scrub`].
//!
//! The parsing is hand-written rather than done with the `url` crate on purpose: the
//! strings here are not all URLs (`nats://a:4222,nats://b:4222` lists servers, PostgreSQL
//! takes `host=… password=…`), and a parser that refuses one would leave nothing safe to
//! print. The scanner below never fails; what it does not understand it shows with every
//! userinfo and secret parameter masked.
//!
//! ```
//! use troupe_core::redact::{redact_url, scrub};
//!
//! let url = "amqp://app:s3cr%40t@rabbit:5672/%2f";
//! assert_eq!(redact_url(url), "amqp://***@rabbit:5672/%2f");
//! let error = "connection to amqp://app:s3cr%40t@rabbit:5672/%2f refused (password s3cr@t)";
//! assert!(!scrub(error, url).contains("s3cr"));
//! ```

use std::fmt;
use std::ops::Range;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Parts of a parameter or property name (in a query string, a key-value DSN, a client
/// property) that make its value a secret. Matched as substrings, case-insensitively: a
/// harmless value hidden by mistake costs nothing, a password shown costs a rotation.
const SECRET_KEY_PARTS: [&str; 7] = ["pass", "pwd", "secret", "token", "credential", "key", "auth"];

/// Whether a parameter or property named `key` holds a secret (see the module docs).
///
/// ```
/// use troupe_core::redact::is_secret_key;
/// assert!(is_secret_key("sasl.password"));
/// assert!(is_secret_key("ssl.key.pem"));
/// assert!(is_secret_key("sasl.oauthbearer.config"));
/// assert!(is_secret_key("AWS_SECRET_ACCESS_KEY"));
/// assert!(!is_secret_key("bootstrap.servers"));
/// assert!(!is_secret_key("sslmode"));
/// ```
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEY_PARTS.iter().any(|part| key.contains(part))
}

/// `raw` with every userinfo (`user:password@`, `token@`) replaced by `***@` and the value
/// of every secret parameter by `***`. Lists of URLs (`a,b`) are redacted one by one.
///
/// ```
/// use troupe_core::redact::redact_url;
/// assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
/// assert_eq!(redact_url("nats://tok@a:4222,nats://u:p@b:4222"), "nats://***@a:4222,nats://***@b:4222");
/// assert_eq!(
///     redact_url("postgres://app:pw@db/troupe?sslmode=require&password=pw"),
///     "postgres://***@db/troupe?sslmode=require&password=***"
/// );
/// assert_eq!(redact_url("host=db user=app password=pw"), "host=db user=app password=***");
/// ```
pub fn redact_url(raw: &str) -> String {
    let mut spans: Vec<Range<usize>> = userinfos(raw).chain(secret_values(raw)).collect();
    if spans.is_empty() {
        return raw.to_owned();
    }
    spans.sort_by_key(|span| span.start);
    let mut out = String::with_capacity(raw.len());
    let mut shown = 0;
    for span in spans {
        // Spans may overlap (a `password=` inside a userinfo): mask their union once.
        if span.end <= shown {
            continue;
        }
        if span.start >= shown {
            out.push_str(&raw[shown..span.start]);
            out.push_str(MASK);
        }
        shown = span.end;
    }
    out.push_str(&raw[shown..]);
    out
}

/// Where a URL's authority (`userinfo@host:port`) ends.
const AUTHORITY_END: [char; 7] = ['/', '?', '#', ',', ' ', '\t', '\n'];
/// What comes before a parameter's name.
const KEY_START: [char; 7] = ['?', '&', ';', ',', ' ', '\t', '\n'];
/// Where a parameter's value ends. Not `,`: a value cut short would show its rest.
const VALUE_END: [char; 5] = ['&', ';', ' ', '\t', '\n'];

/// The byte range of every URL userinfo in `text` (before its `@`).
fn userinfos(text: &str) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut from = 0;
    std::iter::from_fn(move || {
        loop {
            let start = from + text[from..].find("://")? + 3;
            let end = text[start..]
                .find(AUTHORITY_END)
                .map_or(text.len(), |n| start + n);
            from = end;
            if let Some(at) = text[start..end].rfind('@') {
                return Some(start..start + at);
            }
        }
    })
}

/// The byte range of the value of every `key=value` in `text` whose key
/// [`is_secret_key`].
fn secret_values(text: &str) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut from = 0;
    std::iter::from_fn(move || {
        loop {
            let eq = from + text[from..].find('=')?;
            let key_start = text[from..eq].rfind(KEY_START).map_or(from, |n| from + n + 1);
            let value_end = text[eq + 1..].find(VALUE_END).map_or(text.len(), |n| eq + 1 + n);
            from = value_end.max(eq + 1);
            if value_end > eq + 1 && is_secret_key(&text[key_start..eq]) {
                return Some(eq + 1..value_end);
            }
        }
    })
}

/// The password of a userinfo, or the whole of it where it is a token (no `:`).
fn userinfo_secret(userinfo: &str) -> &str {
    userinfo
        .split_once(':')
        .map_or(userinfo, |(_, password)| password)
}

/// The secrets in `raw`: each userinfo's password (or token) and each secret parameter's
/// value, as written and percent-decoded.
fn secrets(raw: &str) -> Vec<String> {
    let mut found: Vec<String> = userinfos(raw)
        .map(|span| userinfo_secret(&raw[span]).to_owned())
        .chain(secret_values(raw).map(|span| raw[span].to_owned()))
        .collect();
    let decoded: Vec<String> = found.iter().filter_map(|s| percent_decode(s)).collect();
    found.extend(decoded);
    found.retain(|s| !s.is_empty());
    // Longest first, so a secret that contains another is masked whole.
    found.sort_by_key(|s| std::cmp::Reverse(s.len()));
    found.dedup();
    found
}

/// `%XX` sequences decoded, or `None` when there are none (or they do not make UTF-8).
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return None;
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            // Two hex digits make at most 255.
            out.push(u8::try_from(hi * 16 + lo).unwrap_or(u8::MAX));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `url` split into its userinfo (`user:password` or a token, percent-decoded) and the
/// same URL without it, for clients that would otherwise log the URL they were given
/// whole: give them the credentials apart.
///
/// ```
/// use troupe_core::redact::split_userinfo;
/// assert_eq!(
///     split_userinfo("nats://app:p%40ss@h:4222"),
///     (Some(("app".to_owned(), Some("p@ss".to_owned()))), "nats://h:4222".to_owned())
/// );
/// assert_eq!(split_userinfo("nats://tok@h"), (Some(("tok".to_owned(), None)), "nats://h".to_owned()));
/// assert_eq!(split_userinfo("nats://h:4222"), (None, "nats://h:4222".to_owned()));
/// ```
pub fn split_userinfo(url: &str) -> (Option<(String, Option<String>)>, String) {
    let Some(span) = userinfos(url).next() else {
        return (None, url.to_owned());
    };
    let decode = |s: &str| percent_decode(s).unwrap_or_else(|| s.to_owned());
    let userinfo = &url[span.clone()];
    let credentials = match userinfo.split_once(':') {
        Some((user, password)) => (decode(user), Some(decode(password))),
        None => (decode(userinfo), None),
    };
    // Without the userinfo and its `@`.
    let bare = format!("{}{}", &url[..span.start], &url[span.end + 1..]);
    (Some(credentials), bare)
}

/// `text` (a client library's error, say) with every URL in it redacted and every secret of
/// `url` masked wherever it appears, as written or percent-decoded. Client errors are
/// scrubbed because they may quote the connection string, or echo the password back.
pub fn scrub(text: &str, url: &str) -> String {
    let mut out = redact_url(text);
    for secret in secrets(url) {
        if out.contains(&secret) {
            out = out.replace(&secret, MASK);
        }
    }
    out
}

/// A connection string that shows itself redacted ([`redact_url`]) in `Display` and
/// `Debug`, for config structs and log fields.
///
/// ```
/// use troupe_core::redact::Redacted;
/// let shown = format!("{:?} {}", Redacted("redis://:pw@cache:6379"), Redacted("redis://:pw@cache:6379"));
/// assert_eq!(shown, "\"redis://***@cache:6379\" redis://***@cache:6379");
/// ```
#[derive(Clone, Copy)]
pub struct Redacted<'a>(pub &'a str);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(self.0))
    }
}

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(self.0), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn urls_without_secrets_are_unchanged() {
        for url in [
            "nats://127.0.0.1:4222",
            "amqp://127.0.0.1:5672/%2f",
            "http://127.0.0.1:4566",
            "redis://127.0.0.1:6379/0",
            "postgres://db/troupe?sslmode=require",
            "127.0.0.1:9092,127.0.0.1:9093",
            "",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn every_userinfo_is_masked() {
        assert_eq!(redact_url("amqps://u:p@h/vh"), "amqps://***@h/vh");
        assert_eq!(redact_url("rediss://default:p@h:6380"), "rediss://***@h:6380");
        // An '@' in the password (unescaped) still ends at the last one.
        assert_eq!(redact_url("nats://u:p@ss@h:4222"), "nats://***@h:4222");
        assert_eq!(
            redact_url("error at nats://u:p@h:4222: refused"),
            "error at nats://***@h:4222: refused"
        );
    }

    #[test]
    fn secret_parameters_are_masked() {
        assert_eq!(redact_url("http://h/?token=abc&x=1"), "http://h/?token=***&x=1");
        assert_eq!(
            redact_url("sasl.password=abc;sasl.username=me"),
            "sasl.password=***;sasl.username=me"
        );
    }

    #[test]
    fn scrub_masks_echoed_passwords() {
        let url = "amqp://app:p%40ss@h";
        let error = "login for app failed with password p@ss at amqp://app:p%40ss@h";
        let clean = scrub(error, url);
        assert!(!clean.contains("p@ss") && !clean.contains("p%40ss"), "{clean}");
        let token = scrub("bad token s3cr3t", "nats://s3cr3t@h");
        assert_eq!(token, "bad token ***");
    }

    proptest! {
        #[test]
        fn a_planted_password_never_shows(
            user in "[a-z]{1,8}",
            password in "[A-Za-z0-9!$*+]{4,16}",
            host in "[a-z]{1,8}",
            scheme in prop::sample::select(vec!["nats", "amqp", "amqps", "redis", "rediss", "postgres", "http"]),
            tail in "(/[a-z]{0,5})?(\\?sslmode=require)?",
        ) {
            let url = format!("{scheme}://{user}:{password}@{host}:1234{tail}");
            prop_assert!(!redact_url(&url).contains(&password));
            let error = format!("could not reach {url}: auth failed for {password}");
            prop_assert!(!scrub(&error, &url).contains(&password));
            let debug = format!("{:?}", Redacted(&url));
            prop_assert!(!debug.contains(&password));
        }

        #[test]
        fn redaction_never_panics(text in any::<String>()) {
            let _ = redact_url(&text);
            let _ = scrub(&text, &text);
        }
    }
}
