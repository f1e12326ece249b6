//! One WebSocket connection's two halves, built so that an idle connection holds no buffer and
//! a big frame's memory goes when the frame does.
//!
//! - [`Reader`] is a [`Stream`] of [`FromClient`]. It reads into a buffer on the stack of
//!   `poll_next` (gone when the call returns); a header is kept in a 14-byte array, a data
//!   message in a `Vec` allocated for exactly its announced length (refused past the limit
//!   before anything is allocated) and handed to the machine whole, so nothing grows to the
//!   largest frame ever seen. Bytes read beyond the current frame wait in a small `Vec` that is
//!   freed once consumed.
//! - [`Writer`] is a [`Sink`] of [`ToClient`]. A frame is its header (≤ 10 bytes, inline) plus
//!   the shared payload [`Bytes`] (up to three pieces, for a frame in parts), written with
//!   vectored writes straight from the bytes the tracker encoded once for every subscriber: no
//!   per-connection copy, no write buffer.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use rollcall_core::protocol::Frame;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::codec::{
    close_payload, encode_header, header_len, parse_header, unmask, Header, OpCode, MAX_HEADER,
    MAX_SERVER_HEADER,
};
use crate::frame::{FromClient, ToClient, WireFrame};

/// Bytes read per call into the stack buffer.
const READ_CHUNK: usize = 4096;

enum ReadState {
    /// Collecting a frame header.
    Header {
        bytes: [u8; MAX_HEADER],
        have: usize,
    },
    /// Collecting the payload of `header`; `got` bytes so far.
    Payload { header: Header, got: u64 },
}

/// The client-to-server half: frames in, [`FromClient`] out.
pub struct Reader<R> {
    io: R,
    state: ReadState,
    /// Bytes read past what was consumed; empty (unallocated) between reads in the usual case.
    spare: Vec<u8>,
    /// The data message being assembled, and its opcode once it started.
    message: Vec<u8>,
    message_op: Option<OpCode>,
    /// The control frame being read (≤ 125 bytes).
    control: Vec<u8>,
    max_message: usize,
    /// The client sent a close frame.
    close_received: bool,
    done: bool,
}

impl<R> Reader<R> {
    /// Reads from `io`; messages larger than `max_message` bytes are refused (as
    /// [`FromClient::TooLarge`], after which nothing more is read).
    pub fn new(io: R, max_message: usize) -> Self {
        Reader {
            io,
            state: ReadState::Header {
                bytes: [0; MAX_HEADER],
                have: 0,
            },
            spare: Vec::new(),
            message: Vec::new(),
            message_op: None,
            control: Vec::new(),
            max_message,
            close_received: false,
            done: false,
        }
    }

    /// True once the client sent a close frame (the server answers it).
    pub fn close_received(&self) -> bool {
        self.close_received
    }

    /// Consumes `input` until it ends or an event is complete; returns how many bytes were
    /// used and the event.
    fn feed(&mut self, input: &[u8]) -> (usize, Option<FromClient>) {
        let mut pos = 0;
        while pos < input.len() {
            let event = match &mut self.state {
                ReadState::Header { bytes, have } => {
                    let need = if *have < 2 {
                        2
                    } else {
                        header_len([bytes[0], bytes[1]])
                    };
                    let take = (need - *have).min(input.len() - pos);
                    bytes[*have..*have + take].copy_from_slice(&input[pos..pos + take]);
                    *have += take;
                    pos += take;
                    if *have < 2 || *have < header_len([bytes[0], bytes[1]]) {
                        continue;
                    }
                    match parse_header(&bytes[..*have]) {
                        Ok(header) => self.start_frame(header),
                        Err(e) => self.fail(FromClient::Error(format!("protocol error: {e}"))),
                    }
                }
                ReadState::Payload { header, got } => {
                    let header = *header;
                    let remaining = header.len - *got;
                    let take = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - pos);
                    let offset = usize::try_from(*got).unwrap_or(0);
                    let target = if header.opcode.is_control() {
                        &mut self.control
                    } else {
                        &mut self.message
                    };
                    let start = target.len();
                    target.extend_from_slice(&input[pos..pos + take]);
                    unmask(&mut target[start..], header.mask, offset);
                    *got += take as u64;
                    pos += take;
                    if *got == header.len {
                        self.finish_frame(header)
                    } else {
                        None
                    }
                }
            };
            if event.is_some() {
                return (pos, event);
            }
        }
        (pos, None)
    }

    fn fail(&mut self, event: FromClient) -> Option<FromClient> {
        self.done = true;
        Some(event)
    }

    /// A header is complete: checks it against the message in progress and the limit, and
    /// prepares for its payload.
    fn start_frame(&mut self, header: Header) -> Option<FromClient> {
        let len = usize::try_from(header.len).unwrap_or(usize::MAX);
        match header.opcode {
            OpCode::Text | OpCode::Binary => {
                if self.message_op.is_some() {
                    return self.fail(FromClient::Error(
                        "protocol error: a new message before the last one ended".into(),
                    ));
                }
                if len > self.max_message {
                    return self.fail(FromClient::TooLarge(Some(len)));
                }
                self.message_op = Some(header.opcode);
                self.message = Vec::with_capacity(len);
            }
            OpCode::Continuation => {
                if self.message_op.is_none() {
                    return self.fail(FromClient::Error(
                        "protocol error: a continuation without a message".into(),
                    ));
                }
                let total = self.message.len().saturating_add(len);
                if total > self.max_message {
                    return self.fail(FromClient::TooLarge(Some(total)));
                }
                self.message.reserve_exact(len);
            }
            OpCode::Close | OpCode::Ping | OpCode::Pong => {
                self.control = Vec::with_capacity(len);
            }
        }
        self.state = ReadState::Payload { header, got: 0 };
        if header.len == 0 {
            return self.finish_frame(header);
        }
        None
    }

    /// A frame's payload is complete.
    fn finish_frame(&mut self, header: Header) -> Option<FromClient> {
        self.state = ReadState::Header {
            bytes: [0; MAX_HEADER],
            have: 0,
        };
        match header.opcode {
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                if !header.fin {
                    return None;
                }
                let message = std::mem::take(&mut self.message);
                match self.message_op.take() {
                    Some(OpCode::Text) => Some(match String::from_utf8(message) {
                        Ok(text) => FromClient::Frame(Frame::Text(text)),
                        Err(_) => FromClient::Invalid("text frame is not valid UTF-8".into()),
                    }),
                    _ => Some(FromClient::Frame(Frame::Binary(message))),
                }
            }
            OpCode::Ping => Some(FromClient::Ping(Bytes::from(std::mem::take(
                &mut self.control,
            )))),
            OpCode::Pong => {
                self.control = Vec::new();
                Some(FromClient::Activity)
            }
            OpCode::Close => {
                self.control = Vec::new();
                self.close_received = true;
                self.fail(FromClient::Error("client closed".into()))
            }
        }
    }

    /// While a data payload of at least a chunk remains, the bytes are read straight into the
    /// message (no stack copy); the payload's remaining length, if so.
    fn direct_read_len(&self) -> Option<usize> {
        match &self.state {
            ReadState::Payload { header, got }
                if !header.opcode.is_control() && self.spare.is_empty() =>
            {
                let remaining = usize::try_from(header.len - got).unwrap_or(usize::MAX);
                (remaining >= READ_CHUNK).then_some(remaining)
            }
            _ => None,
        }
    }
}

impl<R: AsyncRead + Unpin> Stream for Reader<R> {
    type Item = FromClient;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FromClient>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if !this.spare.is_empty() {
                let spare = std::mem::take(&mut this.spare);
                let (used, event) = this.feed(&spare);
                if used < spare.len() {
                    this.spare = spare[used..].to_vec();
                }
                if event.is_some() {
                    return Poll::Ready(event);
                }
                continue;
            }
            if let Some(remaining) = this.direct_read_len() {
                let ReadState::Payload { header, got } = &mut this.state else {
                    continue;
                };
                let start = this.message.len();
                let want = remaining.min(1 << 20);
                this.message.resize(start + want, 0);
                let mut buf = ReadBuf::new(&mut this.message[start..]);
                let read = Pin::new(&mut this.io).poll_read(cx, &mut buf);
                let n = buf.filled().len();
                this.message.truncate(start + n);
                match read {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => {
                        this.done = true;
                        return Poll::Ready(Some(FromClient::Error(e.to_string())));
                    }
                    Poll::Ready(Ok(())) if n == 0 => {
                        this.done = true;
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Ok(())) => {
                        let offset = usize::try_from(*got).unwrap_or(0);
                        unmask(&mut this.message[start..], header.mask, offset);
                        *got += n as u64;
                        if *got == header.len {
                            let header = *header;
                            if let Some(event) = this.finish_frame(header) {
                                return Poll::Ready(Some(event));
                            }
                        }
                        continue;
                    }
                }
            }
            // Small reads go through the stack: nothing stays allocated while the client is
            // silent.
            let mut chunk = [0u8; READ_CHUNK];
            let mut buf = ReadBuf::new(&mut chunk);
            if let Err(e) = ready!(Pin::new(&mut this.io).poll_read(cx, &mut buf)) {
                this.done = true;
                return Poll::Ready(Some(FromClient::Error(e.to_string())));
            }
            let n = buf.filled().len();
            if n == 0 {
                this.done = true;
                return Poll::Ready(None);
            }
            let (used, event) = this.feed(&chunk[..n]);
            if used < n {
                this.spare = chunk[used..n].to_vec();
            }
            if event.is_some() {
                return Poll::Ready(event);
            }
        }
    }
}

/// One frame waiting to be written: its header inline, its payload shared, in up to
/// [`PIECES`] pieces (the unused ones empty).
struct Outgoing {
    header: [u8; MAX_SERVER_HEADER],
    header_len: u8,
    payload: [Bytes; PIECES],
}

/// Pieces of one frame's payload, at most.
const PIECES: usize = 3;

impl Outgoing {
    fn new(opcode: OpCode, payload: Bytes) -> Self {
        Outgoing::pieces(opcode, [payload, Bytes::new(), Bytes::new()])
    }

    /// A frame whose payload is `payload`'s pieces one after the other; the header announces
    /// their sum.
    fn pieces(opcode: OpCode, payload: [Bytes; PIECES]) -> Self {
        let (header, len) = encode_header(opcode, payload.iter().map(Bytes::len).sum());
        Outgoing {
            header,
            header_len: len as u8,
            payload,
        }
    }

    fn len(&self) -> usize {
        usize::from(self.header_len) + self.payload.iter().map(Bytes::len).sum::<usize>()
    }
}

/// Frames fed beyond this many bytes are written before more are taken.
const FLUSH_AT: usize = 256 * 1024;
/// Most frames (a header and up to [`PIECES`] payload slices each) given to one vectored write.
const MAX_SLICES: usize = 64;
/// Queue capacity kept while empty.
const KEPT_FRAMES: usize = 4;

/// The server-to-client half: [`ToClient`] in, frames out.
pub struct Writer<W> {
    io: W,
    queue: VecDeque<Outgoing>,
    /// Bytes of the queue's first frame already written.
    written: usize,
    queued_bytes: usize,
    /// A close frame was queued; nothing follows it.
    closing: bool,
}

impl<W> Writer<W> {
    /// Writes to `io`.
    pub fn new(io: W) -> Self {
        Writer {
            io,
            queue: VecDeque::new(),
            written: 0,
            queued_bytes: 0,
            closing: false,
        }
    }

    /// True once a close frame was queued.
    pub fn close_sent(&self) -> bool {
        self.closing
    }
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Writes queued frames until none is left (or the socket takes no more for now).
    fn poll_write_queue(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES * (1 + PIECES)];
            let mut count = 0;
            let mut skip = self.written;
            for frame in self.queue.iter().take(MAX_SLICES) {
                let header = &frame.header[..usize::from(frame.header_len)];
                let [a, b, c] = &frame.payload;
                for part in [header, &a[..], &b[..], &c[..]] {
                    // Empty pieces are skipped here too: a slice is never empty.
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    slices[count] = IoSlice::new(&part[skip..]);
                    skip = 0;
                    count += 1;
                }
            }
            let n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
            while let Some(front) = self.queue.front() {
                if self.written < front.len() {
                    break;
                }
                self.written -= front.len();
                self.queued_bytes -= front.len();
                self.queue.pop_front();
            }
        }
        if self.queue.capacity() > KEPT_FRAMES {
            self.queue.shrink_to(KEPT_FRAMES);
        }
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> Sink<ToClient> for Writer<W> {
    type Error = std::io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.queued_bytes >= FLUSH_AT || self.queue.len() >= MAX_SLICES {
            ready!(self.poll_write_queue(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, item: ToClient) -> std::io::Result<()> {
        if self.closing {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        let frame = match item {
            ToClient::Frame(WireFrame::Text(text)) => {
                Outgoing::new(OpCode::Text, text.as_bytes().clone())
            }
            ToClient::Frame(WireFrame::Parts(parts)) => {
                Outgoing::pieces(OpCode::Text, parts.parts().clone())
            }
            ToClient::Frame(WireFrame::Binary(bytes)) => Outgoing::new(OpCode::Binary, bytes),
            ToClient::Pong(bytes) => Outgoing::new(OpCode::Pong, bytes),
            ToClient::Close { code, reason } => {
                self.closing = true;
                Outgoing::new(OpCode::Close, close_payload(code, &reason).into())
            }
        };
        self.queued_bytes += frame.len();
        self.queue.push_back(frame);
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_write_queue(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::TextParts;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        super::super::codec::client_frame(opcode, fin, payload, [7, 1, 9, 3])
    }

    #[tokio::test]
    async fn frames_split_anywhere_and_fragments_arrive_as_whole_messages() {
        let mut wire = masked(0x1, false, b"hel");
        wire.extend(masked(0x9, true, b"p")); // a ping between fragments
        wire.extend(masked(0x0, true, b"lo"));
        let big: Vec<u8> = (0..20_000).map(|i| i as u8).collect();
        wire.extend(masked(0x2, true, &big));
        wire.extend(masked(0x8, true, &[3, 232]));
        for step in [1, 3, 7, 4096, wire.len()] {
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let mut reader = Reader::new(server, 1 << 20);
            let wire = wire.clone();
            let feeder = tokio::spawn(async move {
                for piece in wire.chunks(step) {
                    client.write_all(piece).await.unwrap();
                }
                client
            });
            assert_eq!(
                reader.next().await,
                Some(FromClient::Ping(Bytes::from_static(b"p")))
            );
            assert_eq!(
                reader.next().await,
                Some(FromClient::Frame(Frame::Text("hello".into())))
            );
            assert_eq!(
                reader.next().await,
                Some(FromClient::Frame(Frame::Binary(big.clone())))
            );
            assert_eq!(
                reader.next().await,
                Some(FromClient::Error("client closed".into()))
            );
            assert!(reader.close_received());
            assert_eq!(reader.next().await, None);
            drop(feeder.await.unwrap());
        }
    }

    #[tokio::test]
    async fn a_message_over_the_limit_is_refused_before_its_payload_is_read() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut reader = Reader::new(server, 1000);
        // Only the header: the reader answers without waiting for the 5,000 bytes.
        let header = &masked(0x2, true, &[0; 5000])[..8];
        client.write_all(header).await.unwrap();
        assert_eq!(reader.next().await, Some(FromClient::TooLarge(Some(5000))));
        assert_eq!(reader.next().await, None);
        // Fragments count together.
        let (mut client, server) = tokio::io::duplex(8192);
        let mut reader = Reader::new(server, 1000);
        client
            .write_all(&masked(0x1, false, &[b'a'; 600]))
            .await
            .unwrap();
        client
            .write_all(&masked(0x0, true, &[b'a'; 600]))
            .await
            .unwrap();
        assert_eq!(reader.next().await, Some(FromClient::TooLarge(Some(1200))));
    }

    #[tokio::test]
    async fn unmasked_frames_and_invalid_utf8_are_refused() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut reader = Reader::new(server, 1000);
        client.write_all(&[0x81, 0x01, b'a']).await.unwrap();
        let Some(FromClient::Error(e)) = reader.next().await else {
            panic!("expected a protocol error");
        };
        assert!(e.contains("masked"), "{e}");
        let (mut client, server) = tokio::io::duplex(1024);
        let mut reader = Reader::new(server, 1000);
        client
            .write_all(&masked(0x1, true, &[0xff, 0xfe]))
            .await
            .unwrap();
        assert!(matches!(reader.next().await, Some(FromClient::Invalid(_))));
    }

    #[tokio::test]
    async fn the_reader_holds_no_buffer_between_frames() {
        let (mut client, server) = tokio::io::duplex(1 << 21);
        let mut reader = Reader::new(server, 2 << 20);
        client
            .write_all(&masked(0x2, true, &vec![1; 1 << 20]))
            .await
            .unwrap();
        assert!(matches!(
            reader.next().await,
            Some(FromClient::Frame(Frame::Binary(_)))
        ));
        assert_eq!(reader.message.capacity(), 0);
        assert_eq!(reader.spare.capacity(), 0);
        assert_eq!(reader.control.capacity(), 0);
    }

    #[tokio::test]
    async fn a_frame_in_parts_goes_out_as_the_same_frame_written_whole() {
        // Payload lengths around each header length form; a small pipe splits the writes
        // inside headers and pieces.
        for body_len in [0usize, 100, 121, 122, 123, 65_000, 65_531, 65_532, 70_000] {
            let body = "b".repeat(body_len);
            let parts = TextParts::new("[\"7\",".into(), body.as_str().into(), "]");
            let whole = format!("[\"7\",{body}]");
            let wire = |frame: WireFrame| async move {
                let (server, mut client) = tokio::io::duplex(7);
                let reading = tokio::spawn(async move {
                    let mut wire = Vec::new();
                    client.read_to_end(&mut wire).await.unwrap();
                    wire
                });
                let mut writer = Writer::new(server);
                writer.feed(ToClient::Frame(frame.clone())).await.unwrap();
                writer.send(ToClient::Frame(frame)).await.unwrap();
                drop(writer);
                reading.await.unwrap()
            };
            let written = wire(WireFrame::Parts(parts)).await;
            assert_eq!(written, wire(WireFrame::Text(whole.into())).await);
            let header = match body_len + 6 {
                n if n < 126 => 2,
                n if n < 65_536 => 4,
                _ => 10,
            };
            assert_eq!(written.len(), 2 * (header + body_len + 6), "{body_len}");
        }
    }

    #[tokio::test]
    async fn written_frames_are_header_and_shared_payload_and_nothing_is_kept() {
        let (server, mut client) = tokio::io::duplex(1 << 21);
        let mut writer = Writer::new(server);
        let payload = Bytes::from(vec![b'x'; 70_000]);
        writer
            .feed(ToClient::Frame(WireFrame::Binary(payload.clone())))
            .await
            .unwrap();
        writer
            .feed(ToClient::Frame(WireFrame::Text("hi".into())))
            .await
            .unwrap();
        writer
            .send(ToClient::Close {
                code: 1000,
                reason: "bye".into(),
            })
            .await
            .unwrap();
        assert_eq!(
            writer.queue.capacity(),
            writer.queue.capacity().min(KEPT_FRAMES)
        );
        assert!(writer.queue.is_empty());
        drop(writer);
        let mut wire = Vec::new();
        client.read_to_end(&mut wire).await.unwrap();
        let mut expected = vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70];
        expected.extend_from_slice(&payload);
        expected.extend_from_slice(&[0x81, 2, b'h', b'i', 0x88, 5, 3, 232, b'b', b'y', b'e']);
        assert_eq!(wire, expected);
    }
}
