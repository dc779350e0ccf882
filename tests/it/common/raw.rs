//! A raw HTTP/1.1 client over TcpStream, for requests that reqwest would
//! normalise or refuse to send (dot segments, bad framing, garbage).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Resp;

/// Sends `request` as is and reads one response (10 s timeout). The write
/// runs concurrently with the read and its errors are ignored: a server
/// may answer and close before it has read everything (e.g. 431).
pub async fn request(addr: SocketAddr, request: &[u8]) -> Result<Resp, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut rd, mut wr) = stream.into_split();
    let bytes = request.to_vec();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&bytes).await;
        let _ = wr.flush().await;
        // Keep the write half open until the response is read.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(wr);
    });
    let res = tokio::time::timeout(Duration::from_secs(10), read_response(&mut rd)).await;
    writer.abort();
    match res {
        Ok(r) => r,
        Err(_) => Err("timed out waiting for a response".into()),
    }
}

/// `GET path` with `Connection: close`, sent byte for byte.
pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    request(addr, req.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("raw GET {path}: {e}"))
}

async fn read_response(rd: &mut (impl AsyncReadExt + Unpin)) -> Result<Resp, String> {
    let mut buf = Vec::new();
    let mut eof = false;
    loop {
        // Skip interim 1xx responses.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if eof {
                return Err(format!(
                    "connection closed before a complete response head; got {:?}",
                    String::from_utf8_lossy(&buf)
                ));
            }
            eof = fill(rd, &mut buf).await?;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        buf.drain(..head_end);
        if (100..200).contains(&status) {
            continue;
        }
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        let cl = resp
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok());
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            resp.body = read_chunked(rd, &mut buf, eof).await?;
        } else if let Some(n) = cl {
            while buf.len() < n {
                if eof || fill(rd, &mut buf).await? {
                    return Err(format!("body truncated: {} of {n} bytes", buf.len()));
                }
            }
            resp.body = buf[..n].to_vec();
        } else {
            while !eof {
                eof = fill(rd, &mut buf).await.unwrap_or(true);
            }
            resp.body = std::mem::take(&mut buf);
        }
        return Ok(resp);
    }
}

async fn read_chunked(
    rd: &mut (impl AsyncReadExt + Unpin),
    buf: &mut Vec<u8>,
    mut eof: bool,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(buf, b"\r\n") {
                break i;
            }
            if eof {
                return Err("truncated chunked body".into());
            }
            eof = fill(rd, buf).await?;
        };
        let size_str = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_str:?}"))?;
        buf.drain(..line_end + 2);
        if size == 0 {
            return Ok(body);
        }
        while buf.len() < size + 2 {
            if eof {
                return Err("truncated chunk".into());
            }
            eof = fill(rd, buf).await?;
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

/// Reads more bytes; returns true at EOF. A reset after some data is
/// treated as EOF so that an answer followed by RST is still seen.
async fn fill(rd: &mut (impl AsyncReadExt + Unpin), buf: &mut Vec<u8>) -> Result<bool, String> {
    let mut chunk = [0u8; 16384];
    match rd.read(&mut chunk).await {
        Ok(0) => Ok(true),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(false)
        }
        Err(e) if !buf.is_empty() => {
            let _ = e;
            Ok(true)
        }
        Err(e) => Err(format!("read: {e}")),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `GET path` with the given Host and extra headers, `Connection: close`.
pub async fn get_with(addr: SocketAddr, path: &str, host: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    request(addr, req.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("raw GET {path} (Host {host}): {e}"))
}
