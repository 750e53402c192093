//! Minimal HTTP/1.1 over std: message parsing for the mock server and a one-shot client for tests.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A parsed HTTP message head plus its body (request or response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Request: `METHOD PATH VERSION`; response: `VERSION STATUS REASON`.
    pub start_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Message {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Largest message this module reads, head and body together.
const MAX_MESSAGE: usize = 4 * 1024 * 1024;

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads one message: head, then a `Content-Length` or chunked body, or (for a response with
/// neither) everything up to EOF. `Ok(None)` if the peer closed before sending anything.
pub fn read_message(reader: &mut impl BufRead, is_response: bool) -> io::Result<Option<Message>> {
    let mut start_line = String::new();
    if reader.read_line(&mut start_line)? == 0 {
        return Ok(None);
    }
    let start_line = start_line.trim_end().to_string();
    let mut headers = Vec::new();
    let mut head_len = start_line.len();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(bad("connection closed inside the message head"));
        }
        head_len += line.len();
        if head_len > MAX_MESSAGE {
            return Err(bad("message head too large"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad("malformed header"))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let mut message = Message {
        start_line,
        headers,
        body: Vec::new(),
    };
    let chunked = message
        .header("Transfer-Encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    // A 1xx, 204 or 304 answer has no body, whatever its headers (RFC 9110, 6.4.1): reading one
    // until the connection closes would wait on a server that keeps it open.
    let status = message.start_line.split_whitespace().nth(1).unwrap_or("");
    if is_response && (status.starts_with('1') || status == "204" || status == "304") {
        return Ok(Some(message));
    }
    if chunked {
        message.body = read_chunked(reader)?;
    } else if let Some(len) = message.header("Content-Length") {
        let len: usize = len.parse().map_err(|_| bad("bad Content-Length"))?;
        if len > MAX_MESSAGE {
            return Err(bad("body too large"));
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        message.body = body;
    } else if is_response {
        reader
            .take(MAX_MESSAGE as u64)
            .read_to_end(&mut message.body)?;
    }
    Ok(Some(message))
}

fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size_line = String::new();
        reader.read_line(&mut size_line)?;
        let size_text = size_line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_MESSAGE {
            return Err(bad("body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0; 2];
        reader.read_exact(&mut crlf)?;
    }
}

/// A response as seen by the test client.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub message: Message,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.message.header(name)
    }

    pub fn text(&self) -> String {
        self.message.body_text()
    }

    /// The body as JSON; panics with the body text if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.message.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {}", self.text()))
    }
}

/// Sends one request on a fresh connection (`Connection: close`) and reads the whole answer.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut message = head.into_bytes();
    message.extend_from_slice(body);
    stream.write_all(&message)?;
    let mut reader = BufReader::new(stream);
    let message = read_message(&mut reader, true)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no response"))?;
    let status = message
        .start_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("malformed status line"))?;
    Ok(Response { status, message })
}

/// Sends a JSON body with `Content-Type: application/json`.
pub fn json_request(
    addr: &str,
    method: &str,
    path: &str,
    body: &serde_json::Value,
) -> io::Result<Response> {
    request(
        addr,
        method,
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
        Duration::from_secs(30),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_204_has_no_body_even_on_a_connection_left_open() {
        let raw = b"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\nnot a body";
        let m = read_message(&mut &raw[..], true).unwrap().unwrap();
        assert!(m.body.is_empty());
    }

    #[test]
    fn parses_content_length_and_chunked_bodies() {
        let raw = b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc";
        let m = read_message(&mut &raw[..], false).unwrap().unwrap();
        assert_eq!(m.start_line, "POST /x HTTP/1.1");
        assert_eq!(m.header("x-a"), Some("b"));
        assert_eq!(m.body, b"abc");

        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let m = read_message(&mut &raw[..], true).unwrap().unwrap();
        assert_eq!(m.body, b"abcde");

        let raw = b"HTTP/1.1 200 OK\r\n\r\nto the end";
        let m = read_message(&mut &raw[..], true).unwrap().unwrap();
        assert_eq!(m.body, b"to the end");
    }

    #[test]
    fn closed_and_truncated_streams() {
        assert!(read_message(&mut &b""[..], false).unwrap().is_none());
        assert!(read_message(&mut &b"GET / HTTP/1.1\r\nX: y"[..], false).is_err());
        assert!(read_message(
            &mut &b"GET / HTTP/1.1\r\nContent-Length: 9\r\n\r\nab"[..],
            false
        )
        .is_err());
    }
}
