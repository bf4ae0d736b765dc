//! The little HTTP/1.1 the gateway speaks to browsers (sans-I/O): a request head parsed, the
//! static file a path names under a web root (no way out of it), and response heads. One
//! request per connection (`Connection: close`): the noVNC page is a handful of files.

use std::path::{Component, Path, PathBuf};

/// Longest request head accepted (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;

/// A request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The path, percent-decoded, without the query.
    pub path: String,
    /// The query's `name=value` pairs, percent-decoded, in order.
    pub query: Vec<(String, String)>,
    /// Headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
}

/// Why a request head was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Not an HTTP/1.x request line, a header without a colon, or text that is not UTF-8.
    #[error("malformed request")]
    Malformed,
    /// Past [`MAX_HEAD`] bytes without the blank line that ends a head.
    #[error("request head longer than {MAX_HEAD} bytes")]
    TooLong,
}

/// Where the head ends in `buf` (the index after its blank line), if it has ended; an error
/// once `buf` holds more than [`MAX_HEAD`] bytes without an end.
pub fn head_end(buf: &[u8]) -> Result<Option<usize>, HttpError> {
    match buf.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) if i + 4 <= MAX_HEAD => Ok(Some(i + 4)),
        Some(_) => Err(HttpError::TooLong),
        None if buf.len() > MAX_HEAD => Err(HttpError::TooLong),
        None => Ok(None),
    }
}

impl Request {
    /// Parses a complete head (what [`head_end`] delimited).
    pub fn parse(head: &[u8]) -> Result<Request, HttpError> {
        let text = std::str::from_utf8(head).map_err(|_| HttpError::Malformed)?;
        let mut lines = text.split("\r\n");
        let mut first = lines.next().ok_or(HttpError::Malformed)?.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (first.next(), first.next(), first.next(), first.next())
        else {
            return Err(HttpError::Malformed);
        };
        if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
            return Err(HttpError::Malformed);
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let query = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                Ok((percent_decode(k)?, percent_decode(v)?))
            })
            .collect::<Result<_, HttpError>>()?;
        let mut headers = Vec::new();
        for line in lines.take_while(|l| !l.is_empty()) {
            let (name, value) = line.split_once(':').ok_or(HttpError::Malformed)?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        Ok(Request {
            method: method.to_owned(),
            path: percent_decode(path)?,
            query,
            headers,
        })
    }

    /// The first header called `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether header `name` lists `token` (comma-separated, case-insensitive), as
    /// `Connection: keep-alive, Upgrade` does.
    pub fn header_lists(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The first query parameter called `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `%XX` decoded (and `+` left as it is: paths and noVNC's queries do not use it for space).
fn percent_decode(s: &str) -> Result<String, HttpError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(HttpError::Malformed)?;
            let hex = std::str::from_utf8(hex).map_err(|_| HttpError::Malformed)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| HttpError::Malformed)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| HttpError::Malformed)
}

/// The file `path` (a decoded request path) names under `root`, or `None` if it would leave
/// the root: only plain names are allowed (no `..`, `.`, NUL, backslash or empty segment
/// but a trailing one). `/` and a trailing `/` name `index` in that directory. Symbolic
/// links inside the root are the root's business (Debian's noVNC links `vnc_auto.html`).
pub fn resolve(root: &Path, path: &str, index: &str) -> Option<PathBuf> {
    let rel = path.strip_prefix('/')?;
    let mut out = root.to_path_buf();
    let segments: Vec<&str> = rel.split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        if segment.is_empty() {
            if last {
                out.push(index);
                continue;
            }
            return None;
        }
        if segment.contains(['\0', '\\']) {
            return None;
        }
        let mut parts = Path::new(segment).components();
        match (parts.next(), parts.next()) {
            (Some(Component::Normal(name)), None) => out.push(name),
            _ => return None,
        }
    }
    Some(out)
}

/// The Content-Type for a file, by its extension (browsers run ES modules only when served
/// as JavaScript).
pub fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "jpg" | "jpeg" => "image/jpeg",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "oga" => "audio/ogg",
        "mp3" => "audio/mpeg",
        _ => "application/octet-stream",
    }
}

/// A response head with an empty body (`403`, `404`, ...): the same bytes for every request
/// refused for the same reason.
pub fn empty_response(status: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes()
}

/// A `200 OK` head for a body of `len` bytes of `content_type`.
pub fn ok_head(content_type: &str, len: u64) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\
         Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_websocket_request() {
        let head = b"GET /websockify?token=ab%2Fc&console=vm1 HTTP/1.1\r\nHost: x\r\n\
            Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let end = head_end(head).unwrap().unwrap();
        assert_eq!(end, head.len());
        let r = Request::parse(&head[..end]).unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/websockify");
        assert_eq!(r.query_param("token"), Some("ab/c"));
        assert_eq!(r.query_param("console"), Some("vm1"));
        assert!(r.header_lists("connection", "upgrade"));
        assert_eq!(r.header("upgrade"), Some("websocket"));
    }

    #[test]
    fn refuses_malformed_and_long_heads() {
        assert_eq!(Request::parse(b"GET\r\n\r\n"), Err(HttpError::Malformed));
        assert_eq!(
            Request::parse(b"GET x HTTP/1.1\r\n\r\n"),
            Err(HttpError::Malformed)
        );
        assert_eq!(
            Request::parse(b"GET /%zz HTTP/1.1\r\n\r\n"),
            Err(HttpError::Malformed)
        );
        assert_eq!(
            Request::parse(b"GET / HTTP/1.1\r\nno colon\r\n\r\n"),
            Err(HttpError::Malformed)
        );
        assert_eq!(head_end(&[b'a'; MAX_HEAD + 1]), Err(HttpError::TooLong));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), Ok(None));
    }

    #[test]
    fn resolves_only_inside_the_root() {
        let root = Path::new("/srv/www");
        assert_eq!(
            resolve(root, "/", "vnc.html"),
            Some(PathBuf::from("/srv/www/vnc.html"))
        );
        assert_eq!(
            resolve(root, "/core/rfb.js", "i"),
            Some(PathBuf::from("/srv/www/core/rfb.js"))
        );
        assert_eq!(
            resolve(root, "/app/", "i"),
            Some(PathBuf::from("/srv/www/app/i"))
        );
        for bad in [
            "/../etc/passwd",
            "/core/../../etc/passwd",
            "/./x",
            "//etc/passwd",
            "/a//b",
            "/a\\..\\b",
            "/a\0b",
            "relative",
            "/..",
        ] {
            assert_eq!(resolve(root, bad, "i"), None, "{bad:?}");
        }
    }
}
