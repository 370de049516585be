//! Length-prefixed postcard frames: a 4-byte big-endian length, then the body.
//!
//! Lengths are checked against [`MAX_FRAME_BYTES`] before any allocation, and bodies
//! that do not decode (including unknown enum variants) are errors, never panics.

use aspen_core::limits::MAX_FRAME_BYTES;
use iroh::endpoint::{RecvStream, SendStream};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is over the limit MAX_FRAME_BYTES = {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Decode(#[from] postcard::Error),
    #[error("stream read failed: {0}")]
    Read(String),
    #[error("stream write failed: {0}")]
    Write(String),
    #[error("stream ended in the middle of a frame")]
    Truncated,
}

/// Encodes `value` into a frame (length prefix included).
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    encode_frame_limited(value, MAX_FRAME_BYTES)
}

/// Encodes `value` into a frame of at most `max` body bytes.
pub fn encode_frame_limited<T: Serialize>(value: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let body = postcard::to_allocvec(value)?;
    if body.len() > max {
        return Err(FrameError::TooLarge { len: body.len(), max });
    }
    let mut framed = Vec::with_capacity(4 + body.len());
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    Ok(framed)
}

/// Decodes a frame body (without the length prefix).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    Ok(postcard::from_bytes(body)?)
}

pub async fn write_frame<T: Serialize>(send: &mut SendStream, value: &T) -> Result<(), FrameError> {
    let framed = encode_frame(value)?;
    send.write_all(&framed).await.map_err(|e| FrameError::Write(e.to_string()))
}

/// Reads one frame; `Ok(None)` when the stream ended cleanly before a new frame.
pub async fn read_frame<T: DeserializeOwned>(recv: &mut RecvStream) -> Result<Option<T>, FrameError> {
    let Some(body) = read_frame_bytes(recv).await? else {
        return Ok(None);
    };
    decode_body(&body).map(Some)
}

/// Reads one raw frame body, bounded by [`MAX_FRAME_BYTES`].
pub async fn read_frame_bytes(recv: &mut RecvStream) -> Result<Option<Vec<u8>>, FrameError> {
    read_frame_bytes_limited(recv, MAX_FRAME_BYTES).await
}

/// Reads one raw frame body of at most `max` bytes.
pub async fn read_frame_bytes_limited(recv: &mut RecvStream, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len_buf = [0u8; 4];
    let mut filled = 0;
    while filled < 4 {
        match recv.read(&mut len_buf[filled..]).await.map_err(|e| FrameError::Read(e.to_string()))? {
            None if filled == 0 => return Ok(None),
            None => return Err(FrameError::Truncated),
            Some(n) => filled += n,
        }
    }
    let len = u32::from_be_bytes(len_buf) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| match e {
        iroh::endpoint::ReadExactError::FinishedEarly(_) => FrameError::Truncated,
        other => FrameError::Read(other.to_string()),
    })?;
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_carries_its_length() {
        let framed = encode_frame(&(7u32, b"abc".to_vec())).unwrap();
        let len = u32::from_be_bytes(framed[..4].try_into().unwrap()) as usize;
        assert_eq!(len, framed.len() - 4);
        let back: (u32, Vec<u8>) = decode_body(&framed[4..]).unwrap();
        assert_eq!(back, (7, b"abc".to_vec()));
    }

    #[test]
    fn oversize_frame_is_refused_on_encode() {
        let big = vec![0u8; MAX_FRAME_BYTES + 1];
        assert!(matches!(encode_frame(&big), Err(FrameError::TooLarge { .. })));
    }
}

#[cfg(test)]
mod decode_properties {
    use aspen_core::api::{ClientRequest, ClientResponse, WatchMessage};
    use proptest::prelude::*;

    use super::decode_body;

    proptest! {
        /// Any bytes decode to a message or to an error; never a panic, and never an
        /// allocation beyond what the (already bounded) frame holds.
        #[test]
        fn arbitrary_frames_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_body::<ClientRequest>(&body);
            let _ = decode_body::<ClientResponse>(&body);
            let _ = decode_body::<WatchMessage>(&body);
        }

        /// A valid request with trailing garbage or a flipped variant tag still never panics.
        #[test]
        fn mutated_requests_never_panic(key in proptest::collection::vec(any::<u8>(), 0..64), flip in any::<u8>(), at in any::<usize>()) {
            let mut body = postcard::to_allocvec(&ClientRequest::Put { key, value: b"v".to_vec(), lease: None }).unwrap();
            let i = at % body.len();
            body[i] ^= flip;
            let _ = decode_body::<ClientRequest>(&body);
        }
    }

    #[test]
    fn an_unknown_request_variant_is_a_decode_error() {
        // Variant tags are varints; 200 is far beyond the last request variant.
        let err = decode_body::<ClientRequest>(&[200, 1]).unwrap_err();
        assert!(err.to_string().contains("malformed frame"), "{err}");
    }
}
