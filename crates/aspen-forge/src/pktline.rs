//! Git's pkt-line framing (gitprotocol-common): four hex digits of length (including
//! themselves), then the payload; `0000` is a flush, `0001` a delimiter, `0002` a response
//! end. Side-band multiplexing puts a band byte before each payload: 1 data, 2 progress,
//! 3 a fatal error.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest pkt-line, length header included.
pub const MAX_PKT_BYTES: usize = 65_520;
/// Largest payload of one pkt-line.
pub const MAX_PAYLOAD_BYTES: usize = MAX_PKT_BYTES - 4;
/// Largest payload of one side-band-64k packet (one byte goes to the band).
pub const MAX_BAND_PAYLOAD_BYTES: usize = MAX_PAYLOAD_BYTES - 1;

/// The flush packet.
pub const FLUSH: &[u8] = b"0000";

/// Side-band channels.
pub const BAND_DATA: u8 = 1;
pub const BAND_PROGRESS: u8 = 2;
pub const BAND_ERROR: u8 = 3;

/// One packet as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pkt {
    Data(Vec<u8>),
    Flush,
    Delim,
    ResponseEnd,
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads one packet; `None` at a clean end of stream before its first byte.
pub async fn read_pkt(r: &mut (impl AsyncRead + Unpin)) -> io::Result<Option<Pkt>> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the stream ended inside a pkt-line header"))
            };
        }
        got += n;
    }
    let text = std::str::from_utf8(&header).map_err(|_| bad(format!("pkt-line header {header:?} is not hex")))?;
    let len = usize::from_str_radix(text, 16).map_err(|_| bad(format!("pkt-line header {text:?} is not hex")))?;
    match len {
        0 => return Ok(Some(Pkt::Flush)),
        1 => return Ok(Some(Pkt::Delim)),
        2 => return Ok(Some(Pkt::ResponseEnd)),
        3 => return Err(bad("pkt-line length 3 is invalid".into())),
        l if l > MAX_PKT_BYTES => return Err(bad(format!("pkt-line of {l} bytes is over {MAX_PKT_BYTES}"))),
        _ => {}
    }
    let mut payload = vec![0u8; len - 4];
    r.read_exact(&mut payload).await?;
    Ok(Some(Pkt::Data(payload)))
}

/// `payload` framed as one pkt-line. Panics if it is over [`MAX_PAYLOAD_BYTES`] (a bug).
pub fn encode(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() <= MAX_PAYLOAD_BYTES, "pkt-line payload of {} bytes", payload.len());
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(format!("{:04x}", payload.len() + 4).as_bytes());
    out.extend_from_slice(payload);
    out
}

/// `payload` on side-band `band`, split into as many packets as it needs.
pub fn encode_band(band: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    for chunk in payload.chunks(MAX_BAND_PAYLOAD_BYTES) {
        let mut pkt = Vec::with_capacity(chunk.len() + 1);
        pkt.push(band);
        pkt.extend_from_slice(chunk);
        out.extend_from_slice(&encode(&pkt));
    }
    out
}

/// Writes a text line as one packet.
pub async fn write_line(w: &mut (impl AsyncWrite + Unpin), line: &str) -> io::Result<()> {
    w.write_all(&encode(line.as_bytes())).await
}

/// The payload without its trailing newline, if it has one.
pub fn chomp(payload: &[u8]) -> &[u8] {
    payload.strip_suffix(b"\n").unwrap_or(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn packets_round_trip_and_bad_headers_are_named() {
        let mut wire = encode(b"hello\n");
        wire.extend_from_slice(FLUSH);
        wire.extend_from_slice(b"0001");
        let mut r = wire.as_slice();
        assert_eq!(read_pkt(&mut r).await.unwrap(), Some(Pkt::Data(b"hello\n".to_vec())));
        assert_eq!(read_pkt(&mut r).await.unwrap(), Some(Pkt::Flush));
        assert_eq!(read_pkt(&mut r).await.unwrap(), Some(Pkt::Delim));
        assert_eq!(read_pkt(&mut r).await.unwrap(), None);

        let err = read_pkt(&mut &b"zz12"[..]).await.unwrap_err();
        assert!(err.to_string().contains("not hex"), "{err}");
        let err = read_pkt(&mut &b"ffff"[..]).await.unwrap_err();
        assert!(err.to_string().contains("over 65520"), "{err}");
        let err = read_pkt(&mut &b"00"[..]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn side_band_payloads_are_split_to_fit() {
        let data = vec![7u8; MAX_BAND_PAYLOAD_BYTES + 10];
        let out = encode_band(BAND_DATA, &data);
        assert_eq!(&out[..4], b"fff0");
        assert_eq!(out[4], BAND_DATA);
        let second = 4 + 1 + MAX_BAND_PAYLOAD_BYTES;
        assert_eq!(&out[second..second + 4], b"000f");
        assert_eq!(out.len(), data.len() + 2 * 5);
    }
}
