//! Access logs: one line per request, JSON by default or a `{field}` template, written by a
//! thread of its own so a slow disk never slows a request (lines beyond a bounded queue are
//! dropped and counted).
//!
//! Nothing secret is written: header values are logged only for headers named in
//! [`AccessLogConfig::headers`], and those matching the redaction list (credentials, cookies,
//! API keys and any configured name) are written as `[redacted]`. JSON output escapes every
//! control character; the template format escapes them as `\xNN`, so a client cannot forge a
//! line.

use std::{
    fmt::Write as _,
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, SystemTime},
};

use http::HeaderName;
use serde_json::Value;

/// Where lines go.
#[derive(Clone, Debug)]
pub enum LogSink {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// Appended to a file.
    File(std::path::PathBuf),
    /// Into a channel (tests, or your own shipper).
    Channel(mpsc::Sender<String>),
}

/// Line format.
#[derive(Clone, Debug, Default)]
pub enum LogFormat {
    /// One JSON object per line (the default).
    #[default]
    Json,
    /// A template such as `{time} {client_ip} "{method} {path}" {status} {duration_ms}ms`;
    /// unknown or absent fields are `-`.
    Template(String),
}

/// Access log settings.
#[derive(Clone, Debug)]
pub struct AccessLogConfig {
    /// Where lines go.
    pub sink: LogSink,
    /// Line format.
    pub format: LogFormat,
    /// Request headers whose values are logged (as `header.<name>`), redacted when secret.
    pub headers: Vec<HeaderName>,
    /// Header names always written as `[redacted]`, besides the built-in credential headers.
    pub redact: Vec<HeaderName>,
    /// Routes not logged (health checks).
    pub exclude_routes: Vec<String>,
    /// The share of successful requests logged, 0.0 to 1.0 (errors, status 400 and up, are
    /// always logged); decided from the request id, so it is stable per request.
    pub sample: f64,
    /// Only requests at least this slow are logged (errors always are).
    pub slower_than: Option<Duration>,
    /// Only responses with at least this status are logged (0: all).
    pub min_status: u16,
    /// Lines held for the writer at most; beyond, lines are dropped and counted.
    pub queue: usize,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            sink: LogSink::Stdout,
            format: LogFormat::Json,
            headers: Vec::new(),
            redact: Vec::new(),
            exclude_routes: Vec::new(),
            sample: 1.0,
            slower_than: None,
            min_status: 0,
            queue: 65_536,
        }
    }
}

/// Headers that always carry credentials.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

/// One request's facts, as logged.
#[derive(Debug, Default)]
pub(crate) struct Entry {
    pub(crate) time: Option<SystemTime>,
    pub(crate) request_id: Option<String>,
    pub(crate) trace_id: Option<String>,
    pub(crate) client_ip: Option<String>,
    pub(crate) consumer: Option<String>,
    pub(crate) route: Option<String>,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) protocol: String,
    pub(crate) status: u16,
    pub(crate) flags: String,
    pub(crate) reason: Option<&'static str>,
    pub(crate) upstream: Option<String>,
    pub(crate) upstream_duration: Option<Duration>,
    pub(crate) retries: u32,
    pub(crate) rate_limit: Option<&'static str>,
    pub(crate) cache: Option<&'static str>,
    pub(crate) auth_failure: Option<&'static str>,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) duration: Duration,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) completed: bool,
}

/// The access log: one line per request from a writer thread of its own, credentials redacted,
/// control characters escaped (see [`AccessLogConfig`]).
#[derive(Debug)]
pub struct AccessLog {
    tx: mpsc::SyncSender<String>,
    dropped: Arc<AtomicU64>,
    format: LogFormat,
    headers: Vec<HeaderName>,
    redact: Vec<HeaderName>,
    exclude_routes: Vec<String>,
    sample: f64,
    slower_than: Option<Duration>,
    min_status: u16,
}

impl AccessLog {
    /// Starts the writer thread.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened or the thread cannot start.
    pub fn start(config: AccessLogConfig) -> std::io::Result<Self> {
        let mut out: Box<dyn Write + Send> = match &config.sink {
            LogSink::Stdout => Box::new(std::io::stdout()),
            LogSink::Stderr => Box::new(std::io::stderr()),
            LogSink::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            LogSink::Channel(_) => Box::new(std::io::sink()),
        };
        let channel = match config.sink {
            LogSink::Channel(tx) => Some(tx),
            _ => None,
        };
        let (tx, rx) = mpsc::sync_channel::<String>(config.queue.max(1));
        std::thread::Builder::new()
            .name("gateway-access-log".into())
            .spawn(move || {
                let mut buf = std::io::BufWriter::new(&mut out);
                while let Ok(line) = rx.recv() {
                    if let Some(ch) = &channel {
                        let _ = ch.send(line);
                        continue;
                    }
                    let _ = buf.write_all(line.as_bytes());
                    let _ = buf.write_all(b"\n");
                    // Write what is queued, then flush once.
                    while let Ok(line) = rx.try_recv() {
                        let _ = buf.write_all(line.as_bytes());
                        let _ = buf.write_all(b"\n");
                    }
                    let _ = buf.flush();
                }
            })?;
        Ok(Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            format: config.format,
            headers: config.headers,
            redact: config.redact,
            exclude_routes: config.exclude_routes,
            sample: config.sample.clamp(0.0, 1.0),
            slower_than: config.slower_than,
            min_status: config.min_status,
        })
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The request headers to capture.
    pub(crate) fn headers(&self) -> &[HeaderName] {
        &self.headers
    }

    pub(crate) fn is_secret(&self, name: &HeaderName) -> bool {
        SECRET_HEADERS.contains(&name.as_str()) || self.redact.contains(name)
    }

    /// Whether a request on `route` may be logged at all (decided before anything is captured).
    pub(crate) fn wants_route(&self, route: Option<&str>) -> bool {
        !route.is_some_and(|r| self.exclude_routes.iter().any(|x| x == r))
    }

    pub(crate) fn log(&self, e: &Entry) {
        if !self.wants_route(e.route.as_deref()) || e.status < self.min_status {
            return;
        }
        let error = e.status >= 400 || !e.completed;
        if !error {
            if self.slower_than.is_some_and(|min| e.duration < min) {
                return;
            }
            if self.sample < 1.0 {
                let h = e.request_id.as_deref().map_or(0, fnv);
                #[allow(clippy::cast_precision_loss)]
                let draw = (h % 10_000) as f64 / 10_000.0;
                if draw >= self.sample {
                    return;
                }
            }
        }
        let line = match &self.format {
            LogFormat::Json => json_line(e),
            LogFormat::Template(t) => template_line(t, e),
        };
        if self.tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn fields(e: &Entry) -> Vec<(&'static str, Value)> {
    let opt = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
    #[allow(clippy::cast_precision_loss)]
    let ms = e.duration.as_secs_f64() * 1000.0;
    vec![
        (
            "time",
            e.time.map_or(Value::Null, |t| Value::String(rfc3339(t))),
        ),
        ("request_id", opt(&e.request_id)),
        ("trace_id", opt(&e.trace_id)),
        ("client_ip", opt(&e.client_ip)),
        ("consumer", opt(&e.consumer)),
        ("route", opt(&e.route)),
        ("method", Value::String(e.method.clone())),
        ("path", Value::String(e.path.clone())),
        ("protocol", Value::String(e.protocol.clone())),
        ("status", Value::from(e.status)),
        ("flags", Value::String(e.flags.clone())),
        ("reason", e.reason.map_or(Value::Null, Value::from)),
        ("upstream", opt(&e.upstream)),
        (
            "upstream_duration_ms",
            e.upstream_duration.map_or(Value::Null, |d| {
                Value::from((d.as_secs_f64() * 1e6).round() / 1000.0)
            }),
        ),
        ("retries", Value::from(e.retries)),
        ("rate_limit", e.rate_limit.map_or(Value::Null, Value::from)),
        ("cache", e.cache.map_or(Value::Null, Value::from)),
        (
            "auth_failure",
            e.auth_failure.map_or(Value::Null, Value::from),
        ),
        ("bytes_in", Value::from(e.bytes_in)),
        ("bytes_out", Value::from(e.bytes_out)),
        ("duration_ms", Value::from((ms * 1000.0).round() / 1000.0)),
        ("completed", Value::Bool(e.completed)),
    ]
}

fn json_line(e: &Entry) -> String {
    // Written directly (not through a `serde_json::Value` tree): this runs once per request.
    let mut out = String::with_capacity(384);
    out.push('{');
    let mut first = true;
    let mut key = |out: &mut String, k: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        push_json_str(out, k);
        out.push(':');
    };
    let opt = |out: &mut String, v: Option<&str>| match v {
        Some(s) => push_json_str(out, s),
        None => out.push_str("null"),
    };
    key(&mut out, "time");
    opt(&mut out, e.time.map(rfc3339).as_deref());
    key(&mut out, "request_id");
    opt(&mut out, e.request_id.as_deref());
    key(&mut out, "trace_id");
    opt(&mut out, e.trace_id.as_deref());
    key(&mut out, "client_ip");
    opt(&mut out, e.client_ip.as_deref());
    key(&mut out, "consumer");
    opt(&mut out, e.consumer.as_deref());
    key(&mut out, "route");
    opt(&mut out, e.route.as_deref());
    key(&mut out, "method");
    push_json_str(&mut out, &e.method);
    key(&mut out, "path");
    push_json_str(&mut out, &e.path);
    key(&mut out, "protocol");
    push_json_str(&mut out, &e.protocol);
    key(&mut out, "status");
    let _ = write!(out, "{}", e.status);
    key(&mut out, "flags");
    push_json_str(&mut out, &e.flags);
    key(&mut out, "reason");
    opt(&mut out, e.reason);
    key(&mut out, "upstream");
    opt(&mut out, e.upstream.as_deref());
    key(&mut out, "upstream_duration_ms");
    match e.upstream_duration {
        Some(d) => {
            let _ = write!(out, "{:.3}", d.as_secs_f64() * 1000.0);
        }
        None => out.push_str("null"),
    }
    key(&mut out, "retries");
    let _ = write!(out, "{}", e.retries);
    key(&mut out, "rate_limit");
    opt(&mut out, e.rate_limit);
    key(&mut out, "cache");
    opt(&mut out, e.cache);
    key(&mut out, "auth_failure");
    opt(&mut out, e.auth_failure);
    key(&mut out, "bytes_in");
    let _ = write!(out, "{}", e.bytes_in);
    key(&mut out, "bytes_out");
    let _ = write!(out, "{}", e.bytes_out);
    key(&mut out, "duration_ms");
    let _ = write!(out, "{:.3}", e.duration.as_secs_f64() * 1000.0);
    key(&mut out, "completed");
    out.push_str(if e.completed { "true" } else { "false" });
    for (name, value) in &e.headers {
        out.push(',');
        push_json_str(&mut out, &format!("header.{name}"));
        out.push(':');
        push_json_str(&mut out, value);
    }
    out.push('}');
    out
}

/// A JSON string literal: `"`, `\` and every control character escaped.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn template_line(t: &str, e: &Entry) -> String {
    let all = fields(e);
    let mut out = String::with_capacity(t.len() + 64);
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let name = &rest[open + 1..open + close];
        let value = all
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| {
                name.strip_prefix("header.").and_then(|h| {
                    e.headers
                        .iter()
                        .find(|(n, _)| n == h)
                        .map(|(_, v)| Value::String(v.clone()))
                })
            });
        match value {
            None | Some(Value::Null) => out.push('-'),
            Some(Value::String(s)) => escape_into(&mut out, &s),
            Some(v) => {
                let _ = write!(out, "{v}");
            }
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

/// Control characters, `"` and `\` as `\xNN`: one request is one line.
fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        if c.is_control() || c == '"' || c == '\\' {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "\\x{b:02x}");
            }
        } else {
            out.push(c);
        }
    }
}

/// `2026-11-26T21:30:00.123Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_728_600_123);
        assert_eq!(rfc3339(t), "2026-11-26T21:30:00.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn templates_escape_what_could_forge_a_line() {
        let e = Entry {
            method: "GET".into(),
            path: "/a\n127.0.0.1 \"GET /admin\" 200".into(),
            status: 200,
            ..Entry::default()
        };
        let line = template_line("{method} {path} {status} {nope} {header.x}", &e);
        assert!(!line.contains('\n') && !line.contains('"'), "{line}");
        assert!(line.ends_with(" 200 - -"), "{line}");
        let json = json_line(&e);
        assert!(!json.contains('\n'));
        let odd = Entry {
            path: String::from("/\u{1b}[31m\u{2028}\u{7f}\\\"é"),
            headers: vec![(String::from("user-agent"), String::from("a\tb"))],
            ..Entry::default()
        };
        let line = json_line(&odd);
        assert!(
            !line.contains('\u{1b}') && !line.contains('\u{2028}'),
            "{line}"
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["path"], odd.path);
        assert_eq!(v["header.user-agent"], "a\tb");
        assert_eq!(v["time"], Value::Null);
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["path"], e.path);
    }
}
