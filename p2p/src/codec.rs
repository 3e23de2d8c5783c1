//! Framing of the direct message protocol (`/wallet/<cluster>/msg/1`).
//!
//! One request is one yamux stream carrying one batch:
//!
//! ```text
//! count: u32 big-endian            1 ..= BATCH_MESSAGES_MAX
//! count times:
//!   len: u32 big-endian            1 ..= what is left of MESSAGE_BYTES_MAX for the batch
//!   len bytes                      wallet_core::wire::encode_message (version byte + postcard)
//! ```
//!
//! The response is one byte: [`ACK_OK`] or [`ACK_DROPPED`]. Every limit is checked on a header
//! before the bytes it announces are read, so a peer cannot make the reader allocate more than
//! `MESSAGE_BYTES_MAX` per stream. A violation is an `InvalidData` I/O error: the stream is
//! reset, the batch is dropped and counted once in the codec's `dropped` counter (libp2p does
//! not report failed request reads to the behaviour, so the codec counts them itself).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response;
use libp2p::StreamProtocol;
use wallet_core::wire::MESSAGE_BYTES_MAX;

/// Most messages in one batch (one stream).
pub const BATCH_MESSAGES_MAX: usize = 256;
/// Response: the batch was read and handed to the node.
pub const ACK_OK: u8 = 0;
/// Response: the batch was read but (partly) dropped: malformed, or the receiver is isolated.
pub const ACK_DROPPED: u8 = 1;

/// What travels on one stream.
#[derive(Debug, Clone)]
pub enum Frame {
    /// Encoded messages, in the order they were queued.
    Batch(Vec<Arc<Vec<u8>>>),
    /// Bytes written verbatim (fault injection in tests: malformed and oversized frames).
    Raw(Vec<u8>),
}

/// The request-response codec.
#[derive(Debug, Clone, Default)]
pub struct MsgCodec {
    /// Counts batches refused by the framing limits.
    pub dropped: Arc<AtomicU64>,
}

fn invalid(reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason)
}

/// A peer that stops in the middle of a frame sent a malformed frame.
fn truncated(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        invalid("truncated frame".into())
    } else {
        e
    }
}

async fn read_u32<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<u32> {
    let mut b = [0u8; 4];
    io.read_exact(&mut b).await.map_err(truncated)?;
    Ok(u32::from_be_bytes(b))
}

/// Reads one batch, checking every header against the limits before reading on.
pub async fn read_batch<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<Vec<Arc<Vec<u8>>>> {
    let count = read_u32(io).await? as usize;
    if count == 0 || count > BATCH_MESSAGES_MAX {
        return Err(invalid(format!(
            "batch of {count} messages (limit 1..={BATCH_MESSAGES_MAX})"
        )));
    }
    let mut budget = MESSAGE_BYTES_MAX;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let len = read_u32(io).await? as usize;
        if len == 0 || len > budget {
            return Err(invalid(format!(
                "message of {len} bytes (limit 1..={budget} left of {MESSAGE_BYTES_MAX} per batch)"
            )));
        }
        budget -= len;
        // Grows with the bytes that really arrive: a header alone allocates nothing.
        let mut buf = Vec::new();
        (&mut *io).take(len as u64).read_to_end(&mut buf).await?;
        if buf.len() != len {
            return Err(invalid(format!(
                "truncated message: {} of {len} bytes",
                buf.len()
            )));
        }
        out.push(Arc::new(buf));
    }
    Ok(out)
}

/// Writes one frame.
pub async fn write_frame<T: AsyncWrite + Unpin>(io: &mut T, frame: &Frame) -> io::Result<()> {
    match frame {
        Frame::Batch(msgs) => {
            let count = u32::try_from(msgs.len()).map_err(|e| invalid(e.to_string()))?;
            io.write_all(&count.to_be_bytes()).await?;
            for m in msgs {
                let len = u32::try_from(m.len()).map_err(|e| invalid(e.to_string()))?;
                io.write_all(&len.to_be_bytes()).await?;
                io.write_all(m).await?;
            }
        }
        Frame::Raw(bytes) => io.write_all(bytes).await?,
    }
    io.flush().await
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send + 'a>>;

// `request_response::Codec` is declared with `#[async_trait]`; these are its desugared
// signatures (no extra dependency for one macro).
impl request_response::Codec for MsgCodec {
    type Protocol = StreamProtocol;
    type Request = Frame;
    type Response = u8;

    fn read_request<'life0, 'life1, 'life2, 'async_trait, T>(
        &'life0 mut self,
        _protocol: &'life1 StreamProtocol,
        io: &'life2 mut T,
    ) -> BoxFuture<'async_trait, Frame>
    where
        T: AsyncRead + Unpin + Send + 'async_trait,
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        let dropped = self.dropped.clone();
        Box::pin(async move {
            let read = read_batch(io).await;
            if let Err(e) = &read {
                if e.kind() == io::ErrorKind::InvalidData {
                    tracing::warn!(error = %e, "malformed or oversized frame dropped");
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            read.map(Frame::Batch)
        })
    }

    fn read_response<'life0, 'life1, 'life2, 'async_trait, T>(
        &'life0 mut self,
        _protocol: &'life1 StreamProtocol,
        io: &'life2 mut T,
    ) -> BoxFuture<'async_trait, u8>
    where
        T: AsyncRead + Unpin + Send + 'async_trait,
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let mut b = [0u8; 1];
            io.read_exact(&mut b).await?;
            Ok(b[0])
        })
    }

    fn write_request<'life0, 'life1, 'life2, 'async_trait, T>(
        &'life0 mut self,
        _protocol: &'life1 StreamProtocol,
        io: &'life2 mut T,
        req: Frame,
    ) -> BoxFuture<'async_trait, ()>
    where
        T: AsyncWrite + Unpin + Send + 'async_trait,
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move { write_frame(io, &req).await })
    }

    fn write_response<'life0, 'life1, 'life2, 'async_trait, T>(
        &'life0 mut self,
        _protocol: &'life1 StreamProtocol,
        io: &'life2 mut T,
        res: u8,
    ) -> BoxFuture<'async_trait, ()>
    where
        T: AsyncWrite + Unpin + Send + 'async_trait,
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            io.write_all(&[res]).await?;
            io.flush().await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(msgs: &[&[u8]]) -> Vec<u8> {
        let mut out = (msgs.len() as u32).to_be_bytes().to_vec();
        for m in msgs {
            out.extend((m.len() as u32).to_be_bytes());
            out.extend(*m);
        }
        out
    }

    fn read(bytes: &[u8]) -> io::Result<Vec<Arc<Vec<u8>>>> {
        let mut cur = futures::io::Cursor::new(bytes.to_vec());
        futures::executor::block_on(read_batch(&mut cur))
    }

    #[test]
    fn round_trip() {
        let frame = Frame::Batch(vec![Arc::new(vec![1, 2, 3]), Arc::new(vec![4])]);
        let mut cur = futures::io::Cursor::new(Vec::new());
        futures::executor::block_on(write_frame(&mut cur, &frame)).unwrap();
        let got = read(cur.get_ref()).unwrap();
        assert_eq!(got, vec![Arc::new(vec![1, 2, 3]), Arc::new(vec![4])]);
    }

    #[test]
    fn limits_are_checked_on_headers() {
        let kind = |b: &[u8]| read(b).unwrap_err().kind();
        // No messages, too many messages.
        assert_eq!(kind(&0u32.to_be_bytes()), io::ErrorKind::InvalidData);
        assert_eq!(
            kind(&(BATCH_MESSAGES_MAX as u32 + 1).to_be_bytes()),
            io::ErrorKind::InvalidData
        );
        // One message over the limit: refused on its header, nothing else sent.
        let mut over = 1u32.to_be_bytes().to_vec();
        over.extend((MESSAGE_BYTES_MAX as u32 + 1).to_be_bytes());
        assert_eq!(kind(&over), io::ErrorKind::InvalidData);
        // Two messages that fit alone but not together.
        let half = MESSAGE_BYTES_MAX as u32 / 2 + 1;
        let mut two = 2u32.to_be_bytes().to_vec();
        two.extend(half.to_be_bytes());
        two.extend(vec![0u8; half as usize]);
        two.extend(half.to_be_bytes());
        assert_eq!(kind(&two), io::ErrorKind::InvalidData);
        // Truncated header and truncated body.
        assert_eq!(kind(&[0, 0]), io::ErrorKind::InvalidData);
        let mut short = batch(&[b"hello"]);
        short.truncate(short.len() - 1);
        assert_eq!(kind(&short), io::ErrorKind::InvalidData);
        // Exactly at the limit is fine.
        let mut max = 1u32.to_be_bytes().to_vec();
        max.extend((MESSAGE_BYTES_MAX as u32).to_be_bytes());
        max.extend(vec![7u8; MESSAGE_BYTES_MAX]);
        assert_eq!(read(&max).unwrap()[0].len(), MESSAGE_BYTES_MAX);
    }
}
