//! Message framing on QUIC streams: a u32 big-endian length, then a protobuf message. Piece bytes
//! are never framed: they follow a `PieceHeader` as raw stream data.

use prost::Message;
use quinn::{RecvStream, SendStream};

/// Largest framed message accepted (bitmaps of the largest blobs fit many times over).
pub const MAX_MESSAGE: usize = 1 << 20;
/// Largest hello or request accepted: they hold a host id, a proof, a task id and an index.
pub const MAX_REQUEST: usize = 4 << 10;

/// Why a framed message could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed or closed early.
    #[error("stream: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// Writing failed.
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    /// The length prefix exceeds [`MAX_MESSAGE`].
    #[error("message of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The bytes are not the expected protobuf message.
    #[error("malformed message: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Writes one framed message.
pub async fn write<M: Message>(send: &mut SendStream, msg: &M) -> Result<(), FrameError> {
    let body = msg.encode_to_vec();
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge(body.len()))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    send.write_all(&buf).await?;
    Ok(())
}

/// Reads one framed message of at most [`MAX_MESSAGE`] bytes.
pub async fn read<M: Message + Default>(recv: &mut RecvStream) -> Result<M, FrameError> {
    read_max(recv, MAX_MESSAGE).await
}

/// Reads one framed message of at most `max` bytes (checked before anything is allocated).
pub async fn read_max<M: Message + Default>(recv: &mut RecvStream, max: usize) -> Result<M, FrameError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(M::decode(body.as_slice())?)
}
