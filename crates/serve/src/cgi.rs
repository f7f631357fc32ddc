//! CGI/1.1 (RFC 3875) as WAGI speaks it: the request as environment
//! variables, and the response as header lines, a blank line and the body.

use std::net::SocketAddr;

/// Response headers a function may not set: the server frames the response.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "content-length",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "status",
];

pub struct Request<'a> {
    pub method: &'a str,
    /// The route the function is bound to (SCRIPT_NAME).
    pub route: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a [(String, String)],
    pub content_length: usize,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// The meta-variables of RFC 3875 section 4.1, plus each request header
/// as HTTP_NAME (section 4.1.18).
pub fn variables(r: &Request) -> Vec<(String, String)> {
    let path_info = r.path.strip_prefix(r.route).unwrap_or("");
    let script_name = if r.route == "/" { "" } else { r.route };
    let uri = if r.query.is_empty() {
        r.path.to_string()
    } else {
        format!("{}?{}", r.path, r.query)
    };
    let mut v: Vec<(String, String)> = vec![
        ("GATEWAY_INTERFACE".into(), "CGI/1.1".into()),
        (
            "SERVER_SOFTWARE".into(),
            format!("amphi/{}", env!("CARGO_PKG_VERSION")),
        ),
        ("SERVER_PROTOCOL".into(), "HTTP/1.1".into()),
        ("SERVER_NAME".into(), r.local.ip().to_string()),
        ("SERVER_PORT".into(), r.local.port().to_string()),
        ("REMOTE_ADDR".into(), r.remote.ip().to_string()),
        ("REMOTE_PORT".into(), r.remote.port().to_string()),
        ("REQUEST_METHOD".into(), r.method.into()),
        ("SCRIPT_NAME".into(), script_name.into()),
        ("PATH_INFO".into(), path_info.into()),
        ("QUERY_STRING".into(), r.query.into()),
        ("REQUEST_URI".into(), uri),
    ];
    if r.content_length > 0 {
        v.push(("CONTENT_LENGTH".into(), r.content_length.to_string()));
    }
    for (name, value) in r.headers {
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "content-type" => v.push(("CONTENT_TYPE".into(), value.clone())),
            // Given as CONTENT_LENGTH, of the body as received.
            "content-length" => {}
            // As HTTP_PROXY it would name a proxy to programs that read
            // that variable ("httpoxy"): a client must not pick where a
            // function's outgoing requests go.
            "proxy" => {}
            _ => {
                let key = format!("HTTP_{}", lower.replace('-', "_").to_ascii_uppercase());
                match v.iter_mut().find(|(k, _)| *k == key) {
                    // Repeated headers are joined, as RFC 9110 allows.
                    Some((_, existing)) => {
                        existing.push_str(", ");
                        existing.push_str(value);
                    }
                    None => v.push((key, value.clone())),
                }
            }
        }
    }
    v
}

#[derive(Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body_offset: usize,
}

/// Parse a CGI response's header block (RFC 3875 section 6): `Status`
/// gives the code, a `Location` without it a 302, and a response needs
/// one of `Content-Type`, `Location`, `Status`.
pub fn parse_response(out: &[u8]) -> Result<Response, String> {
    let (head_len, body_offset) = find_blank_line(out)
        .ok_or("the function wrote no CGI header block (header lines, then a blank line)")?;
    let head = std::str::from_utf8(&out[..head_len])
        .map_err(|_| "the function's CGI headers are not UTF-8")?;
    let mut status = None;
    let mut location = false;
    let mut content_type = false;
    let mut headers = Vec::new();
    for line in head.lines().map(|l| l.trim_end_matches('\r')) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad CGI header line {line:?}"))?;
        let name = name.trim();
        let value = value.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("bad CGI header name {name:?}"));
        }
        match name.to_ascii_lowercase().as_str() {
            "status" => {
                let code = value
                    .split_whitespace()
                    .next()
                    .and_then(|c| c.parse::<u16>().ok())
                    .filter(|c| (100..=999).contains(c))
                    .ok_or_else(|| format!("bad CGI Status {value:?}"))?;
                status = Some(code);
            }
            "location" => location = true,
            "content-type" => content_type = true,
            _ => {}
        }
        if !HOP_BY_HOP.contains(&name.to_ascii_lowercase().as_str()) {
            headers.push((name.to_string(), value.to_string()));
        }
    }
    let status = match (status, location, content_type) {
        (Some(s), _, _) => s,
        (None, true, _) => 302,
        (None, false, true) => 200,
        (None, false, false) => {
            return Err(
                "the function's CGI headers have none of Content-Type, Location, Status".into(),
            )
        }
    };
    Ok(Response {
        status,
        headers,
        body_offset,
    })
}

/// Where the header block ends and the body starts: after the first empty
/// line, ended by CRLF or LF.
fn find_blank_line(out: &[u8]) -> Option<(usize, usize)> {
    if out.starts_with(b"\r\n") {
        return Some((0, 2));
    }
    if out.starts_with(b"\n") {
        return Some((0, 1));
    }
    let mut i = 0;
    while i < out.len() {
        if out[i] == b'\n' {
            if out[i + 1..].starts_with(b"\r\n") {
                return Some((i + 1, i + 3));
            }
            if out[i + 1..].starts_with(b"\n") {
                return Some((i + 1, i + 2));
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cgi_responses() {
        let r = parse_response(b"Content-Type: text/plain\r\n\r\nhello").unwrap();
        assert_eq!((r.status, r.body_offset), (200, 28));
        let r = parse_response(b"Status: 404 Not Found\nX-A: b\n\nnope").unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.headers, vec![("X-A".into(), "b".into())]);
        assert_eq!(parse_response(b"Location: /x\n\n").unwrap().status, 302);
        assert!(parse_response(b"hello world").is_err());
        assert!(parse_response(b"X-Only: 1\n\n").is_err());
        assert!(parse_response(b"Status: abc\n\n").is_err());
    }

    #[test]
    fn makes_rfc3875_variables() {
        let headers = vec![
            ("Content-Type".to_string(), "text/plain".to_string()),
            ("X-Trace".to_string(), "a".to_string()),
            ("x-trace".to_string(), "b".to_string()),
            ("Proxy".to_string(), "http://attacker.example".to_string()),
        ];
        let v = variables(&Request {
            method: "POST",
            route: "/echo",
            path: "/echo/more/path",
            query: "a=1&b=2",
            headers: &headers,
            content_length: 5,
            local: "127.0.0.1:8080".parse().unwrap(),
            remote: "127.0.0.1:5555".parse().unwrap(),
        });
        let get = |k: &str| v.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PATH_INFO"), Some("/more/path"));
        assert_eq!(get("SCRIPT_NAME"), Some("/echo"));
        assert_eq!(get("QUERY_STRING"), Some("a=1&b=2"));
        assert_eq!(get("CONTENT_LENGTH"), Some("5"));
        assert_eq!(get("CONTENT_TYPE"), Some("text/plain"));
        assert_eq!(get("HTTP_X_TRACE"), Some("a, b"));
        assert_eq!(get("HTTP_PROXY"), None, "httpoxy");
        assert_eq!(get("SERVER_PORT"), Some("8080"));
    }
}
