//! A connection rotor writes to itself once HTTP is done with it (a WebSocket after its
//! upgrade, an HTTP stream after its response head): a batch is assembled in a buffer of
//! the worker thread and, on plain TCP, written with one non-blocking write; only what the
//! socket did not take is copied out to wait for it (on TLS all of it is, for the TLS
//! stream to take). So a batch is copied once and no connection keeps a buffer the size
//! of its largest batch. It must not know what the bytes mean: framing is the caller's.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::either::Either;

/// The socket: the accepted TCP stream itself, else (TLS) what carries it. An enum, not a
/// boxed trait object: every delivery writes through it.
pub type Io<B> = Either<TcpStream, B>;

/// The largest assembly buffer a worker thread keeps between writes.
const SCRATCH_KEEP: usize = 1 << 20;

/// Writes what `assemble` puts in the buffer, after whatever `unsent` still holds; what the
/// socket has not taken when the wait is given up stays in `unsent`.
pub async fn write_assembled<B: AsyncWrite + Unpin>(
    io: &mut Io<B>,
    unsent: &mut Vec<u8>,
    assemble: impl FnOnce(&mut Vec<u8>),
) -> std::io::Result<()> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    // Whatever waits goes first, so nothing comes between the bytes of a frame.
    finish_unsent(io, unsent).await?;
    let left = SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        buf.clear();
        assemble(&mut buf);
        let result = match io {
            Either::Left(tcp) => {
                let mut done = 0;
                loop {
                    if done == buf.len() {
                        break Ok(Vec::new());
                    }
                    match tcp.try_write(&buf[done..]) {
                        Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
                        Ok(n) => done += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            break Ok(buf[done..].to_vec())
                        }
                        Err(e) => break Err(e),
                    }
                }
            }
            Either::Right(_) => Ok(buf.to_vec()),
        };
        // The thread keeps a buffer for the next batch, but not an outsized one.
        if buf.capacity() > SCRATCH_KEEP {
            *buf = Vec::new();
        }
        result
    })?;
    *unsent = left;
    finish_unsent(io, unsent).await
}

/// Writes what the socket has not taken yet, keeping in `unsent` whatever is still left if
/// the wait is given up.
pub async fn finish_unsent<B: AsyncWrite + Unpin>(
    io: &mut Io<B>,
    unsent: &mut Vec<u8>,
) -> std::io::Result<()> {
    std::future::poll_fn(|cx| poll_unsent(io, unsent, cx)).await
}

/// [`finish_unsent`] as a poll (what a pong queued while reading goes out with).
pub fn poll_unsent<B: AsyncWrite + Unpin>(
    io: &mut Io<B>,
    unsent: &mut Vec<u8>,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<()>> {
    while !unsent.is_empty() {
        let n = ready!(Pin::new(&mut *io).poll_write(cx, unsent))?;
        if n == 0 {
            return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
        }
        unsent.drain(..n);
    }
    ready!(Pin::new(&mut *io).poll_flush(cx))?;
    // A remainder can be large (a slow client's whole batch): not kept once written.
    *unsent = Vec::new();
    Poll::Ready(Ok(()))
}

/// Reads what the socket has, at most `size` bytes, into a buffer of the worker thread and
/// hands it to `take`; `Ok(0)` when the client closed its side.
pub fn poll_read_with<B: AsyncRead + Unpin>(
    io: &mut Io<B>,
    size: usize,
    cx: &mut Context<'_>,
    take: impl FnOnce(&[u8]),
) -> Poll<std::io::Result<usize>> {
    thread_local! {
        static READ: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    READ.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        if scratch.len() < size {
            scratch.resize(size, 0);
        }
        let mut buf = ReadBuf::new(&mut scratch[..size]);
        ready!(Pin::new(&mut *io).poll_read(cx, &mut buf))?;
        take(buf.filled());
        Poll::Ready(Ok(buf.filled().len()))
    })
}
