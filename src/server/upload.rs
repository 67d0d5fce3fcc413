//! Streaming uploads, for those who turn request buffering off (nginx's
//! `proxy_request_buffering off`): the request goes to a worker as soon as its head is read, and
//! its body follows through a small bounded channel while the poller reads it from the client.
//!
//! The poller still owns the client socket. When the channel is full (the backend takes the
//! body slower than the client sends it) the poller stops reading, and the worker's next read
//! asks it to resume; the client's own pace is held to a minimum transfer rate by the poller,
//! because a worker now waits for it. A body cut short reaches the worker as an error, never as a
//! clean end, so the backend cannot take a truncated upload for a complete one.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::Waker;

/// Pieces in flight per upload: with the poller's reads of at most 64 KiB, an upload holds at
/// most 256 KiB between client and backend.
const PIECES_IN_FLIGHT: usize = 4;

/// How often a worker waiting for more of a body asks whether the backend answered already.
const ANSWER_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// Asked while a worker waits for more of a body: true when the backend has answered early (a
/// `413`, a `401`) and the rest of the body will be dropped on the way. Set by the handler
/// that sends the body (see [`RequestBody::watch_for_early_answer`](super::RequestBody)).
pub type EarlyAnswerCheck = fn() -> bool;

/// What goes through the channel.
#[derive(Debug)]
enum Piece {
    Data(Vec<u8>),
    /// The body is complete. A channel closed without it means the body was cut short.
    End,
}

/// How a piece offered by the poller fared.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    /// In the channel (or nothing was waiting).
    Sent,
    /// The channel is full: the piece waits with the feed, and the poller reads no more until
    /// the worker asks it to resume.
    Held,
    /// The worker dropped its end (the exchange is over, for instance an early answer).
    ReaderGone,
}

/// Where the worker's reads ask the poller to go on reading a stalled upload.
#[derive(Clone)]
pub(crate) struct ResumeLink {
    pub tokens: Sender<usize>,
    pub waker: Arc<Waker>,
}

/// The poller's end of an upload.
pub(crate) struct UploadFeed {
    pieces: Sender<Piece>,
    /// Pieces the full channel did not take yet, in order (at most a data piece and the end).
    held: Vec<Piece>,
    stalled: Arc<AtomicBool>,
}

/// The worker's end of an upload: the body as a reader.
pub(crate) struct UploadStream {
    pieces: Receiver<Piece>,
    current: Vec<u8>,
    position: usize,
    ended: bool,
    cut_short: bool,
    stalled: Arc<AtomicBool>,
    resume: ResumeLink,
    token: usize,
    /// Body bytes still due by the declared length (none for a chunked body).
    remaining: Option<u64>,
    early_answer: Option<EarlyAnswerCheck>,
    answered_early: bool,
}

/// A new upload's two ends; `token` is the connection's, for the resume requests; `declared`
/// the body's `Content-Length`, if it has one.
pub(crate) fn upload(token: usize, resume: ResumeLink, declared: Option<u64>) -> (UploadFeed, UploadStream) {
    let (sender, receiver) = crossbeam_channel::bounded(PIECES_IN_FLIGHT);
    let stalled = Arc::new(AtomicBool::new(false));
    let feed = UploadFeed { pieces: sender, held: Vec::new(), stalled: Arc::clone(&stalled) };
    let stream = UploadStream {
        pieces: receiver,
        current: Vec::new(),
        position: 0,
        ended: false,
        cut_short: false,
        stalled,
        resume,
        token,
        remaining: declared,
        early_answer: None,
        answered_early: false,
    };
    (feed, stream)
}

impl UploadFeed {
    /// Offers decoded body bytes (nothing happens for none).
    pub fn data(&mut self, bytes: Vec<u8>) -> Offer {
        if bytes.is_empty() {
            return self.flush();
        }
        self.held.push(Piece::Data(bytes));
        self.flush()
    }

    /// Says the body is complete.
    pub fn end(&mut self) -> Offer {
        self.held.push(Piece::End);
        self.flush()
    }

    /// Whether pieces wait for room in the channel.
    #[cfg(test)]
    pub fn is_stalled(&self) -> bool {
        !self.held.is_empty()
    }

    /// Sends what is held, in order, as far as the channel takes it.
    pub fn flush(&mut self) -> Offer {
        while !self.held.is_empty() {
            // Said before trying: a reader that takes a piece after a failed try sees it and
            // asks for a resume (a spurious resume is harmless).
            self.stalled.store(true, Ordering::SeqCst);
            let piece = self.held.remove(0);
            match self.pieces.try_send(piece) {
                Ok(()) => {}
                Err(TrySendError::Full(piece)) => {
                    self.held.insert(0, piece);
                    return Offer::Held;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.held.clear();
                    return Offer::ReaderGone;
                }
            }
        }
        self.stalled.store(false, Ordering::SeqCst);
        Offer::Sent
    }
}

impl UploadStream {
    /// Whether the body was cut short by the client (it closed, sent bad framing, or was too
    /// slow): the exchange failed because of the client, not the backend.
    pub fn cut_short(&self) -> bool {
        self.cut_short
    }

    /// Watches for an early answer while waiting for the client.
    pub fn watch_for_early_answer(&mut self, check: EarlyAnswerCheck) {
        self.early_answer = Some(check);
    }

    fn next_piece(&mut self) -> io::Result<bool> {
        /// Why no piece came.
        enum Waited {
            Broken,
            AnsweredEarly,
        }
        // The worker waits for the client here (request buffering off): not running.
        let piece = super::while_blocked(|| loop {
            match self.early_answer {
                None => break self.pieces.recv().map_err(|_| Waited::Broken),
                Some(check) => match self.pieces.recv_timeout(ANSWER_CHECK_INTERVAL) {
                    Ok(piece) => break Ok(piece),
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break Err(Waited::Broken),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) if check() => break Err(Waited::AnsweredEarly),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                },
            }
        });
        if let Err(Waited::AnsweredEarly) = piece {
            self.answered_early = true;
            return Ok(false);
        }
        if self.stalled.swap(false, Ordering::SeqCst) {
            // The poller stopped reading because the channel was full; there is room now.
            if self.resume.tokens.send(self.token).is_ok() {
                let _ = self.resume.waker.wake();
            }
        }
        match piece {
            Ok(Piece::Data(bytes)) => {
                self.current = bytes;
                self.position = 0;
                Ok(true)
            }
            Ok(Piece::End) => {
                self.ended = true;
                Ok(false)
            }
            Err(_) => {
                self.cut_short = true;
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the client's request body was cut short"))
            }
        }
    }
}

impl Read for UploadStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.position == self.current.len() && !self.answered_early {
            if self.ended || !self.next_piece()? {
                break;
            }
        }
        if self.answered_early {
            // The backend answered and the sender drops what follows (it never reaches the
            // backend): what is left of the declared length is made up so the request can
            // be ended and the answer read. A chunked body just ends.
            let n = self.remaining.map_or(0, |left| left.min(buf.len() as u64) as usize);
            buf[..n].fill(0);
            self.remaining = self.remaining.map(|left| left - n as u64);
            return Ok(n);
        }
        let n = (self.current.len() - self.position).min(buf.len());
        buf[..n].copy_from_slice(&self.current[self.position..self.position + n]);
        self.position += n;
        self.remaining = self.remaining.map(|left| left.saturating_sub(n as u64));
        Ok(n)
    }
}

impl std::fmt::Debug for UploadStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadStream").field("ended", &self.ended).field("cut_short", &self.cut_short).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> (ResumeLink, Receiver<usize>, mio::Poll) {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(1)).unwrap());
        let (tokens, resumed) = crossbeam_channel::unbounded();
        (ResumeLink { tokens, waker }, resumed, poll)
    }

    #[test]
    fn pieces_arrive_in_order_and_a_full_channel_asks_for_a_resume() {
        let (resume, resumed, _poll) = link();
        let (mut feed, mut stream) = upload(7, resume, None);
        for i in 0..PIECES_IN_FLIGHT {
            assert_eq!(feed.data(vec![b'a' + i as u8]), Offer::Sent);
        }
        assert_eq!(feed.data(b"z".to_vec()), Offer::Held);
        assert_eq!(feed.end(), Offer::Held);
        assert!(feed.is_stalled());
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"a");
        assert_eq!(resumed.try_recv(), Ok(7), "the reader made room and said so");
        assert_eq!(feed.flush(), Offer::Held, "room for one piece: the end still waits");
        let mut rest = Vec::new();
        let reader = std::thread::spawn(move || {
            stream.read_to_end(&mut rest).unwrap();
            rest
        });
        while feed.flush() != Offer::Sent {
            resumed.recv().unwrap();
        }
        assert_eq!(reader.join().unwrap(), b"bcdz");
    }

    #[test]
    fn a_body_cut_short_is_an_error_not_an_end() {
        let (resume, _resumed, _poll) = link();
        let (mut feed, mut stream) = upload(1, resume, None);
        assert_eq!(feed.data(b"half".to_vec()), Offer::Sent);
        drop(feed);
        let mut body = Vec::new();
        let error = stream.read_to_end(&mut body).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert!(stream.cut_short());
        assert_eq!(body, b"half");
    }

    #[test]
    fn after_an_early_answer_the_rest_of_a_declared_length_is_made_up() {
        let (resume, _resumed, _poll) = link();
        let (mut feed, mut stream) = upload(1, resume, Some(10));
        assert_eq!(feed.data(b"abc".to_vec()), Offer::Sent);
        stream.watch_for_early_answer(|| true);
        let mut body = Vec::new();
        stream.read_to_end(&mut body).unwrap();
        assert_eq!(body, b"abc\0\0\0\0\0\0\0");
        drop(feed);
    }

    #[test]
    fn a_feed_learns_that_the_reader_is_gone() {
        let (resume, _resumed, _poll) = link();
        let (mut feed, stream) = upload(1, resume, None);
        drop(stream);
        assert_eq!(feed.data(b"x".to_vec()), Offer::ReaderGone);
    }
}
