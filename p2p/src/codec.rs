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
//!
//! Every connection also has an inbound byte budget ([`InboundBudget`]) that all its
//! streams share: each message's announced length is reserved before its bytes are read,
//! and held until the received batch is dropped (after the transport has decoded it). A
//! batch that would take the connection over its budget is refused the same way (counted
//! in `over_budget`), so a peer cannot make the region hold more than its budget, however
//! many streams it opens; other peers' connections have their own budgets.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response;
use libp2p::StreamProtocol;
use wallet_core::wire::MESSAGE_BYTES_MAX;

/// Encoded messages of one batch.
pub type Messages = Vec<Arc<Vec<u8>>>;

/// Most messages in one batch (one stream).
pub const BATCH_MESSAGES_MAX: usize = 256;
/// Response: the batch was read and handed to the node.
pub const ACK_OK: u8 = 0;
/// Response: the batch was read but (partly) dropped: malformed, or the receiver is isolated.
pub const ACK_DROPPED: u8 = 1;

/// What travels on one stream.
#[derive(Debug, Clone)]
pub enum Frame {
    /// Encoded messages, in the order they were queued (sent).
    Batch(Vec<Arc<Vec<u8>>>),
    /// Bytes written verbatim (fault injection in tests: malformed and oversized frames).
    Raw(Vec<u8>),
    /// Encoded messages read from a peer; their bytes count against the connection's
    /// budget until this is dropped.
    Received(Vec<Arc<Vec<u8>>>, Arc<Reservation>),
}

/// Bytes of inbound frames one connection may make this region hold at once.
#[derive(Debug)]
pub struct InboundBudget {
    limit: usize,
    held: AtomicUsize,
}

impl InboundBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<InboundBudget> {
        Arc::new(InboundBudget {
            limit,
            held: AtomicUsize::new(0),
        })
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Takes `n` more bytes for `r`; false (nothing taken) if that would exceed the limit.
    fn take(&self, r: &mut Reservation, n: usize) -> bool {
        let mut cur = self.held.load(Ordering::Acquire);
        loop {
            let Some(next) = cur.checked_add(n).filter(|&t| t <= self.limit) else {
                return false;
            };
            match self
                .held
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    r.bytes += n;
                    return true;
                }
                Err(now) => cur = now,
            }
        }
    }
}

/// Bytes taken from an [`InboundBudget`], given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<InboundBudget>,
    bytes: usize,
}

impl Reservation {
    fn new(budget: Arc<InboundBudget>) -> Reservation {
        Reservation { budget, bytes: 0 }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The request-response codec.
#[derive(Debug)]
pub struct MsgCodec {
    /// Counts batches refused by the framing limits.
    pub dropped: Arc<AtomicU64>,
    /// Counts batches refused because the connection was over its inbound budget.
    pub over_budget: Arc<AtomicU64>,
    /// Inbound budget of each connection, bytes.
    pub connection_budget: usize,
    /// This connection's budget (`None` in the behaviour's own codec, which reads nothing).
    budget: Option<Arc<InboundBudget>>,
}

impl MsgCodec {
    /// The behaviour's codec: each connection gets a budget of `connection_budget` bytes.
    pub fn new(
        dropped: Arc<AtomicU64>,
        over_budget: Arc<AtomicU64>,
        connection_budget: usize,
    ) -> MsgCodec {
        MsgCodec {
            dropped,
            over_budget,
            connection_budget,
            budget: None,
        }
    }

    fn budget(&mut self) -> Arc<InboundBudget> {
        self.budget
            .get_or_insert_with(|| InboundBudget::new(self.connection_budget))
            .clone()
    }
}

/// libp2p's request-response clones the behaviour's codec once for each connection (its
/// handler), and the handler's once for each stream. So a clone of the behaviour's codec
/// (no budget yet) starts a new connection budget, and a clone of a connection's codec
/// shares that connection's budget among its streams.
impl Clone for MsgCodec {
    fn clone(&self) -> MsgCodec {
        MsgCodec {
            dropped: self.dropped.clone(),
            over_budget: self.over_budget.clone(),
            connection_budget: self.connection_budget,
            budget: Some(match &self.budget {
                Some(b) => b.clone(),
                None => InboundBudget::new(self.connection_budget),
            }),
        }
    }
}

/// Why a batch was refused.
#[derive(Debug)]
pub enum ReadError {
    /// Malformed or over the framing limits (or the stream failed).
    Io(io::Error),
    /// Its messages would take the connection over its inbound budget.
    OverBudget {
        /// Bytes the connection holds already.
        held: usize,
        /// Bytes the next message announced.
        wanted: usize,
        /// The budget.
        limit: usize,
    },
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> ReadError {
        ReadError::Io(e)
    }
}

impl From<ReadError> for io::Error {
    fn from(e: ReadError) -> io::Error {
        match e {
            ReadError::Io(e) => e,
            ReadError::OverBudget {
                held,
                wanted,
                limit,
            } => invalid(format!(
                "over the connection's inbound budget: {held} bytes held, {wanted} more \
                 announced, budget {limit}"
            )),
        }
    }
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

/// Reads one batch, checking every header against the limits, and reserving each message's
/// bytes from the connection's budget `conn`, before reading on.
pub async fn read_batch<T: AsyncRead + Unpin>(
    io: &mut T,
    conn: &Arc<InboundBudget>,
) -> Result<(Messages, Reservation), ReadError> {
    let mut held = Reservation::new(conn.clone());
    let count = read_u32(io).await? as usize;
    if count == 0 || count > BATCH_MESSAGES_MAX {
        return Err(invalid(format!(
            "batch of {count} messages (limit 1..={BATCH_MESSAGES_MAX})"
        ))
        .into());
    }
    let mut budget = MESSAGE_BYTES_MAX;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let len = read_u32(io).await? as usize;
        if len == 0 || len > budget {
            return Err(invalid(format!(
                "message of {len} bytes (limit 1..={budget} left of {MESSAGE_BYTES_MAX} per batch)"
            ))
            .into());
        }
        budget -= len;
        if !conn.take(&mut held, len) {
            return Err(ReadError::OverBudget {
                held: conn.held(),
                wanted: len,
                limit: conn.limit,
            });
        }
        // Grows with the bytes that really arrive: a header alone allocates nothing.
        let mut buf = Vec::new();
        (&mut *io).take(len as u64).read_to_end(&mut buf).await?;
        if buf.len() != len {
            return Err(invalid(format!("truncated message: {} of {len} bytes", buf.len())).into());
        }
        out.push(Arc::new(buf));
    }
    Ok((out, held))
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
        Frame::Received(..) => return Err(invalid("a received batch is not sent".into())),
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
        let over_budget = self.over_budget.clone();
        let budget = self.budget();
        Box::pin(async move {
            match read_batch(io, &budget).await {
                Ok((msgs, held)) => Ok(Frame::Received(msgs, Arc::new(held))),
                Err(e) => {
                    let counter = match &e {
                        ReadError::OverBudget { .. } => Some(&over_budget),
                        ReadError::Io(e) if e.kind() == io::ErrorKind::InvalidData => {
                            Some(&dropped)
                        }
                        ReadError::Io(_) => None,
                    };
                    let e = io::Error::from(e);
                    if let Some(c) = counter {
                        c.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "malformed, oversized or over-budget frame dropped");
                    }
                    Err(e)
                }
            }
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
        read_within(bytes, &InboundBudget::new(usize::MAX))
            .map(|(m, _)| m)
            .map_err(io::Error::from)
    }

    fn read_within(
        bytes: &[u8],
        budget: &Arc<InboundBudget>,
    ) -> Result<(Messages, Reservation), ReadError> {
        let mut cur = futures::io::Cursor::new(bytes.to_vec());
        futures::executor::block_on(read_batch(&mut cur, budget))
    }

    #[test]
    fn a_connection_budget_is_shared_by_its_streams_and_given_back() {
        // The behaviour's codec; a clone per connection, a clone per stream.
        let root = MsgCodec::new(Default::default(), Default::default(), 100);
        let mut conn_a = root.clone();
        let mut conn_b = root.clone();
        let mut stream_1 = conn_a.clone();
        let mut stream_2 = conn_a.clone();
        let (a, b) = (conn_a.budget(), conn_b.budget());
        assert!(Arc::ptr_eq(&a, &stream_1.budget()));
        assert!(Arc::ptr_eq(&a, &stream_2.budget()));
        assert!(!Arc::ptr_eq(&a, &b), "each connection has its own budget");

        let sixty = batch(&[&[1u8; 30], &[2u8; 30]]);
        let (_, held) = read_within(&sixty, &stream_1.budget()).unwrap();
        assert_eq!((held.bytes(), a.held()), (60, 60));
        // A second batch on another stream of the same connection does not fit while the
        // first is held: refused on the header that goes over, before its bytes are read.
        match read_within(&sixty, &stream_2.budget()) {
            Err(ReadError::OverBudget {
                held,
                wanted,
                limit,
            }) => assert_eq!((held, wanted, limit), (90, 30, 100)),
            other => panic!("{other:?}"),
        }
        // The refused batch gave its part back; another connection is not affected.
        assert_eq!(a.held(), 60);
        let (_, on_b) = read_within(&sixty, &b).unwrap();
        assert_eq!(b.held(), 60);
        drop(on_b);
        // Once the first batch is dropped, the budget is free again.
        drop(held);
        assert_eq!(a.held(), 0);
        let (_, again) = read_within(&sixty, &stream_2.budget()).unwrap();
        assert_eq!(again.bytes(), 60);
        // A single message larger than the whole budget never fits.
        assert!(matches!(
            read_within(&batch(&[&[0u8; 101]]), &InboundBudget::new(100)),
            Err(ReadError::OverBudget { .. })
        ));
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
